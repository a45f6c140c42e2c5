"""The record builder on its own: what makes a run complete, from the journal's rows."""

from __future__ import annotations

from pathlib import Path

from fleet.journal import RunInfo, RunReport, SlotRow
from fleet.plan import load_plan
from fleet.records import DeviceOutcome
from fleet.report import build_run_record
from tests.runhelpers import write_plan

RUN = RunInfo(run_id="r1", started_at="2026-01-01T00:00:00.000000Z", resumed=True)


def _row(imei: str | None, outcome: DeviceOutcome | None) -> SlotRow:
    return SlotRow(slot="slot0", port="sim://0", imei=imei, outcome=outcome, error=None,
                   device_uuid=None, model=None, firmware=None, changed=False)


def _complete(tmp_path: Path, *rows: SlotRow) -> bool:
    plan = load_plan(write_plan(tmp_path, ports="sim://0", slot_keys="[tls]"))
    record = build_run_record(RunReport(slots=rows, keys=(), certs=()), plan, RUN,
                              ended_at="2026-01-01T00:01:00.000000Z", complete=True)
    assert [d.slot for d in record.devices] == ["slot0"] * len(rows)
    return record.complete


def test_a_slot_whose_latest_board_is_finished_is_settled(tmp_path: Path) -> None:
    assert _complete(tmp_path, _row("352656100367872", DeviceOutcome.DONE))
    assert _complete(tmp_path, _row("352656100367872", DeviceOutcome.FAILED))
    assert not _complete(tmp_path, _row("352656100367872", None))  # its invocation died


def test_a_board_swapped_out_does_not_hold_the_run_open(tmp_path: Path) -> None:
    assert _complete(tmp_path, _row("352656100367872", None),
                     _row("352656100367880", DeviceOutcome.DONE))


def test_an_attempt_that_never_identified_the_board_settles_nothing_earlier(
        tmp_path: Path) -> None:
    """The latest attempt failed before it read the IMEI: the board may be the one an earlier
    invocation left half done, so the run stays open for it."""
    assert not _complete(tmp_path, _row("352656100367872", None),
                         _row(None, DeviceOutcome.FAILED))
    assert _complete(tmp_path, _row("352656100367872", DeviceOutcome.DONE),
                     _row(None, DeviceOutcome.FAILED))
