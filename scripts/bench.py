#!/usr/bin/env python3
"""Benchmark `fleet run` against `fleet sim --profile realistic`: N in 1, 8, 64, 256.

    python scripts/bench.py                 # N = 1, 8, 64, 256
    python scripts/bench.py --sizes 1 8 64  # fewer
    python scripts/bench.py --markdown      # also the table and the targets as GitHub Markdown
    python scripts/bench.py --shell         # also each N through a Zephyr shell

For each N it starts `fleet sim` with N modems (its own process: its CPU is not counted), runs
`fleet run --json` with a two-key plan (client key with CSR, endorsement key) and a fresh
journal, and measures the fleet process: wall time, CPU seconds (user + system, from wait4),
peak RSS, and event-loop errors (asyncio "Exception in callback", "Task exception was never
retrieved", unhandled errors in its stderr). It also runs N=8 with `--concurrency 1` (the
sequential baseline that one-device-per-process tools correspond to) and a re-run of the
completed N=64 plan (nothing to do), whose simulator log must show no %KEYGEN and no function
mode change. Each row is the median of ``--repeat`` repetitions (default 3; event-loop errors,
%KEYGEN and CFUN counts summed over them). All figures come from this one invocation, printed as
one table, with the speed and memory targets checked at the end (exit 1 if one is missed);
``--markdown`` prints both again as GitHub Markdown (a table and a list) for docs/performance.md.

``--pkcs11`` adds two rows and one target, leaving the others as they are: N=256 against
`fleet sim --profile fast` with a CA under the client key, once with the CA key in a file and
once with it in a SoftHSM2 token (a token store of the benchmark's own, made with `fleet ca init
--pkcs11`); the station key is a file in both, so the difference is the 256 certificates signed
in the token. The target: the token run takes at most 1 s longer than the file-key run (its
ratio to it is printed beside). ``--sizes`` with no size leaves out the other rows:

    python scripts/bench.py --sizes --pkcs11

``--shell`` adds a row per N against the simulator with a Zephyr shell in front of each modem
(``SHELL``: Modem Shell's build, wildcards off and a buffer that holds a certificate), labelled
``shell N=...`` with its own ``x N=1``; the targets are the plain rows' only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

FLEET = [sys.executable, "-m", "fleet"]
#: The `fleet sim` options of the ``--shell`` rows.
SHELL = ("--interface", "shell", "--shell-wildcards", "off", "--shell-buffer", "3584")
_LOOP_ERRORS = re.compile(r"Exception in callback|exception was never retrieved|"
                          r"Task was destroyed|Traceback \(most recent call last\)|slot crashed")


@dataclass
class Result:
    label: str
    n: int
    keys: int
    wall: float
    cpu: float
    rss_mb: float
    loop_errors: int
    exit_code: int
    keygens: int = 0
    cfun_sets: int = 0
    sim_cpu: float = 0.0


def start_sim(work: Path, n: int, profile: str = "realistic",
              options: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*FLEET, "sim", "--count", str(n), "--dir", str(work / "ports"), "--log",
         str(work / "sim.log"), "--state", str(work / "sim.json"), "--profile", profile,
         "--seed", str(n), *options],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    if not proc.stdout.readline():
        raise SystemExit("fleet sim did not start")
    return proc


def write_plan(work: Path, ca: str = "") -> Path:
    """The benchmark's plan; ``ca``: the lines of a ``ca:`` section under the client key."""
    plan = work / "plan.yaml"
    ca_lines = textwrap.indent(ca, " " * 12)
    plan.write_text(textwrap.dedent(f"""\
        version: 1
        station: bench
        signing_key: keys/station.pem
        throwaway_signing_key: true
        manifest: out/{{station}}-{{run_id}}.json
        defaults: {{timeout_s: 20, keygen_timeout_s: 30, retries: 3}}
        keys:
          tls:
            sec_tag: 16842753
            type: client_key
            response: csr
            attributes: {{CN: "{{imei}}", O: "Bench", C: "NO"}}
            key_usage: "101010000"
{ca_lines}
          endorsement:
            sec_tag: 33
            type: endorsement_key
        slots:
          - port: "{work / 'ports' / 'modem*'}"
            keys: [tls, endorsement]
        """))
    return plan


