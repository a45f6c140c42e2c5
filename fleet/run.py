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
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from fleet import __version__, exitcodes
from fleet.at import Interface, Terminator
from fleet.errors import JournalError, ManifestError, PlanError
from fleet.fdio import raise_fd_limit
from fleet.interrupts import Watch
from fleet.journal import Journal, RunInfo, RunReport, utc_now
from fleet.openers import describe, scan
from fleet.plan import Plan, Slot
from fleet.provision.base import ImeiClaims, Progress, SlotJob, SlotResult
from fleet.provision.flow import provision_slot
from fleet.records import DeviceOutcome, DeviceRecord, RunRecord
from fleet.report import build_run_record, check_record, not_attempted, run_document
from fleet.transport import open_port

__all__ = ["RunOptions", "RunOutcome", "SlotStatus", "run_plan"]

log = structlog.get_logger()


@dataclass(slots=True)
class SlotStatus:
    """Live progress of one slot, handed to ``run_plan``'s ``on_progress`` (the progress table
    shows it): the slot's latest step, and its outcome once it has one."""

    slot: str
    port: str
    imei: str = ""
    step: str = "waiting"
    keys_done: int = 0
    keys_total: int = 0
    outcome: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run a plan (the `fleet run` options)."""

    check: bool = False
    concurrency: int | None = None
    journal: Path | None = None  #: None: the plan's (Plan.journal_path)
    fresh: bool = False
    partial: bool = False  #: only some slots (--only): the run stays open for the others
    handle_signals: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOutcome:
    """What a run did: its record (from the journal; for ``--check``, from the slots) and what
    became of its manifest."""

    record: RunRecord
    check: bool
    resumed: bool
    interrupted: bool  #: this invocation stopped before every slot was worked on
    manifest: Path | None
    manifest_error: str | None
    journal_error: str | None = None  #: a journal write failed: the record may lack something
    planned: Mapping[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(d.outcome is DeviceOutcome.FAILED for d in self.record.devices)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return exitcodes.INTERRUPTED
        return exitcodes.FAILED if (self.failed or self.manifest_error
                                    or self.journal_error) else exitcodes.OK

    def document(self) -> dict[str, Any]:
        """The one JSON document `fleet run --json` prints."""
        return run_document(self.record, check=self.check, resumed=self.resumed,
                            interrupted=self.interrupted,
                            manifest=str(self.manifest) if self.manifest else None,
                            manifest_error=self.manifest_error, journal_error=self.journal_error,
                            planned=self.planned)


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
                               state_path=settings.state, log_path=settings.log,
                               interface=Interface(settings.interface),
                               terminator=Terminator(settings.terminator),
                               prompt=settings.prompt, shell_wildcards=settings.shell_wildcards,
                               shell_buffer=settings.shell_buffer,
                               unescape_lf=settings.unescape_lf,
                               at_cmd_mode=settings.at_cmd_mode, **optional)
            sim = await stack.enter_async_context(InProcessSimulator(config))
        except (ValueError, OSError) as exc:
            # the simulator's own OSErrors name their file in strerror
            reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror
                      and exc.filename is None else exc)
            raise PlanError([f"{plan.path}: simulator: {reason}"]) from exc
        yield sim.connect


async def _watch_signals(slots: anyio.CancelScope, stop: dict[str, bool]) -> None:
    """The first SIGINT/SIGTERM (one that came before the run started included: see
    :mod:`fleet.interrupts`) cancels the slots; later ones (an impatient second Ctrl-C) are
    ignored until the journal and the manifest are written."""
    with Watch() as signals:
        while True:
            signum = await signals.next()
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
                          error=f"internal error: {type(exc).__name__}: {exc}", usb=slot.usb)
    return SlotResult(record=record)


async def run_plan(
    plan: Plan,
    options: RunOptions,
    *,
    on_progress: Callable[[SlotStatus], None] = lambda status: None,
    manifest_writer: Callable[[RunRecord], Any] | None = None,
) -> RunOutcome:
    """Run ``plan``. ``manifest_writer(record)`` (awaitable) signs and writes the manifest of a
    real run and returns its path; the run counts as complete only once its manifest is written
    (a run whose manifest failed is resumed by the next one)."""
    raise_fd_limit()
    journal = await Journal.open(options.journal or plan.journal_path, create=not options.check,
                                 station=plan.station, plan=str(plan.path))
    results: dict[str, SlotResult] = {}
    stop = {"interrupted": False}
    claims = ImeiClaims()
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
                    settings = slot.settings
                    return await open_port(slot.port, baudrate=settings.baudrate,
                                           rtscts=settings.rtscts, xonxoff=settings.xonxoff,
                                           dsrdtr=settings.dsrdtr, sim=sim_connect)

                status = SlotStatus(slot=slot.name, port=slot.port, keys_total=len(slot.keys))

                def progressed(progress: Progress) -> None:
                    status.step, status.imei = progress.step, progress.imei
                    status.keys_done = progress.keys_done
                    on_progress(status)

                def finished(result: SlotResult) -> None:
                    results[slot.name] = result
                    status.outcome = result.record.outcome.value
                    on_progress(status)

                job = SlotJob(run_id=run.run_id, station=plan.station, slot=slot,
                              journal=journal, opener=opener, check=options.check,
                              claims=claims, on_progress=progressed, on_result=finished)
                async with limiter:
                    try:
                        await provision_slot(job)
                    except Exception as exc:  # a bug must not take the other slots down
                        log.exception("slot crashed", slot=slot.name)
                        finished(_crash_result(slot, exc))

            slots_scope = anyio.CancelScope()
            async with anyio.create_task_group() as outer:
                if options.handle_signals:
                    outer.start_soon(_watch_signals, slots_scope, stop)
                with slots_scope:
                    async with anyio.create_task_group() as slots:
                        slots.start_soon(_warn_other_openers, plan)
                        for slot in plan.slots:
                            slots.start_soon(run_slot, slot)
                interrupted = stop["interrupted"] or len(results) < len(plan.slots) or any(
                    r.record.outcome is DeviceOutcome.INTERRUPTED for r in results.values())
                with anyio.CancelScope(shield=True):
                    outcome = await _finish(plan, options, journal, run, results, claims,
                                            interrupted=interrupted,
                                            manifest_writer=manifest_writer)
                outer.cancel_scope.cancel()
            if stop["interrupted"]:
                # The watcher is gone: the run is stopping anyway, so an impatient repeat
                # must not kill it before it reports.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
    finally:
        await journal.aclose()
    return outcome


async def _warn_other_openers(plan: Plan) -> None:
    """A warning for each port that other processes hold open (it works, for now, but they may
    take its answers): one scan of ``/proc`` for the whole run, beside the slots, which do not
    wait for it (a slot that fails scans again for its own port, to name them in its error)."""
    found = await anyio.to_thread.run_sync(scan, [slot.port for slot in plan.slots])
    for slot in plan.slots:
        if found[slot.port]:
            log.warning(describe(found[slot.port]) + ": they may take fleet's answers or send "
                        "their own; close them", slot=slot.name, port=slot.port)


async def _finish(plan: Plan, options: RunOptions, journal: Journal, run: RunInfo,
                  results: Mapping[str, SlotResult], claims: ImeiClaims, *, interrupted: bool,
                  manifest_writer: Callable[[RunRecord], Any] | None) -> RunOutcome:
    """The run's record, its manifest and the run's status in the journal. Never raises for a
    journal that fails now (a full disk): the outcome says so.

    Only what the journal holds is signed: when a journal write failed, or the journal cannot
    be read back, no manifest is written (the next run resumes and writes it) and the document
    reports the slots the journal lacks from what they saw."""
    ended_at = utc_now()
    planned = {name: result.planned for name, result in results.items()}
    seen = {name: _with_clash(result.record, claims) for name, result in results.items()}
    if options.check:
        return RunOutcome(record=check_record(plan, run, seen, ended_at=ended_at), check=True,
                          resumed=False, interrupted=interrupted, manifest=None,
                          manifest_error=None, planned=planned)
    journal_error = journal.write_error or next(
        (r.journal_error for r in results.values() if r.journal_error), None)
    try:
        await _fail_clashing_slots(plan, journal, run, claims)
    except JournalError as exc:
        journal_error = journal_error or str(exc)
    try:
        report = await journal.run_report(run.run_id, steps_before=run.steps_before)
    except JournalError as exc:
        journal_error = journal_error or str(exc)
        report = RunReport(slots=(), keys=(), certs=())
    manifest: Path | None = None
    manifest_error: str | None = None
    try:
        record = build_run_record(
            report, plan, run, ended_at=ended_at,
            complete=not interrupted and not options.partial and journal_error is None,
            unrecorded=seen if journal_error else None)
        if journal_error is not None:
            manifest_error = (f"not written: the journal could not record everything "
                              f"({journal_error}); the next run resumes and writes it")
        elif manifest_writer is not None:
            manifest = await manifest_writer(record)
    except ManifestError as exc:
        manifest_error = str(exc)
    except Exception as exc:  # a bug: the run still reports, from what the slots saw
        log.exception("the run's record could not be built")
        record = check_record(plan, run, seen, ended_at=ended_at)
        manifest_error = f"not written: internal error: {type(exc).__name__}: {exc}"
    if manifest_error is not None:
        log.error("manifest not written; the journal keeps the run, and the next run writes "
                  "it once the cause is fixed", error=manifest_error)
    status = "complete" if record.complete and manifest_error is None else "interrupted"
    try:
        await journal.finish_run(run.run_id, status=status, ended_at=ended_at)
    except JournalError as exc:
        journal_error = journal_error or str(exc)
    if journal_error is not None:
        log.error("the journal could not record everything; the next run resumes from what "
                  "it holds", error=journal_error)
    return RunOutcome(record=record, check=False, resumed=run.resumed, interrupted=interrupted,
                      manifest=manifest, manifest_error=manifest_error,
                      journal_error=journal_error)


def _with_clash(record: DeviceRecord, claims: ImeiClaims) -> DeviceRecord:
    """A slot whose IMEI another slot's board reported too has failed, whenever it ended."""
    if record.imei is None or record.imei not in claims.clashes:
        return record
    return replace(record, outcome=DeviceOutcome.FAILED, error=claims.reason(record.imei),
                   device_uuid=None)


async def _fail_clashing_slots(plan: Plan, journal: Journal, run: RunInfo,
                               claims: ImeiClaims) -> None:
    """Two boards reported one IMEI: every slot concerned fails, saying so (a slot that
    finished before the other board was identified is failed now)."""
    slots = {slot.name: slot for slot in plan.slots}
    for imei, names in claims.clashes.items():
        for name in sorted(names):
            await journal.slot_result(run_id=run.run_id, slot=name, port=slots[name].port,
                                      imei=imei, outcome=DeviceOutcome.FAILED.value,
                                      error=claims.reason(imei), usb=slots[name].usb)
