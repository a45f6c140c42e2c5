"""The scheduler of `fleet run`: every slot in one anyio task group, isolated from the others.

How this works
--------------
:func:`run_plan` opens the journal (refusing one locked by a live run), starts or resumes the run,
starts the in-process simulator when the plan has ``sim://`` ports, and runs
:func:`fleet.provision.flow.provision_slot` for every slot under a ``CapacityLimiter``
(``--concurrency``, default: all slots at once). A slot's failure, hang (bounded by its command
timeouts and retries) or vanished port never reaches another slot: ``provision_slot`` returns
failures as results, and anything unexpected is caught per slot and reported as that slot's
failure. SIGINT/SIGTERM cancel the slots (a second signal is ignored while the journal and the
manifest are written); their journal writes are shielded, the run is marked interrupted and the
(partial) manifest is still written. A run counts as complete only once its manifest is written,
and a run of only some slots (``--only``) stays open for the others: the next run of the plan
resumes it.
"""

from __future__ import annotations

import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from fleet import __version__, exitcodes
from fleet.errors import ManifestError, PlanError
from fleet.journal import Journal, RunInfo, utc_now
from fleet.plan import Plan, Slot
from fleet.provision.base import not_attempted
from fleet.provision.flow import SlotJob, SlotResult, SlotStatus, provision_slot
from fleet.records import DeviceOutcome, DeviceRecord
from fleet.transport import open_port, raise_fd_limit

__all__ = ["RunOptions", "RunOutcome", "outcome_document", "run_plan"]

log = structlog.get_logger()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run a plan (the `fleet run` options)."""

    check: bool = False
    concurrency: int | None = None
    journal: Path = Path(".fleet/journal.sqlite")
    fresh: bool = False
    partial: bool = False  #: only some slots (--only): the run stays open for the others
    handle_signals: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    """What a run did."""

    run_id: str
    check: bool
    resumed: bool
    interrupted: bool
    results: tuple[SlotResult, ...]
    manifest: Path | None
    manifest_error: str | None
    started_at: str
    ended_at: str

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.results)

    @property
    def failed(self) -> bool:
        return any(r.record.outcome is DeviceOutcome.FAILED for r in self.results)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return exitcodes.INTERRUPTED
        return exitcodes.FAILED if self.failed or self.manifest_error else exitcodes.OK


@contextlib.asynccontextmanager
async def _simulator(plan: Plan) -> AsyncIterator[Callable[[int], Any] | None]:
    """The in-process simulator when the plan has ``sim://`` ports. A simulator that cannot
    start (a bad state file, say) is a plan error: nothing was sent."""
    if not any(slot.port.startswith("sim://") for slot in plan.slots):
        yield None
        return
    from fleet.sim import InProcessSimulator, SimConfig, parse_fault_spec

    settings = plan.simulator
    assert settings is not None, "plan loader provides simulator settings for sim:// ports"
    optional: dict[str, Any] = {}
    if settings.function_mode is not None:
        optional["function_mode"] = settings.function_mode
    if settings.capacity is not None:
        optional["capacity"] = settings.capacity
    async with contextlib.AsyncExitStack() as stack:
        try:
            config = SimConfig(count=settings.count, seed=settings.seed, model=settings.model,
                               profile=settings.profile,
                               faults=tuple(parse_fault_spec(f) for f in settings.faults),
                               state_path=settings.state, log_path=settings.log, **optional)
            sim = await stack.enter_async_context(InProcessSimulator(config))
        except (ValueError, OSError) as exc:
            raise PlanError([f"{plan.path}: simulator: {exc}"]) from exc
        yield sim.connect


async def _watch_signals(slots: anyio.CancelScope, stop: dict[str, bool]) -> None:
    """The first SIGINT/SIGTERM cancels the slots; later ones (an impatient second Ctrl-C) are
    ignored until the journal and the manifest are written."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if stop["interrupted"]:
                log.warning("already stopping: writing the journal and the manifest",
                            signal=signal.Signals(signum).name)
                continue
            log.warning("stopping: journal is kept consistent; re-run to resume",
                        signal=signal.Signals(signum).name)
            stop["interrupted"] = True
            slots.cancel()


def _crash_result(slot: Slot, exc: BaseException) -> SlotResult:
    record = DeviceRecord(slot=slot.name, port=slot.port, imei=None, device_uuid=None,
                          model=None, firmware=None, outcome=DeviceOutcome.FAILED,
                          keys=tuple(not_attempted(k) for k in slot.keys),
                          error=f"internal error: {type(exc).__name__}: {exc}")
    return SlotResult(record=record, changed=False)