def measure(label: str, n: int, plan: Path, journal: Path, work: Path, *extra: str) -> Result:
    log_before = _log_lines(work)
    stderr_path = work / f"fleet-{label}.stderr"
    with stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen([*FLEET, "run", str(plan), "--journal", str(journal), "--json",
                                 *extra], stdout=subprocess.PIPE, stderr=stderr)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    doc = json.loads(out)
    done = sum(1 for d in doc["devices"] if d["outcome"] == "done")
    if done != n:
        print(f"  {label}: only {done}/{n} devices done (exit {proc.returncode})")
    errors = len(_LOOP_ERRORS.findall(stderr_path.read_text(errors="replace")))
    new = _log_lines(work)[len(log_before):]
    commands = [r.get("command", "").upper() for r in new if "fault" not in r]
    return Result(label=label, n=n, keys=2 * n, wall=wall, cpu=usage.ru_utime + usage.ru_stime,
                  rss_mb=usage.ru_maxrss / 1024, loop_errors=errors, exit_code=proc.returncode,
                  keygens=sum(c.startswith("AT%KEYGEN") for c in commands),
                  cfun_sets=sum(c.startswith("AT+CFUN=") for c in commands))


def _log_lines(work: Path) -> list[dict[str, object]]:
    path = work / "sim.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _stop(sim: subprocess.Popen[bytes]) -> float:
    """Stop the simulator; its CPU seconds (for information: it is not fleet's)."""
    sim.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(sim.pid, 0)
    sim.returncode = 0
    return usage.ru_utime + usage.ru_stime


def _median(results: list[Result]) -> Result:
    """The repetition with the median wall time (the machine is shared and noisy); event-loop
    errors, %KEYGEN and CFUN counts are summed and the worst exit code kept over all of them."""
    median = sorted(results, key=lambda r: r.wall)[len(results) // 2]
    median.loop_errors = sum(r.loop_errors for r in results)
    median.keygens = sum(r.keygens for r in results)
    median.cfun_sets = sum(r.cfun_sets for r in results)
    median.exit_code = max(r.exit_code for r in results)
    return median


def run_size(n: int, root: Path, extra_runs: bool, repeat: int, *, prefix: str = "",
             options: tuple[str, ...] = ()) -> list[Result]:
    """``repeat`` first runs, each on a fresh simulator (with ``options``) and journal; for
    N=64 also ``repeat`` re-runs of the last completed plan. Each row is the median
    repetition, labelled ``prefix`` + ``N=n``."""
    firsts: list[Result] = []
    reruns: list[Result] = []
    for rep in range(repeat):
        work = root / f"{prefix.strip()}n{n}-{rep}"
        work.mkdir()
        sim = start_sim(work, n, options=options)
        try:
            plan = write_plan(work)
            first = measure(f"{prefix}N={n}", n, plan, work / "journal.sqlite", work)
            if extra_runs and rep == repeat - 1:
                for _ in range(repeat):
                    reruns.append(measure(f"{prefix}N={n} re-run", n, plan,
                                          work / "journal.sqlite", work))
        finally:
            sim_cpu = _stop(sim)  # also when a run failed (then nothing is recorded)
        first.sim_cpu = sim_cpu
        firsts.append(first)
    return [_median(firsts)] + ([_median(reruns)] if reruns else [])


#: The token of the --pkcs11 rows: its label and PIN (a throwaway SoftHSM2 token).
_TOKEN, _PIN = "bench", "1234"
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


def _softhsm(root: Path) -> str:
    """A SoftHSM2 token store of the benchmark's own (``SOFTHSM2_CONF`` for the commands this
    process starts) with one token; returns the CA key's URI."""
    if not os.path.exists(SOFTHSM) or shutil.which("softhsm2-util") is None:
        raise SystemExit("--pkcs11 needs SoftHSM2 (apt-get install softhsm2)")
    store = root / "softhsm"
    (store / "tokens").mkdir(parents=True)
    conf = store / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {store / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ["FLEET_BENCH_PIN"] = _PIN
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", _TOKEN, "--pin", _PIN,
                    "--so-pin", "5678"], check=True, stdout=subprocess.DEVNULL)
    return f"pkcs11:token={_TOKEN};object=ca?module-path={SOFTHSM}&pin-source=env:FLEET_BENCH_PIN"


