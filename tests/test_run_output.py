"""What `fleet run` says and how its command line reads: the log level on a terminal, `--only`
before the plan, the exit status when stdout's reader is gone, the summary in words, normalised
manifest paths and the live table at 80 columns. Through the real command line and the
in-process simulator."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

from rich.console import Console

from fleet.progress import ProgressTable
from fleet.run import SlotStatus
from tests.runhelpers import REPO, fleet, run_json, write_plan

SIM = "simulator: {log: sim.log, state: sim.json}\n"


def _on_a_terminal(*args: str | Path) -> tuple[int, str, str]:
    """`fleet` with stdout on a pseudo-terminal (stderr a pipe): (status, screen, stderr)."""
    master, slave = pty.openpty()
    screen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    env = {**os.environ, "COLUMNS": "100", "LINES": "40"}
    try:
        proc = subprocess.run([sys.executable, "-m", "fleet", *map(str, args)], stdout=slave,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False,
                              env=env, cwd=REPO)
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, screen.decode("utf-8", "replace"), proc.stderr


def _levels(stderr: str) -> set[str]:
    return {json.loads(line)["level"] for line in stderr.splitlines() if line.startswith("{")}


def test_log_level_info_shows_info_lines_on_a_terminal(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0", extra=SIM)
    journal = tmp_path / "j.sqlite"
    # While the live table is shown, log lines scroll above it, on the terminal.
    code, screen, stderr = _on_a_terminal("run", plan, "--journal", journal)
    assert code == 0, stderr
    assert "THROWAWAY" in stderr + screen  # a warning: shown by default
    assert "manifest written" not in stderr + screen  # an info line: not by default
    assert "ok: 1 device: 1 done" in screen
    code, screen, stderr = _on_a_terminal("run", plan, "--journal", journal,
                                          "--log-level", "info")
    assert code == 0, stderr
    assert "manifest written" in stderr + screen, screen
    # Not on a terminal, the default is info.
    result = fleet("run", plan, "--journal", journal)
    assert result.returncode == 0 and "info" in _levels(result.stderr)


def test_only_takes_one_slot_per_flag_and_leaves_the_plan_alone(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0-2", extra=SIM)
    journal = tmp_path / "j.sqlite"
    result = fleet("run", "--only", "slot1", plan, "--journal", journal, "--json", "--check")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {d["slot"]: d["outcome"] for d in doc["devices"]} == {
        "slot0": "not-started", "slot1": "done", "slot2": "not-started"}
    code, doc, err = run_json(plan, journal, "--check", "--only", "slot0", "--only", "slot2")
    assert code == 0, err
    assert [d["slot"] for d in doc["devices"] if d["outcome"] == "done"] == ["slot0", "slot2"]
    # One value per flag: a second word is the plan (or an extra argument), never a slot.
    result = fleet("run", plan, "--only", "slot0", "slot1", "--journal", journal, "--check")
    assert result.returncode == 2
    assert "unrecognized arguments: slot1" in result.stderr


def test_a_closed_stdout_keeps_the_exit_status(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nstation: x\n")
    good = write_plan(tmp_path, ports="sim://0", extra=SIM)
    for args, status in ((["run", bad, "--json"], 2), (["run", bad], 2),
                         (["plan", "check", bad, "--json"], 2),
                         (["run", good, "--journal", tmp_path / "j.sqlite", "--json"], 0)):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before fleet writes a byte
        try:
            proc = subprocess.run([sys.executable, "-m", "fleet", *map(str, args)],
                                  stdout=write_end, stderr=subprocess.PIPE, text=True,
                                  timeout=120, check=False)
        finally:
            os.close(write_end)
        assert proc.returncode == status, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_a_check_says_how_many_devices_a_real_run_would_fail(tmp_path: Path) -> None:
    keys = """
    keys:
      tls: {sec_tag: 16842753, type: client_key, response: csr, if_exists: fail}
    """
    plan = write_plan(tmp_path, ports="sim://0-1", keys=keys, slot_keys="[tls]", extra=SIM)
    result = fleet("run", plan, "--journal", tmp_path / "made.sqlite")
    assert result.returncode == 0, result.stderr
    # Another journal knows none of the keys now on the boards: a real run would fail both.
    result = fleet("run", plan, "--journal", tmp_path / "other.sqlite", "--check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == ("ok: 2 devices: 2 checked; a real run would change nothing and fail 2 "
                         "devices (see above)")
    assert len([line for line in lines if ": would fail: " in line]) == 2


def test_the_summary_is_in_words(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ports="sim://0-1", extra=SIM)
    journal = tmp_path / "j.sqlite"
    result = fleet("run", plan, "--journal", journal, "--check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok: 2 devices: 2 checked; a real run would change them"
    assert "           tls (sec_tag 16842753): would generate: no key in this sec_tag" in lines
    assert [line.split()[2:] for line in lines if line.startswith("slot")] == [["checked"]] * 2
    result = fleet("run", plan, "--journal", journal)
    assert result.returncode == 0, result.stderr
    assert "ok: 2 devices: 2 done; devices were changed" in result.stdout.splitlines()
    result = fleet("run", plan, "--journal", journal, "--check")
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok: 2 devices: 2 checked; a real run would change nothing"
    assert ("           tls (sec_tag 16842753): nothing to do: key present and its answer is "
            "in the journal") in lines
    assert not [line for line in lines if "summary=" in line or "would nothing" in line]


def test_manifest_paths_are_normalised(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = write_plan(plans, ports="sim://0", extra=SIM)
    plan.write_text(plan.read_text().replace("manifest: out/{station}-{run_id}.json",
                                             "manifest: ../out/{station}-{run_id}.json"))
    result = fleet("run", plan, "--journal", tmp_path / "j.sqlite")
    assert result.returncode == 0, result.stderr
    printed = next(line for line in result.stdout.splitlines() if line.startswith("manifest: "))
    path = Path(printed.removeprefix("manifest: "))
    assert ".." not in path.parts and path.parent == tmp_path / "out" and path.is_file()
    check = fleet("plan", "check", plan)
    assert f"manifest:  {tmp_path / 'out'}/{{station}}-{{run_id}}.json  (directory writable)" \
        in check.stdout.splitlines()


def test_the_live_table_fits_80_columns_and_tells_the_ports_apart() -> None:
    ports = [f"/dev/serial/by-path/pci-0000:00:14.0-usb-0:1.{i}:1.0" for i in range(1, 5)]
    statuses = [SlotStatus(slot=f"slot{i}", port=port, keys_total=2)
                for i, port in enumerate(ports)]
    statuses[0].imei, statuses[0].step = "352656107129283", "keygen tls (attempt 2 of 3)"
    statuses[1].outcome = "interrupted"
    table = ProgressTable(statuses, title="fleet run line1-a")
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(table.render(40, 80))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    for i in range(4):
        row = next(line for line in lines if line.startswith(f"slot{i} "))
        assert f"-0:1.{i + 1}:1.0 " in row, row  # the part that differs, and the tail
    assert "352656107129283" in lines[3] and "interrupted" in out.getvalue()
