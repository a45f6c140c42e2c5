"""Where a plan's journal is, which file it is, whose it is: the default place beside the plan,
``journal:`` and ``--journal``, the station a journal is made for, the journal at the old default
place, one lock per database file (symlinks and hard links), empty, foreign and unwritable
files, and ``--check`` writing nothing. All through the real CLI on real SQLite files."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fleet.station_key import init_station_key
from tests.runhelpers import fleet, run_json, write_plan

SIM = "simulator: {seed: 5, profile: fast, state: sim.json, log: sim.log}\n"


def _journal_of_one_run(tmp_path: Path) -> tuple[Path, Path]:
    """A plan and its journal (``j.sqlite``) after one run of it that finished."""
    plan = _plan(tmp_path)
    journal = tmp_path / "j.sqlite"
    code, _, err = run_json(plan, journal)
    assert code == 0, err
    return plan, journal


def _plan(directory: Path, *, name: str = "plan.yaml", station: str = "test-station",
          sim: str = SIM, extra: str = "", ports: str = "sim://0-1",
          defaults: str = "{timeout_s: 5, keygen_timeout_s: 10, retries: 2}") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    plan = write_plan(directory, ports=ports, extra=sim + extra, slot_keys="[tls]",
                      name=name, defaults=defaults)
    plan.write_text(plan.read_text().replace("station: test-station", f"station: {station}"))
    return plan


def _run(plan: Path, *args: str | Path, cwd: Path) -> tuple[int, dict[str, Any], str]:
    """`fleet run --json` with no --journal unless given."""
    result = fleet("run", plan, "--json", *args, cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def _outcomes(doc: dict[str, Any]) -> set[str]:
    return {k["outcome"] for d in doc["devices"] for k in d["keys"]}


def _files_like(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


def _fingerprint(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, _files_like(path)


def test_the_default_journal_belongs_to_the_plan_not_to_the_current_directory(
        tmp_path: Path) -> None:
    station = tmp_path / "station"
    plan = _plan(station)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    code, first, err = _run(plan, cwd=here)
    assert code == 0, err
    assert _outcomes(first) == {"generated"}
    assert (station / ".fleet" / "plan.journal.sqlite").is_file()
    # From another directory the same plan finds its journal: fleet's keys are its own.
    code, again, err = _run(plan, cwd=there)
    assert code == 0, err
    assert _outcomes(again) == {"unchanged"} and again["changed"] is False
    assert not list(here.iterdir()) and not list(there.iterdir())
    # A second plan in the same directory has a journal of its own.
    other = _plan(station, name="other.yaml", sim=SIM.replace("sim.json", "other-sim.json"))
    code, _, err = _run(other, cwd=there)
    assert code == 0, err
    assert (station / ".fleet" / "other.journal.sqlite").is_file()
    with sqlite3.connect(station / ".fleet" / "plan.journal.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 2  # not other.yaml
    # `fleet plan check` says where it is.
    shown = fleet("plan", "check", plan, "--json", cwd=there)
    assert json.loads(shown.stdout)["journal"] == str(station / ".fleet" / "plan.journal.sqlite")


def test_journal_in_the_plan_is_relative_to_the_plan_and_the_option_overrides_it(
        tmp_path: Path) -> None:
    station = tmp_path / "station"
    plan = _plan(station, extra="journal: data/line.sqlite\n")
    code, _, err = _run(plan, cwd=tmp_path)
    assert code == 0, err
    assert (station / "data" / "line.sqlite").is_file()
    assert not (station / ".fleet").exists() and not (tmp_path / ".fleet").exists()
    # --journal PATH (relative to the current directory, as any command-line path) wins.
    code, doc, err = _run(plan, "--journal", "mine.sqlite", cwd=tmp_path)
    assert code == 0, err
    assert (tmp_path / "mine.sqlite").is_file()
    assert _outcomes(doc) == {"pre-existing"}  # a new journal does not know fleet's keys
    bad = _plan(tmp_path / "bad", extra="journal: ''\n")
    result = fleet("run", bad, "--json")
    assert result.returncode == 2 and "not a usable path" in result.stderr


def test_a_journal_made_for_another_station_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite"
    code, _, err = run_json(_plan(tmp_path / "a", station="line1-a"), journal)
    assert code == 0, err
    with sqlite3.connect(journal) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["station"] == "line1-a" and meta["plan"] == str(tmp_path / "a" / "plan.yaml")
    other = _plan(tmp_path / "b", station="line1-b")
    for check in ([], ["--check"]):
        code, doc, err = run_json(other, journal, *check)
        assert code == 2, err
        assert "'line1-a'" in err and "'line1-b'" in err and "--journal" in err, err
        assert doc["failed"] is True and "nothing was sent" in err
    assert not (tmp_path / "b" / "sim.log").exists()  # its simulator never started


def test_the_journal_at_the_old_default_place_is_not_silently_left_behind(
        tmp_path: Path) -> None:
    station = tmp_path / "station"
    plan = _plan(station)
    old = tmp_path / ".fleet" / "journal.sqlite"
    code, _, err = run_json(plan, old)  # where a run from tmp_path used to put it
    assert code == 0, err
    for check in ([], ["--check"]):
        code, doc, err = _run(plan, *check, cwd=tmp_path)
        assert code == 2, err
        assert str(old) in err and f"--journal {old}" in err, err
        assert "journal: ../.fleet/journal.sqlite" in err, err
        assert doc["failed"] is True
    result = fleet("plan", "check", plan, cwd=tmp_path)  # says so too, before any run
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2].startswith(f"  fleet run would stop: {old} holds 1 run(s) of this plan")
    assert lines[-1].startswith("plan is valid, but fleet run would stop here"), lines[-1]
    assert not (station / ".fleet").exists()
    # Named, it is used as before.
    code, doc, err = _run(plan, "--journal", ".fleet/journal.sqlite", cwd=tmp_path)
    assert code == 0, err
    assert _outcomes(doc) == {"unchanged"}
    # Once the plan's own journal exists, it is used; the old one is only mentioned.
    (station / ".fleet").mkdir()
    (station / ".fleet" / "plan.journal.sqlite").write_bytes(old.read_bytes())
    code, doc, err = _run(plan, cwd=tmp_path)
    assert code == 0, err
    assert _outcomes(doc) == {"unchanged"}
    assert "old default place" in err
    # A journal there that holds no run of this plan is no reason to stop.
    other = _plan(tmp_path / "other", station="elsewhere")
    code, _, err = _run(other, cwd=tmp_path)
    assert code == 0, err


def _wait_for(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _running(journal: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1) as conn:
            return bool(conn.execute("SELECT count(*) FROM runs WHERE status = 'running'")
                        .fetchone()[0])
    except sqlite3.Error:
        return False


def test_a_link_to_a_live_runs_journal_is_refused(tmp_path: Path) -> None:
    # One slot at a time, about 3.5 s each: the run would last minutes, so it is still live
    # for the four refused runs below however loaded the machine is; then it is stopped.
    plan = _plan(tmp_path, sim=SIM.replace("fast", "realistic"), ports="sim://0-99",
                 defaults="{timeout_s: 5, keygen_timeout_s: 10, retries: 2, concurrency: 1}")
    journal = tmp_path / "j.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "run", str(plan), "--journal",
                             str(journal), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: _running(journal), "the first run to start")
        (tmp_path / "symlink.sqlite").symlink_to(journal)
        os.link(journal, tmp_path / "hardlink.sqlite")
        for name in ("symlink.sqlite", "hardlink.sqlite"):
            for check in ([], ["--check"]):
                code, doc, err = run_json(plan, tmp_path / name, *check)
                assert code == 2, err
                assert f"in use by another fleet run (pid {proc.pid})" in err, err
                assert doc["failed"] is True
        assert proc.poll() is None, "the first run ended before the refused runs were done"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert json.loads(out)["interrupted"] is True
    assert len(list((tmp_path / "out").iterdir())) == 1  # one run, one manifest


def test_an_empty_journal_file_is_refused_not_taken_as_new(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    journal = tmp_path / "j.sqlite"
    journal.write_bytes(b"")
    code, doc, err = run_json(plan, journal)
    assert code == 2 and doc["failed"] is True, err
    assert "empty file (0 bytes)" in err and "truncated" in err, err
    assert journal.stat().st_size == 0 and _files_like(journal) == ["j.sqlite"]
    assert not (tmp_path / "sim.log").exists()


def test_no_room_for_a_new_journal_is_a_clear_refusal(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert fleet("station-key", "init", "--out", tmp_path / "keys").returncode == 0

    def small_files() -> None:  # a full disk, as far as new files go (SIGXFSZ: Python ignores it)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    journal = tmp_path / "journal" / "j.sqlite"
    result = subprocess.run([sys.executable, "-m", "fleet", "run", str(plan), "--json",
                             "--journal", str(journal)], capture_output=True, text=True,
                            timeout=120, preexec_fn=small_files, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot use journal {journal}: File too large" in result.stderr
    assert "free some space" in result.stderr
    assert json.loads(result.stdout)["failed"] is True
    assert not journal.exists()
    assert not [p for p in journal.parent.iterdir()]  # no temporary file left behind


def test_a_database_that_is_not_a_journal_is_left_untouched(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    foreign = tmp_path / "inventory.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE boards (serial TEXT)")
        conn.execute("INSERT INTO boards VALUES ('A-1')")
    conn.close()
    before = _fingerprint(foreign)
    for check in (["--check"], []):
        code, doc, err = run_json(plan, foreign, *check)
        assert code == 2 and doc["failed"] is True, err
        assert "not a fleet journal" in err and "left untouched" in err, err
        assert "tables: boards" in err
        assert _fingerprint(foreign) == before
    garbage = tmp_path / "notes.sqlite"
    garbage.write_text("not a database at all\n" * 100)
    code, _, err = run_json(plan, garbage)
    assert code == 2 and "not a fleet journal" in err, err
    assert garbage.read_text() == "not a database at all\n" * 100


def test_a_damaged_journal_is_named_damaged_and_left_untouched(tmp_path: Path) -> None:
    plan, journal = _journal_of_one_run(tmp_path)
    with sqlite3.connect(journal) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(journal.read_bytes())
    for start in range(page, len(data), page):  # every page but the header's: its b-tree gone
        data[start:start + 100] = b"\xff" * 100
    journal.write_bytes(bytes(data))
    (tmp_path / "sim.log").unlink()
    before = _fingerprint(journal)
    for check in (["--check"], []):
        code, doc, err = run_json(plan, journal, *check)
        assert code == 2 and doc["failed"] is True, err
        assert f"journal {journal} cannot be used: database disk image is malformed: the " \
               "file is damaged: keep a copy of it and restore the journal from a backup" in err
        assert "not a fleet journal" not in err and "left untouched" in err, err
        assert _fingerprint(journal) == before
    assert not (tmp_path / "sim.log").exists()  # its simulator never started


def test_a_journal_of_a_schema_this_fleet_does_not_know_is_left_untouched(
        tmp_path: Path) -> None:
    plan, journal = _journal_of_one_run(tmp_path)
    with sqlite3.connect(journal) as conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    conn.close()
    (tmp_path / "sim.log").unlink()
    before = _fingerprint(journal)
    for check in (["--check"], []):
        code, doc, err = run_json(plan, journal, *check)
        assert code == 2 and doc["failed"] is True, err
        assert "has schema '2'" in err and "left untouched" in err, err
        assert _fingerprint(journal) == before
    assert not (tmp_path / "sim.log").exists()  # its simulator never started


def test_plan_check_says_run_would_refuse_a_journal_that_is_not_one(tmp_path: Path) -> None:
    init_station_key(tmp_path / "keys")
    pem = tmp_path / "keys" / "station.pem"
    plan = _plan(tmp_path, extra="journal: keys/station.pem\n")
    before = _fingerprint(pem)
    code, doc, err = _run(plan, cwd=tmp_path)
    assert code == 2 and "not a fleet journal" in err, err
    refusal = doc["error"].removeprefix("fleet run: ")
    assert refusal.startswith(f"{pem} is not a fleet journal (") and "left untouched" in refusal
    result = fleet("plan", "check", plan, cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # the plan is valid; this machine is not ready
    assert f"journal:   {pem}  (NOT USABLE, see below)" in result.stdout.splitlines()
    assert f"  fleet run would stop: {refusal}" in result.stdout.splitlines()
    assert "fleet run would stop here before any device" in result.stdout
    document = json.loads(fleet("plan", "check", "--json", plan, cwd=tmp_path).stdout)
    assert document["ready"] is False and document["journal_problem"] == refusal
    assert _fingerprint(pem) == before
    assert not (tmp_path / "sim.log").exists()  # nothing was sent
    # A journal that does not exist yet is no problem: the run makes it.
    plan.write_text(plan.read_text().replace("journal: keys/station.pem", "journal: j.sqlite"))
    document = json.loads(fleet("plan", "check", "--json", plan, cwd=tmp_path).stdout)
    assert document["ready"] is True and document["journal_problem"] is None
    assert not (tmp_path / "j.sqlite").exists()


def test_check_writes_nothing_to_an_existing_journal(tmp_path: Path) -> None:
    plan, journal = _journal_of_one_run(tmp_path)
    before = _fingerprint(journal)
    assert before[2] == ["j.sqlite"]
    code, doc, err = run_json(plan, journal, "--check")
    assert code == 0, err
    assert doc["changed"] is False
    assert _fingerprint(journal) == before  # no -wal or -shm file either


def test_a_journal_with_two_names_or_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    plan, journal = _journal_of_one_run(tmp_path)
    os.link(journal, tmp_path / "other-name.sqlite")
    for name in ("j.sqlite", "other-name.sqlite"):
        code, doc, err = run_json(plan, tmp_path / name)
        assert code == 2 and doc["failed"] is True, err
        assert "has 2 names (hard links)" in err
    os.mkfifo(tmp_path / "fifo.sqlite")
    code, doc, err = run_json(plan, tmp_path / "fifo.sqlite", "--check", timeout=60)
    assert code == 2 and "not a regular file" in err, err
