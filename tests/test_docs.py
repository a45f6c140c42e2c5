"""The shell examples of the README and of docs/ run as written, against the simulator.

Each page's ```sh, ```bash and ```console blocks run in order in one bash session, in a temporary
directory that holds a copy of the checkout's ``plans/`` and ``scripts/``, with the venv's
``fleet`` on PATH and this tree's code on PYTHONPATH (the real command, nothing patched). A page
under docs/ runs after the README's "Your first real run" (its examples assume that station
directory, with its simulator running), so its examples can use that run's plan, keys, manifests
and simulated boards.

- ```sh and ```bash blocks run under ``set -e``: every command must succeed (an example meant to
  fail says so itself, e.g. ``cmd || echo "exit $?"``).
- ```console blocks are ``$ command`` lines, each followed by the output it documents: every
  output line shown must appear in that command's output (stdout and stderr), in order, where
  ``...`` stands for any text; ``$ echo $?`` after a command shows its exit status.

Blocks that cannot run here are named in :data:`SKIPPED` with the reason, and an entry that no
longer matches a block fails the test, so the list cannot go stale. Every process a session
starts (the simulator in the background included) is in the session's own process group, which
is killed when the page is done.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.softhsm import require_softhsm

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
FIRST_RUN = "## Your first real run"

#: (page, the block's first line without its trailing comment) -> why it does not run here.
SKIPPED: dict[tuple[str, str], str] = {
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/fleet run "
                  "plans/demo.yaml"):
        "the set-up commands install packages (pip) and run the whole suite; this test runs in "
        "the venv they make",
    ("README.md", ". .venv/bin/activate"):
        "this test puts the venv's bin directory on PATH itself (its temporary checkout has no "
        ".venv)",
    ("docs/plans.md", "fleet plan check ../plans/example.yaml"):
        "expands the example plan's globs against this machine's /dev/serial ports (real "
        "hardware); the --no-expand example beside it runs",
    ("docs/provisioning.md", "python ../scripts/chaos.py --devices 16 --kills 10"):
        "a campaign of ten killed and resumed runs with faults, too long for the suite "
        "(tests/test_resume.py and tests/test_run_signals.py cover resume)",
    ("docs/ansible.md", "ansible-playbook -i plans/ansible/inventory.yml plans/ansible/site.yml"):
        "drives the stations of a real inventory over SSH (tests/test_ansible.py runs the "
        "playbook against simulated stations on localhost)",
    ("docs/simulator.md", "picocom -b 115200 modems/modem3"):
        "an interactive terminal program; the TCP example beside it sends a command",
    ("docs/performance.md", "python scripts/bench.py"):
        "the benchmark itself: about 90 s of full load on every core",
    ("docs/development.md", ".venv/bin/python -m pytest tests/test_plan.py -n 0 -q"):
        "runs the project's own suite and checks from a checkout's venv (this test is part of "
        "that suite)",
}

#: Pages whose examples need software this machine may lack -> the check that skips the page
#: without it (and fails it under CI, which installs it).
NEEDS: dict[str, Callable[[], None]] = {"docs/tokens.md": require_softhsm}

#: Pages whose examples run at the top of the checkout, without the README's first run first.
AT_CHECKOUT_TOP = {"docs/ansible.md", "docs/development.md", "docs/performance.md"}


@dataclass(frozen=True)
class Block:
    page: str
    lang: str
    text: str
    line: int  #: of the opening fence

    @property
    def first_line(self) -> str:
        """The first command line, without a trailing ``  # comment``."""
        line = next(line for line in self.text.splitlines() if line.strip())
        return line.split("  #")[0].strip()


def blocks(page: str) -> list[Block]:
    """The shell blocks of ``page``, in order."""
    found = []
    lines = (ROOT / page).read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.fullmatch(r"```(\w*)", lines[i])
        if not match:
            i += 1
            continue
        end = lines.index("```", i + 1)
        if match.group(1) in ("sh", "bash", "console"):
            found.append(Block(page, match.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 1))
        i = end + 1
    return found


def first_run() -> list[Block]:
    """The README's "Your first real run" blocks: what every page under docs/ starts from."""
    text = (ROOT / "README.md").read_text()
    start = text.index(FIRST_RUN)
    end_line = text.count("\n", 0, text.index("\n## ", start + 1)) + 1
    start_line = text.count("\n", 0, start) + 1
    return [b for b in blocks("README.md") if start_line < b.line < end_line]


def skipped(block: Block) -> bool:
    return (block.page, block.first_line) in SKIPPED


@dataclass(frozen=True)
class Console:
    """One ``$ command`` of a console block and the output it documents."""

    command: str
    expected: list[str]