def pkcs11_rows(root: Path, repeat: int, n: int = 256) -> list[Result]:
    """N=``n`` fast-profile runs that sign every device's certificate: the CA key in a file,
    then in a SoftHSM2 token (each the median of ``repeat``, on a fresh simulator and
    journal, the two kinds taking turns)."""
    uri = _softhsm(root)
    cas = {"file": root / "ca-file", "token": root / "ca-token"}
    subprocess.run([*FLEET, "ca", "init", str(cas["file"])], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*FLEET, "ca", "init", str(cas["token"]), "--pkcs11", uri], check=True,
                   stdout=subprocess.DEVNULL)
    keys = {"file": str(cas["file"] / "ca.key"), "token": f"'{uri}'"}
    reps: dict[str, list[Result]] = {"file": [], "token": []}
    for rep in range(repeat):
        for kind in reps:  # alternated, so that a slower spell of the machine hits both
            work = root / f"pkcs11-{kind}-{rep}"
            work.mkdir()
            sim = start_sim(work, n, profile="fast")
            try:
                plan = write_plan(work, ca=f"ca: {{cert: {cas[kind] / 'ca.pem'}, "
                                           f"key: {keys[kind]}}}\n")
                result = measure(f"N={n} fast, CA {kind}", n, plan, work / "journal.sqlite",
                                 work)
            finally:
                sim_cpu = _stop(sim)
            result.sim_cpu = sim_cpu
            reps[kind].append(result)
    return [_median(results) for results in reps.values()]


def sequential(root: Path) -> Result:
    work = root / "seq8"
    work.mkdir()
    sim = start_sim(work, 8)
    try:
        result = measure("N=8 --concurrency 1", 8, write_plan(work), work / "journal.sqlite",
                         work, "--concurrency", "1")
    finally:
        cpu = _stop(sim)
    result.sim_cpu = cpu
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 8, 64, 256],
                        help="N of the realistic-profile rows (none: only the --pkcs11 rows)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="repetitions per row; the median is reported (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--pkcs11", action="store_true",
                        help="also N=256 fast-profile runs with the CA key in a file and in a "
                        "SoftHSM2 token, and the target for their difference")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table and the targets as GitHub Markdown")
    parser.add_argument("--shell", action="store_true",
                        help="also run each N against a simulator with a Zephyr shell")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    # Measure fleet as installed: an install byte-compiles the package, but an editable install
    # (or PYTHONDONTWRITEBYTECODE, set on some machines) would recompile it on every start.
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    str(Path(__file__).resolve().parents[1] / "fleet")], check=True)
    root = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    results: list[Result] = []
    try:
        for n in args.sizes:
            print(f"running N={n} ...", flush=True)
            results += run_size(n, root, extra_runs=(n == 64), repeat=args.repeat)
        if args.sizes:
            print("running N=8 --concurrency 1 ...", flush=True)
            results.append(sequential(root))
        if args.pkcs11:
            print("running N=256 fast with the CA key in a file, then in a token ...",
                  flush=True)
            results += pkcs11_rows(root, args.repeat)
        if args.shell:
            for n in args.sizes:
                print(f"running shell N={n} ...", flush=True)
                results += run_size(n, root, extra_runs=(n == 64), repeat=args.repeat,
                                    prefix="shell ", options=SHELL)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    base = next((r.wall for r in results if r.label == "N=1"), None)
    shell_base = next((r.wall for r in results if r.label == "shell N=1"), None)
    rows = [_row(r, shell_base if r.label.startswith("shell ") else base) for r in results]
    print()
    print("".join(f"{name:{'<' if i == 0 else '>'}{width}}"
                  for i, (name, width, _) in enumerate(COLUMNS)))
    for row in rows:
        print("".join(f"{cell:{'<' if i == 0 else '>'}{width}}"
                      for i, (cell, (_, width, _)) in enumerate(zip(row, COLUMNS, strict=True))))
    checks = _targets(results, base)
    print()
    for text, ok in checks:
        print(f"[{'ok' if ok else 'MISSED'}] {text}")
    if args.markdown:
        print()
        print("| " + " | ".join(markdown for _, _, markdown in COLUMNS) + " |")
        print("| --- |" + " ---: |" * (len(COLUMNS) - 1))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        for text, ok in checks:
            print(f"- {'ok' if ok else 'MISSED'}: {text}")
    return 0 if all(ok for _, ok in checks) else 1


