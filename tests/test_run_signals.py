"""SIGTERM and SIGINT at any instant of `fleet run --json`, from its first line on: exactly one
JSON document on stdout, and exit 3 (interrupted, nothing sent when the run had not started) or
a complete run. Timing varies from machine to machine, so each case asserts the invariant for
whatever instant the signal landed at."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleet import exitcodes
from tests.runhelpers import write_plan

#: Seconds after fleet's handler is in place; the later ones land in the run or after it.
INSTANTS = [(signal.SIGTERM, 0.0), (signal.SIGTERM, 0.02), (signal.SIGTERM, 0.1),
            (signal.SIGINT, 0.15), (signal.SIGTERM, 0.25), (signal.SIGTERM, 0.4),
            (signal.SIGINT, 0.6), (signal.SIGTERM, 0.9), (signal.SIGTERM, 1.5)]


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (``SigCgt`` in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & (1 << (signum - 1)))


def _one_document(stdout: str) -> dict[str, Any]:
    text = stdout.strip()
    document, end = json.JSONDecoder().raw_decode(text)
    assert text[end:].strip() == "", f"more than one document on stdout:\n{stdout}"
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize(("signum", "delay"), INSTANTS,
                         ids=[f"{signal.Signals(s).name}-{d}s" for s, d in INSTANTS])
def test_a_signal_at_any_instant_gives_one_document(tmp_path: Path, signum: int,
                                                    delay: float) -> None:
    extra = "simulator: {seed: 2, profile: fast, state: sim.json, log: sim.log}\n"
    plan = write_plan(tmp_path, ports="sim://0-3", extra=extra)
    journal = tmp_path / "j.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "run", str(plan), "--json",
                             "--journal", str(journal)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Before fleet's first line runs, the interpreter itself is starting: no program can
        # catch a signal then, so the instants count from the handler's installation, which
        # comes before the imports, the plan and the run (so before the journal exists).
        # fleet installs its SIGINT and SIGTERM handlers together, SIGTERM last; SIGINT is
        # caught from the interpreter's own start (KeyboardInterrupt), so it cannot tell.
        deadline = time.monotonic() + 30
        while not _catches(proc.pid, signal.SIGTERM):
            assert proc.poll() is None, "fleet ended before it caught the signal"
            assert time.monotonic() < deadline, "fleet never installed its signal handler"
            time.sleep(0.001)
        assert not journal.exists(), "the signal was caught only once the run had started"
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err
    document = _one_document(out)
    assert proc.returncode in (exitcodes.OK, exitcodes.INTERRUPTED), err
    if proc.returncode == exitcodes.INTERRUPTED:
        assert document["interrupted"] is True, document
        if document["run_id"] is None:  # stopped before the run began: nothing was sent
            assert "before the run started" in document["error"]
            assert [d["outcome"] for d in document["devices"]] == ["not-started"] * 4
            assert not (tmp_path / "sim.log").exists() or not (tmp_path / "sim.log").read_text()
        else:
            assert document["manifest"] is not None, document
    else:
        assert document["interrupted"] is False and document["failed"] is False, document
        assert {d["outcome"] for d in document["devices"]} == {"done"}