def console_commands(block: Block) -> list[Console]:
    commands: list[Console] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append(Console(line[2:], []))
        elif commands:
            commands[-1].expected.append(line)
        elif line.strip():
            raise AssertionError(f"{block.page}:{block.line}: output before any $ command")
    return commands


def script(items: list[Block], work: Path) -> tuple[str, dict[str, tuple[Block, Console]]]:
    """One bash script for ``items``; a marker file per block tells how far it got, and each
    console command's output goes to a file of its own."""
    parts = ["set -e"]
    outputs: dict[str, tuple[Block, Console]] = {}
    for n, block in enumerate(items):
        parts.append(f"echo {n} > {work}/.block")
        if block.lang != "console":
            parts.append(block.text)
            continue
        parts.append("set +e")
        for k, command in enumerate(console_commands(block)):
            out = f"{work}/.out-{n}-{k}"
            outputs[out] = (block, command)
            parts.append(f"{{ {command.command}\n}} > {out} 2>&1")
        parts.append("set -e")
    parts.append(f"echo done > {work}/.block")
    return "\n".join(parts) + "\n", outputs


def matches(expected: list[str], actual: str) -> bool:
    """Every expected line (``...`` = any text) matches a line of ``actual``, in order."""
    lines = iter(actual.splitlines())
    for want in expected:
        if not want.strip():
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in want.strip().split("...")))
        if not any(pattern.fullmatch(line.strip()) for line in lines):
            return False
    return True


@pytest.fixture(scope="session")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pycache")


def checkout(tmp: Path) -> Path:
    work = tmp / "checkout"
    work.mkdir()
    for name in ("plans", "scripts"):
        shutil.copytree(ROOT / name, work / name,
                        ignore=shutil.ignore_patterns(".fleet", "__pycache__", "manifests"))
    return work


def run_page(page: str, tmp: Path, pycache: Path) -> None:
    own = [b for b in blocks(page) if not skipped(b)]
    if not own:
        pytest.skip(f"{page} has no shell example that runs here")
    if page in NEEDS:
        NEEDS[page]()
    top = page == "README.md" or page in AT_CHECKOUT_TOP
    prelude = [] if top else [b for b in first_run() if not skipped(b)]
    items = prelude + own
    work = checkout(tmp)
    text, outputs = script(items, work)
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HOME": str(tmp), "NO_COLOR": "1", "TERM": "dumb",
           # Each example starts fleet afresh: compiled once into a cache outside the tree.
           "PYTHONPYCACHEPREFIX": str(pycache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    log = tmp / "session.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", text], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the session's group: its simulator
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    reached = (work / ".block").read_text().strip() if (work / ".block").exists() else "0"
    session = log.read_text(errors="replace")[-6000:]
    if reached != "done":
        block = items[int(reached)]
        raise AssertionError(f"{block.page}:{block.line} ({block.first_line!r}) failed, exit "
                             f"{status}:\n{session}")
    assert status == 0, session
    for path, (block, command) in outputs.items():
        actual = Path(path).read_text(errors="replace")
        assert matches(command.expected, actual), (
            f"{block.page}:{block.line}: $ {command.command}\nexpected:\n"
            + "\n".join(command.expected) + f"\ngot:\n{actual}")


#: Pages whose examples forge a manifest on purpose (to show it fail), by file name.
FORGED = {"docs/manifest.md": "forged.json"}


@pytest.mark.parametrize("page", [
    pytest.param(page, marks=pytest.mark.forged_manifests(FORGED[page])) if page in FORGED
    else page for page in PAGES])
def test_shell_examples_run(page: str, tmp_path: Path, pycache: Path) -> None:
    run_page(page, tmp_path, pycache)


def test_every_skipped_block_exists() -> None:
    present = {(b.page, b.first_line) for page in PAGES for b in blocks(page)}
    assert set(SKIPPED) - present == set()


def test_console_blocks_show_commands() -> None:
    for page in PAGES:
        for block in blocks(page):
            if block.lang == "console":
                assert console_commands(block), f"{page}:{block.line}: no $ command"


def test_relative_links_lead_to_files_and_headings() -> None:
    for page in PAGES:
        text = (ROOT / page).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            file = (ROOT / page).parent / path if path else ROOT / page
            assert file.exists(), f"{page}: link to {target}: no such file"
            if anchor and file.suffix == ".md":
                assert anchor in {_anchor(h) for h in re.findall(r"^#+ (.*)$", file.read_text(),
                                                                  re.M)}, (
                    f"{page}: link to {target}: no such heading")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