#: (plain heading, plain width, Markdown heading) of each column of the results table.
COLUMNS = (("run", 22, "run"), ("wall s", 8, "wall s"), ("x N=1", 8, "x N=1"),
           ("CPU s", 8, "CPU s"), ("CPU ms/dev", 12, "CPU ms/device"),
           ("CPU ms/key", 12, "CPU ms/key"), ("RSS MB", 8, "peak RSS MB"),
           ("loop err", 9, "loop errors"), ("KEYGEN", 8, "`%KEYGEN` sent"),
           ("CFUN=", 7, "`+CFUN=` sent"), ("exit", 6, "exit"), ("sim CPU s", 11, "sim CPU s"))


def _row(r: Result, base: float | None) -> list[str]:
    """The cells of one result, in :data:`COLUMNS` order."""
    return [r.label, f"{r.wall:.2f}", f"{r.wall / base:.2f}" if base else "-", f"{r.cpu:.2f}",
            f"{1000 * r.cpu / r.n:.1f}", f"{1000 * r.cpu / r.keys:.1f}", f"{r.rss_mb:.1f}",
            str(r.loop_errors), str(r.keygens), str(r.cfun_sets), str(r.exit_code),
            f"{r.sim_cpu:.2f}"]


def _targets(results: list[Result], base: float | None) -> list[tuple[str, bool]]:
    """Each target as (what was measured against what limit, whether it holds)."""
    by = {r.label: r for r in results}
    checks: list[tuple[str, bool]] = []
    if base:
        for n, limit in ((64, 1.15), (256, 1.3)):
            if f"N={n}" in by:
                ratio = by[f"N={n}"].wall / base
                checks.append((f"N={n} wall {ratio:.2f} x N=1 <= {limit}", ratio <= limit))
    if "N=256" in by:
        r = by["N=256"]
        checks.append((f"N=256 CPU {1000 * r.cpu / r.keys:.1f} ms per device-key <= 20",
                       1000 * r.cpu / r.keys <= 20))
        checks.append((f"N=256 peak RSS {r.rss_mb:.0f} MB <= 200", r.rss_mb <= 200))
    checks.append(("zero event-loop errors", all(r.loop_errors == 0 for r in results)))
    checks.append(("every run exit 0", all(r.exit_code == 0 for r in results)))
    if "N=64 re-run" in by:
        again, first = by["N=64 re-run"], by["N=64"]
        checks.append((f"N=64 re-run sends no %KEYGEN ({again.keygens}) and no CFUN change "
                       f"({again.cfun_sets})", again.keygens == 0 and again.cfun_sets == 0))
        ratio = again.wall / first.wall
        checks.append((f"N=64 re-run wall {ratio:.2f} x first run <= 0.25", ratio <= 0.25))
    if "N=256 fast, CA token" in by:
        token, file = by["N=256 fast, CA token"], by["N=256 fast, CA file"]
        added = token.wall - file.wall
        checks.append((f"N=256 fast: the CA key in a token adds {added:+.2f} s "
                       f"({token.wall / file.wall:.2f} x the file-key run) <= 1 s", added <= 1.0))
    return checks


if __name__ == "__main__":
    sys.exit(main())
