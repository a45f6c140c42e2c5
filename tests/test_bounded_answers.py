"""A modem that streams well-formed lines and never ends its answer: fleet's memory stays
bounded, that device fails, the others finish."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fleet.manifest import verify
from tests.runhelpers import write_plan
from tests.simproc import run_sim

_LAUNCHER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:], check=False).returncode
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def test_a_device_streaming_lines_forever_fails_and_memory_stays_bounded(
        tmp_path: Path) -> None:
    with run_sim(tmp_path, 4, "--fault", "endless-answer:1.0@2"):
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"),
                          slot_keys="[tls]",
                          defaults="{timeout_s: 3, keygen_timeout_s: 10, retries: 1}")
        # A peak RSS survives exec, so a child forked from this (large) test process would
        # report the test's own size: a small launcher starts fleet and reports its peak.
        peak = tmp_path / "peak-rss-kb"
        result = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(peak), sys.executable, "-m", "fleet", "run",
             str(plan), "--journal", str(tmp_path / "j.sqlite"), "--json"],
            capture_output=True, timeout=300, check=False)
    document = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr.decode(errors="replace")
    outcomes = {Path(d["port"]).name: d["outcome"] for d in document["devices"]}
    assert outcomes == {"modem0": "done", "modem1": "done", "modem2": "failed",
                        "modem3": "done"}
    assert verify(Path(document["manifest"]).read_bytes(), trusted=None).ok
    peak_mb = int(peak.read_text()) / 1024
    assert peak_mb < 150, f"fleet's peak RSS {peak_mb:.0f} MB"