async def run_plan(
    plan: Plan,
    options: RunOptions,
    *,
    on_progress: Callable[[SlotStatus], None] = lambda status: None,
    manifest_writer: Callable[[Journal, RunInfo, str, bool], Any] | None = None,
) -> RunOutcome:
    """Run ``plan``. ``manifest_writer(journal, run, ended_at, complete)`` (awaitable) writes
    the manifest of a real run and returns its path; the run counts as complete only once its
    manifest is written (a run whose manifest failed is resumed by the next one)."""
    raise_fd_limit()
    journal = await Journal.open(options.journal, create=not options.check)
    results: dict[str, SlotResult] = {}
    stop = {"interrupted": False}
    manifest: Path | None = None
    manifest_error: str | None = None
    try:
        async with _simulator(plan) as sim_connect:
            if options.check:
                run = RunInfo(run_id=f"check-{uuid.uuid4()}", started_at=utc_now(),
                              resumed=False)
            else:
                run = await journal.start_run(
                    run_id=str(uuid.uuid4()), plan_path=str(plan.path), plan_sha256=plan.sha256,
                    station=plan.station, tool_version=__version__, fresh=options.fresh)
                log.info("run resumed" if run.resumed else "run started", run_id=run.run_id,
                         slots=len(plan.slots))
            limit = options.concurrency or plan.defaults.concurrency or max(1, len(plan.slots))
            limiter = anyio.CapacityLimiter(limit)

            async def run_slot(slot: Slot) -> None:
                async def opener() -> anyio.abc.ByteStream:
                    return await open_port(slot.port, baudrate=slot.settings.baudrate,
                                           rtscts=slot.settings.rtscts, sim=sim_connect)

                job = SlotJob(run_id=run.run_id, station=plan.station, slot=slot,
                              journal=journal, opener=opener, check=options.check,
                              on_progress=on_progress,
                              on_result=lambda result: results.__setitem__(slot.name, result))
                async with limiter:
                    try:
                        await provision_slot(job)
                    except Exception as exc:  # a bug must not take the other slots down
                        log.exception("slot crashed", slot=slot.name)
                        results[slot.name] = _crash_result(slot, exc)

            slots_scope = anyio.CancelScope()
            async with anyio.create_task_group() as outer:
                if options.handle_signals:
                    outer.start_soon(_watch_signals, slots_scope, stop)
                with slots_scope:
                    async with anyio.create_task_group() as slots:
                        for slot in plan.slots:
                            slots.start_soon(run_slot, slot)
                interrupted = stop["interrupted"] or len(results) < len(plan.slots) or any(
                    r.record.outcome is DeviceOutcome.INTERRUPTED for r in results.values())
                ended_at = utc_now()
                with anyio.CancelScope(shield=True):
                    if not options.check:
                        complete = not interrupted and not options.partial
                        if manifest_writer is not None:
                            try:
                                manifest = await manifest_writer(journal, run, ended_at, complete)
                            except ManifestError as exc:
                                manifest_error = str(exc)
                                log.error("manifest not written; the next run writes it",
                                          error=manifest_error)
                        status = "complete" if complete and manifest_error is None \
                            else "interrupted"
                        await journal.finish_run(run.run_id, status=status, ended_at=ended_at)
                outer.cancel_scope.cancel()
            if stop["interrupted"]:
                # The receiver is gone (asyncio put the default handlers back): the run is
                # stopping anyway, so an impatient repeat must not kill it before it reports.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
    finally:
        await journal.aclose()
    ordered = tuple(results[s.name] for s in plan.slots if s.name in results)
    return RunOutcome(run_id=run.run_id, check=options.check, resumed=run.resumed,
                      interrupted=interrupted, results=ordered, manifest=manifest,
                      manifest_error=manifest_error, started_at=run.started_at,
                      ended_at=ended_at)


def outcome_document(plan: Plan, outcome: RunOutcome) -> dict[str, Any]:
    """The one JSON document `fleet run --json` prints (what Ansible reads)."""
    devices = []
    counts: dict[str, int] = {}
    for result in outcome.results:
        record = result.record
        counts[record.outcome.value] = counts.get(record.outcome.value, 0) + 1
        device: dict[str, Any] = {
            "slot": record.slot, "port": record.port, "imei": record.imei,
            "device_uuid": record.device_uuid, "model": record.model,
            "firmware": record.firmware, "outcome": record.outcome.value, "error": record.error,
            "changed": result.changed,
            "keys": [{"name": k.name, "sec_tag": k.sec_tag, "type": k.type,
                      "response": k.response, "outcome": k.outcome.value, "error": k.error,
                      "attempts": k.attempts, "csr_pem": k.csr_pem,
                      "public_key_pem": k.public_key_pem,
                      **{name: k.extra[name] for name in ("certificate", "ca_chain")
                         if name in k.extra}} for k in record.keys],
        }
        if outcome.check:
            device["planned"] = list(result.planned)
        devices.append(device)
    return {
        "changed": outcome.changed,
        "failed": outcome.failed,
        "interrupted": outcome.interrupted,
        "check": outcome.check,
        "run_id": outcome.run_id,
        "resumed": outcome.resumed,
        "station": plan.station,
        "plan": str(plan.path),
        "manifest": str(outcome.manifest) if outcome.manifest else None,
        "manifest_error": outcome.manifest_error,
        "started_at": outcome.started_at,
        "ended_at": outcome.ended_at,
        "summary": {"devices": len(devices), **counts},
        "devices": devices,
    }
