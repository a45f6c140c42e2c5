"""The journal: durable intents and outcomes, key state, group commit, locking, per-run results."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from fleet.errors import JournalError
from fleet.journal import Journal, KeyResult
from fleet.records import DeviceOutcome, KeyOutcome

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _run(journal: Journal, fresh: bool = False, sha: str = "abc") -> str:
    info = await journal.start_run(run_id=f"r-{anyio.current_time()}", plan_path="p.yaml",
                                   plan_sha256=sha, station="st", tool_version="t", fresh=fresh)
    return info.run_id


def _tls_result(run: str, slot: str, outcome: str, *, sec_tag: int,
                error: str | None = None) -> KeyResult:
    return KeyResult(run_id=run, slot=slot, imei="1", key_name="tls", sec_tag=sec_tag,
                     key_type=2, outcome=KeyOutcome(outcome), error=error, attempts=1)


async def test_pragmas_and_schema(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    await journal.aclose()
    conn = sqlite3.connect(tmp_path / "j.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "devices", "keys", "steps", "run_devices", "run_keys"} <= tables


async def test_keygen_intent_then_outcome(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    step = await journal.intent(run_id=run, slot="s0", imei="1", action="keygen", key_name="tls",
                                sec_tag=5, key_type=2, detail={"present_before": False})
    state = await journal.key_state("1", 5, 2)
    assert state.pending is not None
    assert state.pending.step_id == step
    assert state.pending.present_before is False
    assert state.answer is None
    await journal.outcome(step, outcome="unknown", error="timeout")
    assert (await journal.key_state("1", 5, 2)).pending is not None
    step2 = await journal.intent(run_id=run, slot="s0", imei="1", action="keygen",
                                 key_name="tls", sec_tag=5, key_type=2, attempt=2,
                                 detail={"present_before": False})
    await journal.outcome(step2, outcome="ok", answer="a.b")
    state = await journal.key_state("1", 5, 2)
    assert (state.state, state.answer, state.pending) == ("captured", "a.b", None)
    await journal.aclose()


async def test_error_outcome_resolves_pending_and_delete_clears(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    step = await journal.intent(run_id=run, slot="s0", imei="1", action="keygen", sec_tag=5,
                                key_type=2, detail={"present_before": False})
    await journal.outcome(step, outcome="error", error="+CME ERROR: 519")
    assert (await journal.key_state("1", 5, 2)).pending is None
    step = await journal.intent(run_id=run, slot="s0", imei="1", action="keygen", sec_tag=5,
                                key_type=2, detail={"present_before": False})
    await journal.outcome(step, outcome="ok", answer="x.y")
    step = await journal.intent(run_id=run, slot="s0", imei="1", action="delete", sec_tag=5,
                                key_type=2)
    await journal.outcome(step, outcome="ok")
    state = await journal.key_state("1", 5, 2)
    assert (state.state, state.answer) == ("deleted", None)
    with pytest.raises(ValueError):
        await journal.outcome(step, outcome="maybe")
    await journal.aclose()


async def test_pre_existing_never_overrides_captured(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    await journal.mark_pre_existing(imei="1", sec_tag=9, key_type=2, cmng_sha=None)
    assert (await journal.key_state("1", 9, 2)).state == "pre-existing"
    step = await journal.intent(run_id=run, slot="s0", imei="2", action="keygen", sec_tag=9,
                                key_type=2, detail={"present_before": False})
    await journal.outcome(step, outcome="ok", answer="c.d")
    await journal.mark_pre_existing(imei="2", sec_tag=9, key_type=2, cmng_sha=None)
    assert (await journal.key_state("2", 9, 2)).state == "captured"
    await journal.aclose()


async def test_group_commit_many_concurrent_writers(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)

    async def writer(i: int) -> None:
        for k in range(5):
            step = await journal.intent(run_id=run, slot=f"s{i}", imei=str(i), action="keygen",
                                        sec_tag=k + 1, key_type=2,
                                        detail={"present_before": False})
            await journal.outcome(step, outcome="ok", answer=f"{i}.{k}")

    async with anyio.create_task_group() as tg:
        for i in range(64):
            tg.start_soon(writer, i)
    assert journal.commits < 64 * 5 * 2  # batched
    for i in (0, 31, 63):
        assert (await journal.key_state(str(i), 5, 2)).answer == f"{i}.4"
    await journal.aclose()


async def test_a_failing_operation_in_a_batch_leaves_nothing_and_the_others_commit(
        tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    errors: list[BaseException] = []

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE devices SET model = 'half-written' WHERE imei = '1'")
        raise ValueError("boom")

    async def failing() -> None:
        try:
            await journal._execute(half_then_fail)
        except JournalError as exc:
            errors.append(exc)

    await journal.device_seen(imei="1", model="nRF9160", firmware="fw", device_uuid=None)
    commits = journal.commits
    async with anyio.create_task_group() as tg:  # all queued in one turn: one batch
        tg.start_soon(partial(journal.device_seen, imei="0", model="nRF9160", firmware="fw",
                              device_uuid=None))
        tg.start_soon(failing)
        tg.start_soon(partial(journal.device_seen, imei="2", model="nRF9160", firmware="fw",
                              device_uuid=None))
    assert journal.commits == commits + 1
    assert len(errors) == 1 and "boom" in str(errors[0])
    assert await journal.model_of("1") == "nRF9160"  # the failed operation's write is gone
    assert await journal.model_of("0") == await journal.model_of("2") == "nRF9160"
    await journal.aclose()


async def test_resume_and_fresh(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    first = await _run(journal)
    again = await journal.start_run(run_id="other", plan_path="p", plan_sha256="abc",
                                    station="st", tool_version="t", fresh=False)
    assert again.resumed and again.run_id == first
    fresh = await journal.start_run(run_id="new", plan_path="p", plan_sha256="abc",
                                    station="st", tool_version="t", fresh=True)
    assert not fresh.resumed and fresh.run_id == "new"
    await journal.finish_run("new", status="complete")
    await journal.finish_run(first, status="complete")
    done = await journal.start_run(run_id="third", plan_path="p", plan_sha256="abc",
                                   station="st", tool_version="t", fresh=False)
    assert done.run_id == "third" and not done.resumed
    await journal.aclose()


async def test_sticky_outcomes_within_a_run(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    kept = await journal.key_result(_tls_result(run, "s", "generated", sec_tag=1))
    assert kept == "generated"
    kept = await journal.key_result(_tls_result(run, "s", "unchanged", sec_tag=1))
    assert kept == "generated"
    keys = (await journal.run_report(run)).keys
    assert keys[0].outcome is KeyOutcome.GENERATED and keys[0].attempts == 2
    await journal.aclose()


async def test_locked_by_a_live_run_is_refused_and_a_dead_ones_lock_is_taken(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    journal = await Journal.open(path)
    with pytest.raises(JournalError, match="in use by another fleet run"):
        await Journal.open(path)
    await journal.aclose()
    # A process that dies holding the journal (SIGKILL) leaves no lock behind.
    code = ("import os, signal; from fleet.journal import Journal; "
            f"Journal.open_sync({str(path)!r}); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    assert proc.returncode == -9
    journal = await Journal.open(path)
    await journal.aclose()


async def test_restore_mode_is_remembered_once(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    await journal.device_seen(imei="1", model="m", firmware="f", device_uuid=None)
    await journal.set_restore_mode("1", 1)
    await journal.set_restore_mode("1", 4)  # a later change keeps the first original mode
    assert (await journal.device_info("1")).restore_mode == 1
    await journal.set_restore_mode("1", None)
    assert (await journal.device_info("1")).restore_mode is None
    await journal.aclose()


async def test_a_dead_runs_open_intents_become_unknown_and_keep_absent_before(
    tmp_path: Path,
) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    first = await journal.intent(run_id=run, slot="s", imei="1", action="keygen", sec_tag=33,
                                 key_type=8, detail={"present_before": False})
    await journal.aclose()  # the process "dies" with the intent open
    journal = await Journal.open(tmp_path / "j.sqlite")
    again = await _run(journal)
    assert again == run  # resumed
    state = await journal.key_state("1", 33, 8)
    assert state.pending is not None and state.pending.step_id == first
    # The next attempt finds the key present, yet it was absent before fleet's first %KEYGEN.
    await journal.intent(run_id=run, slot="s", imei="1", action="keygen", sec_tag=33,
                         key_type=8, detail={"present_before": True})
    state = await journal.key_state("1", 33, 8)
    assert state.pending is not None and state.pending.present_before is False
    await journal.aclose()
    with sqlite3.connect(tmp_path / "j.sqlite") as conn:
        outcome, error = conn.execute("SELECT outcome, error FROM steps WHERE id = ?",
                                      (first,)).fetchone()
    assert outcome == "unknown" and "died" in error


async def test_a_journal_from_before_the_derived_columns_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema', '1')")  # every fleet journal has it
        conn.execute("CREATE TABLE keys (imei TEXT NOT NULL, sec_tag INTEGER NOT NULL, "
                     "type INTEGER NOT NULL, state TEXT NOT NULL, answer TEXT, cmng_sha TEXT, "
                     "run_id TEXT, updated_at TEXT NOT NULL, pending_step INTEGER, "
                     "pending_present_before INTEGER, PRIMARY KEY (imei, sec_tag, type))")
        conn.execute("INSERT INTO keys VALUES ('1', 5, 2, 'captured', 'a.b', NULL, 'r', 't', "
                     "NULL, NULL)")
    journal = await Journal.open(path)
    state = await journal.key_state("1", 5, 2)
    assert (state.state, state.answer, state.public_key_pem) == ("captured", "a.b", None)
    run = await _run(journal)
    step = await journal.intent(run_id=run, slot="s", imei="1", action="keygen", sec_tag=6,
                                key_type=8, detail={"present_before": False})
    await journal.outcome(step, outcome="ok", answer="c.d", derived={
        "csr_pem": None, "public_key_pem": "PEM", "cose_payload": {"sec_tag": 6}})
    state = await journal.key_state("1", 6, 8)
    assert (state.public_key_pem, state.cose_payload) == ("PEM", {"sec_tag": 6})
    await journal.aclose()


async def test_a_refused_keygen_makes_the_one_it_superseded_pending_again(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    lost = await journal.intent(run_id=run, slot="s", imei="1", action="keygen", sec_tag=5,
                                key_type=2, detail={"present_before": False})
    await journal.outcome(lost, outcome="unknown", error="timeout")  # the key may exist now
    refused = await journal.intent(run_id=run, slot="s", imei="1", action="keygen", sec_tag=5,
                                   key_type=2, attempt=2, detail={"present_before": False})
    await journal.outcome(refused, outcome="error", error="+CME ERROR: 519")
    state = await journal.key_state("1", 5, 2)
    assert state.pending is not None
    assert (state.pending.step_id, state.pending.present_before) == (lost, False)
    await journal.aclose()


async def test_a_keygen_for_an_absent_key_forgets_the_old_captured_answer(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    first = await journal.intent(run_id=run, slot="s", imei="1", action="keygen", sec_tag=5,
                                 key_type=2, detail={"present_before": False})
    await journal.outcome(first, outcome="ok", answer="old.cose",
                          derived={"csr_pem": "C", "public_key_pem": "P", "cose_payload": {}})
    # The key vanished from the device; a new %KEYGEN is sent and its answer lost.
    second = await journal.intent(run_id=run, slot="s", imei="1", action="keygen", sec_tag=5,
                                  key_type=2, attempt=1, detail={"present_before": False})
    await journal.outcome(second, outcome="unknown", error="connection lost")
    state = await journal.key_state("1", 5, 2)
    assert state.answer is None and state.public_key_pem is None
    assert state.pending is not None and state.pending.step_id == second
    await journal.aclose()


async def test_run_report_keeps_every_device_of_a_slot_and_earlier_outcomes(
    tmp_path: Path,
) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    await journal.slot_result(run_id=run, slot="s0", port="p", imei=None, outcome="failed",
                              error="no answer")
    await journal.slot_result(run_id=run, slot="s0", port="p", imei="1", outcome="interrupted",
                              error="interrupted")
    await journal.key_result(_tls_result(run, "s0", "generated", sec_tag=5))
    # Resumed with another board in the slot; the first board's key then failed to re-check.
    await journal.slot_result(run_id=run, slot="s0", port="p", imei="2", outcome="done",
                              error=None)
    kept = await journal.key_result(_tls_result(run, "s0", "failed", sec_tag=5, error="boom"))
    assert kept == "generated"
    report = await journal.run_report(run)
    assert [(s.slot, s.imei, s.outcome) for s in report.slots] == [
        ("s0", "1", DeviceOutcome.INTERRUPTED), ("s0", "2", DeviceOutcome.DONE)]
    assert report.keys[0].outcome is KeyOutcome.GENERATED and report.keys[0].error == "boom"
    await journal.aclose()


async def test_a_capture_and_its_run_result_in_one_transaction(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    step = await journal.intent(run_id=run, slot="s0", imei="1", action="keygen", key_name="tls",
                                sec_tag=5, key_type=2, detail={"present_before": False})
    result = KeyResult(run_id=run, slot="s0", imei="1", key_name="tls", sec_tag=5, key_type=2,
                       outcome=KeyOutcome.GENERATED, error=None, attempts=2)
    commits = journal.commits
    await journal.outcome(step, outcome="ok", answer="a.b", result=result)
    assert journal.commits == commits + 1
    assert (await journal.key_state("1", 5, 2)).answer == "a.b"
    keys = (await journal.run_report(run)).keys
    assert [(k.key_name, k.outcome, k.attempts, k.answer) for k in keys] == [
        ("tls", KeyOutcome.GENERATED, 2, "a.b")]
    # A step that does not exist fails the whole operation: no result is left behind either.
    other = KeyResult(run_id=run, slot="s0", imei="1", key_name="other", sec_tag=6, key_type=2,
                      outcome=KeyOutcome.GENERATED, error=None, attempts=1)
    with pytest.raises(JournalError, match="no step"):
        await journal.outcome(step + 100, outcome="ok", answer="x", result=other)
    keys = (await journal.run_report(run)).keys
    assert [k.key_name for k in keys] == ["tls"]
    await journal.aclose()


async def test_a_first_capture_claims_the_device_uuid_or_is_refused(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    for imei in ("1", "2"):
        await journal.device_seen(imei=imei, model="m", firmware="f", device_uuid=None)
    await journal.claim_device_uuid("1", "uuid-a")
    step = await journal.intent(run_id=run, slot="s1", imei="2", action="keygen",
                                key_name="tls", sec_tag=5, key_type=2,
                                detail={"present_before": False})
    # The UUID is IMEI 1's: nothing is captured, the %KEYGEN stays unresolved.
    assert await journal.outcome(step, outcome="ok", answer="a.b",
                                 device_uuid="uuid-a") == "1"
    state = await journal.key_state("2", 5, 2)
    assert state.answer is None and state.pending is not None
    assert (await journal.device_info("2")).device_uuid is None
    again = await journal.intent(run_id=run, slot="s1", imei="2", action="keygen",
                                 key_name="tls", sec_tag=5, key_type=2,
                                 detail={"present_before": False})
    assert await journal.outcome(again, outcome="ok", answer="c.d",
                                 device_uuid="uuid-b") is None
    assert (await journal.key_state("2", 5, 2)).answer == "c.d"
    assert (await journal.device_info("2")).device_uuid == "uuid-b"
    await journal.aclose()


async def test_run_report_says_what_may_have_changed(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    first = await journal.start_run(run_id="r1", plan_path="p", plan_sha256="abc",
                                    station="st", tool_version="t", fresh=False)
    await journal.device_seen(imei="1", model="m", firmware="f", device_uuid=None)
    refused = await journal.intent(run_id="r1", slot="s0", imei="1", action="cfun")
    await journal.outcome(refused, outcome="error", error="+CME ERROR: 518")
    await journal.slot_result(run_id="r1", slot="s0", port="p", imei="1", outcome="failed",
                              error="x")
    report = await journal.run_report("r1", steps_before=first.steps_before)
    assert [s.changed for s in report.slots] == [False]  # the modem refused the only write
    delete = await journal.intent(run_id="r1", slot="s0", imei="1", action="delete",
                                  key_name="tls", sec_tag=5, key_type=2)
    await journal.outcome(delete, outcome="ok")
    keygen = await journal.intent(run_id="r1", slot="s0", imei="1", action="keygen",
                                  key_name="tls", sec_tag=5, key_type=2,
                                  detail={"present_before": False})
    await journal.outcome(keygen, outcome="unknown", error="interrupted")
    await journal.key_result(_tls_result("r1", "s0", "not-attempted", sec_tag=5))
    report = await journal.run_report("r1", steps_before=first.steps_before)
    assert [s.changed for s in report.slots] == [True]
    assert [(k.deleted, k.write_unresolved) for k in report.keys] == [(True, True)]
    # A delete whose answer was lost may have taken effect: deleted, and unresolved.
    lost = await journal.intent(run_id="r1", slot="s0", imei="1", action="delete",
                                key_name="other", sec_tag=6, key_type=2)
    await journal.outcome(lost, outcome="unknown", error="connection lost")
    await journal.key_result(KeyResult(run_id="r1", slot="s0", imei="1", key_name="other",
                                       sec_tag=6, key_type=2, outcome=KeyOutcome.NOT_ATTEMPTED,
                                       error=None, attempts=1))
    report = await journal.run_report("r1", steps_before=first.steps_before)
    assert {k.key_name: (k.deleted, k.write_unresolved) for k in report.keys} == {
        "tls": (True, True), "other": (True, True)}
    # The next invocation changed nothing itself.
    await journal.finish_run("r1", status="interrupted")
    second = await journal.start_run(run_id="r2", plan_path="p", plan_sha256="abc",
                                     station="st", tool_version="t", fresh=False)
    assert second.run_id == "r1"
    report = await journal.run_report("r1", steps_before=second.steps_before)
    assert [s.changed for s in report.slots] == [False]
    await journal.aclose()


async def test_claim_device_uuid(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    for imei in ("1", "2"):
        await journal.device_seen(imei=imei, model="m", firmware="f", device_uuid=None)
    assert await journal.claim_device_uuid("1", "uuid-a") is None
    assert (await journal.device_info("1")).device_uuid == "uuid-a"
    assert await journal.claim_device_uuid("1", "uuid-a") is None  # again: still its own
    assert await journal.claim_device_uuid("2", "uuid-a") == "1"  # another IMEI has it
    assert (await journal.device_info("2")).device_uuid is None
    await journal.aclose()


async def test_calls_racing_a_close_get_a_journal_error_not_a_closed_connection(
        tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite")
    run = await _run(journal)
    outcomes: list[str] = []

    async def writer(i: int) -> None:
        for k in range(20):
            try:
                await journal.intent(run_id=run, slot=f"s{i}", imei=str(i), action="cfun",
                                     attempt=k + 1)
            except JournalError as exc:
                assert "is closed" in str(exc)
                outcomes.append("closed")
                return
            outcomes.append("ok")
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(writer, i)
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        await journal.aclose()
    assert "closed" in outcomes and "ok" in outcomes
    with pytest.raises(JournalError, match="is closed"):
        await journal.key_state("1", 5, 2)
    # What was committed before the close is all there.
    conn = sqlite3.connect(tmp_path / "j.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == outcomes.count("ok")


async def test_a_journal_from_before_it_recorded_its_station_is_taken_over_by_its_station(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    journal = await Journal.open(path)  # no station: as journals were made before
    await _run(journal)  # a run of station "st"
    await journal.aclose()
    with pytest.raises(JournalError, match="belongs to station 'st', not to this plan's station"):
        await Journal.open(path, station="other")
    journal = await Journal.open(path, station="st")
    await journal.aclose()
    with sqlite3.connect(path) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["station"] == "st" and meta["schema"] == "1"
    with pytest.raises(JournalError, match="belongs to station 'st'"):
        await Journal.open(path, station="other", create=False)
