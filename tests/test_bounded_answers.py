"""A modem that streams well-formed lines and never ends its answer: fleet's memory stays
bounded, that device fails, the others finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fleet.manifest import verify
from tests.runhelpers import write_plan
from tests.simproc import run_sim


def test_a_device_streaming_lines_forever_fails_and_memory_stays_bounded(
        tmp_path: Path) -> None:
    with run_sim(tmp_path, 4, "--fault", "endless-answer:1.0@2"):
        plan = write_plan(tmp_path, ports=str(tmp_path / "ports" / "modem*"),
                          slot_keys="[tls]",
                          defaults="{timeout_s: 3, keygen_timeout_s: 10, retries: 1}")
        proc = subprocess.Popen([sys.executable, "-m", "fleet", "run", str(plan), "--journal",
                                 str(tmp_path / "j.sqlite"), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)  # fleet's own peak RSS, not the simulator's
        proc.returncode = os.waitstatus_to_exitcode(status)
    document = json.loads(out)
    assert proc.returncode == 1, err.decode(errors="replace")
    outcomes = {Path(d["port"]).name: d["outcome"] for d in document["devices"]}
    assert outcomes == {"modem0": "done", "modem1": "done", "modem2": "failed",
                        "modem3": "done"}
    assert verify(Path(document["manifest"]).read_bytes(), trusted=None).ok
    peak_mb = usage.ru_maxrss / 1024
    assert peak_mb < 150, f"fleet's peak RSS {peak_mb:.0f} MB"
