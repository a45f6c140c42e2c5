"""The per-device provisioning flow: identify, inspect, decide, act, verify, record, restore.

How this works
--------------
:func:`provision_slot` drives one :class:`fleet.device.DeviceSession` through:

1. open the port, identify (IMEI read twice, model, firmware); ``AT+CMEE=1`` and
   ``AT+CFUN?`` only once a write is needed (a re-run with nothing to do sends neither);
2. per key, in plan order, up to ``retries + 1`` attempts (tenacity; backoff from
   :func:`fleet.device.backoff`): recover the session if the last attempt left it dirty,
   inspect with ``AT%CMNG=1,<tag>,<type>``, ask :mod:`fleet.provision.decide`, and act - every
   write (``+CFUN=4``, ``%CMNG=3``, ``%KEYGEN``) bracketed by a journal intent and outcome;
3. verify each %KEYGEN answer (all the checks of :mod:`fleet.credentials`, the requested
   sec_tag, subject and key usage, and one device UUID for every key of the device) before it is
   journaled as captured;
4. restore the function mode read at the start (or the one an interrupted run left in the
   journal) when ``restore_function_mode``.

A %KEYGEN for a client key is never re-sent blindly: every retry starts again from inspection, so
a key made by a %KEYGEN whose answer was lost is found and handled by the "recovered" rule.
``check`` mode stops after the decision and sends only read-only commands.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
import tenacity

from fleet.at import Command
from fleet.credentials import (
    DEFAULT_KEY_USAGE,
    Expectation,
    KeygenAnswer,
    attributes_subject,
    default_subject,
    parse_attest_token,
    parse_cmng_list,
    parse_keygen,
    verify_keygen,
)
from fleet.device import DeviceSession, DeviceSwapped, Opener, backoff
from fleet.errors import (
    CmeCode,
    CmeError,
    CommandError,
    CredentialError,
    DeviceTimeout,
    FleetError,
    PortBusy,
    RemoteProtocolError,
    TransportError,
)
from fleet.journal import Journal, KeyState
from fleet.plan import KeySpec, KeyType, Response, Slot
from fleet.provision.certs import certify_key
from fleet.provision.decide import (
    Action,
    Decision,
    decide_client_key,
    decide_endorsement_key,
    endorsement_outcome,
)
from fleet.records import DeviceOutcome, DeviceRecord, KeyOutcome, KeyRecord

__all__ = ["SlotJob", "SlotResult", "SlotStatus", "provision_slot"]

_ACTIVE_MODES = frozenset({1, 2, 21})


class _Transient(FleetError):
    """This attempt failed in a way worth another attempt (after inspecting again)."""


class _DeviceLost(FleetError):
    """The device cannot be worked on any more in this run (port gone, board swapped)."""


_RETRYABLE = (_Transient, DeviceTimeout, TransportError, RemoteProtocolError, CredentialError)


@dataclass(slots=True)
class SlotStatus:
    """Live progress of one slot (read by the progress table)."""

    slot: str
    port: str
    imei: str = ""
    step: str = "waiting"
    keys_done: int = 0
    keys_total: int = 0
    outcome: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotJob:
    """Everything one slot's provisioning needs."""

    run_id: str
    station: str
    slot: Slot
    journal: Journal
    opener: Opener
    check: bool = False
    on_progress: Callable[[SlotStatus], None] = lambda status: None


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotResult:
    record: DeviceRecord
    changed: bool
    planned: tuple[dict[str, Any], ...] = ()  #: check mode: what a real run would do per key


@dataclass(slots=True)
class _Device:
    """Mutable state of the device being provisioned."""

    imei: str = ""
    model: str | None = None
    firmware: str | None = None
    device_uuid: str | None = None
    mode_before: int | None = None
    mode: int | None = None
    restore_target: int | None = None
    changed: bool = False
    keys: list[KeyRecord] = field(default_factory=list)
    planned: list[dict[str, Any]] = field(default_factory=list)


class _Flow:
    def __init__(self, job: SlotJob) -> None:
        self.job = job
        self.slot = job.slot
        self.settings = job.slot.settings
        self.status = SlotStatus(slot=job.slot.name, port=job.slot.port,
                                 keys_total=len(job.slot.keys))
        self.log = structlog.get_logger().bind(slot=job.slot.name, port=job.slot.port)
        self.session = DeviceSession(job.opener, port=job.slot.port, readonly=job.check,
                                     log=self.log)
        self.dev = _Device()
        self.key_states: dict[tuple[int, int], KeyState] = {}

    def step(self, text: str) -> None:
        self.status.step = text
        self.job.on_progress(self.status)

    # --- journaled writes ------------------------------------------------------------------

    async def _write(self, command: Command, *, action: str, timeout: float,
                     key: KeySpec | None = None, attempt: int = 1,
                     detail: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Send a write with an intent before and an outcome after. Returns (step id, answer)."""
        await self.session.enable_cme_codes(timeout=self.settings.timeout_s)
        journal = self.job.journal
        step_id = await journal.intent(
            run_id=self.job.run_id, slot=self.slot.name, imei=self.dev.imei, action=action,
            key_name=key.name if key else None, sec_tag=key.sec_tag if key else None,
            key_type=key.type.code if key else None, attempt=attempt, command=str(command),
            detail=detail)
        try:
            answer = await self.session.command(command, timeout=timeout)
        except CommandError as exc:
            await journal.outcome(step_id, outcome="error", error=str(exc))
            raise
        except (DeviceTimeout, TransportError, RemoteProtocolError) as exc:
            await journal.outcome(step_id, outcome="unknown", error=str(exc))
            raise
        except BaseException:
            await journal.outcome(step_id, outcome="unknown", error="interrupted")
            raise
        if action != "keygen":
            await journal.outcome(step_id, outcome="ok")
        return step_id, answer

    async def ensure_offline(self, *, force: bool = False) -> None:
        """``AT+CFUN=4`` when the modem is active (writes are refused with 518 otherwise).

        The mode is read when first needed; before fleet changes it, it is read once more and
        both reads must agree: the mode read here is what the device is restored to, so a
        garbled digit must not become the mode a device is left in. ``force`` (after a 518)
        changes it whatever was read before.
        """
        timeout = self.settings.timeout_s
        if self.dev.mode is None:
            self.dev.mode = await self.session.read_function_mode(timeout=timeout)
        if not force and self.dev.mode not in _ACTIVE_MODES:
            return
        confirmed = await self.session.read_function_mode(timeout=timeout)
        if not force and confirmed != self.dev.mode:
            raise RemoteProtocolError(f"AT+CFUN? answered {self.dev.mode}, then {confirmed}")
        self.dev.mode = confirmed
        first_change = self.dev.restore_target is None
        if first_change:
            self.dev.mode_before = confirmed
        target = confirmed if first_change else self.dev.restore_target
        assert target is not None
        await self.job.journal.set_restore_mode(self.dev.imei, target)
        self.dev.restore_target = target
        self.step("offline (CFUN=4)")
        await self._write(Command.set("+CFUN", 4), action="cfun", timeout=timeout,
                          detail={"from": confirmed, "to": 4})
        self.dev.mode = 4
        self.dev.changed = True

    async def restore_mode(self) -> None:
        target = self.dev.restore_target
        if target is None or not self.settings.restore_function_mode or self.job.check:
            return
        if self.dev.mode is None:
            self.dev.mode = await self.session.read_function_mode(
                timeout=self.settings.timeout_s)
        if self.dev.mode != target:
            self.step(f"restore CFUN={target}")
            await self._write(Command.set("+CFUN", target), action="cfun",
                              timeout=self.settings.timeout_s,
                              detail={"from": self.dev.mode, "to": target, "restore": True})
            self.dev.mode = target
            self.dev.changed = True
        await self.job.journal.set_restore_mode(self.dev.imei, None)

    # --- device ------------------------------------------------------------------------------

    async def open_and_identify(self) -> None:
        timeout = self.settings.timeout_s
        self.step("opening")
        for attempt in range(1, self.settings.retries + 2):
            try:
                await self.session.open()
                break
            except PortBusy:
                raise
            except TransportError:
                if attempt > self.settings.retries:
                    raise
                await anyio.sleep(backoff(attempt + 1))
        self.step("identify")
        for attempt in range(1, self.settings.retries + 2):
            try:
                if attempt > 1:
                    await self.session.recover(timeout=timeout)
                identity = await self.session.identify(timeout=timeout,
                                                       known_model=self.job.journal.model_of)
                break
            except PortBusy:
                raise
            except (DeviceTimeout, TransportError, RemoteProtocolError) as exc:
                if attempt > self.settings.retries:
                    raise
                self.log.info("identify failed; reopening", attempt=attempt, error=str(exc))
        self.dev.imei, self.dev.model, self.dev.firmware = (identity.imei, identity.model,
                                                            identity.firmware)
        self.status.imei = identity.imei
        self.log = self.log.bind(imei=identity.imei)
        self.session.log = self.log
        if self.job.check:
            info = await self.job.journal.device_info(identity.imei)
        else:
            info = await self.job.journal.device_seen(imei=identity.imei, model=identity.model,
                                                      firmware=identity.firmware,
                                                      device_uuid=None)
        self.dev.device_uuid = info.device_uuid
        self.dev.restore_target = info.restore_mode
        self.key_states = dict(info.keys)
        if (self.dev.device_uuid is None and not self.job.check
                and any(k.uses_device_uuid for k in self.slot.keys)):
            await self._read_device_uuid()

    async def _read_device_uuid(self) -> None:
        try:
            answer = await self.session.command(Command.action("%ATTESTTOKEN"),
                                                timeout=self.settings.timeout_s)
            token = parse_attest_token(answer.first("%ATTESTTOKEN:"))
        except (CommandError, CredentialError, RemoteProtocolError) as exc:
            self.log.warning("device UUID not readable with %ATTESTTOKEN", error=str(exc))
            return
        await self._adopt_device_uuid(str(token.device_uuid))

    async def _adopt_device_uuid(self, device_uuid: str) -> None:
        if self.dev.device_uuid is None:
            owner = await self.job.journal.imei_of_device_uuid(device_uuid)
            if owner is not None and owner != self.dev.imei:
                raise _DeviceLost(
                    f"this modem's device UUID {device_uuid} belongs to IMEI {owner} in the "
                    f"journal, but it reported IMEI {self.dev.imei}: stopping this slot")
            self.dev.device_uuid = device_uuid
            if not self.job.check:
                await self.job.journal.set_device_uuid(self.dev.imei, device_uuid)
        elif self.dev.device_uuid != device_uuid:
            raise CredentialError(
                f"device UUID {device_uuid} in this answer differs from this device's "
                f"{self.dev.device_uuid} (IMEI {self.dev.imei})")

    # --- keys ----------------------------------------------------------------------------------

    async def inspect(self, key: KeySpec) -> tuple[bool, str | None]:
        answer = await self.session.command(
            Command.set("%CMNG", 1, key.sec_tag, key.type.code), timeout=self.settings.timeout_s)
        entries = [e for e in parse_cmng_list(answer.lines)
                   if e.sec_tag == key.sec_tag and e.type == key.type.code]
        return bool(entries), entries[0].sha256 if entries else None

    def template_context(self) -> dict[str, str]:
        return {"imei": self.dev.imei, "slot": self.slot.name, "station": self.job.station,
                "device_uuid": self.dev.device_uuid or ""}

    async def provision_key(self, key: KeySpec) -> KeyRecord:
        attempts = 0
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.settings.retries + 1),
            wait=lambda state: backoff(state.attempt_number + 1),
            retry=tenacity.retry_if_exception_type(_RETRYABLE),
            sleep=anyio.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if not self.session.is_open or self.session.needs_recover:
                        await self._recover()
                    return await self.key_attempt(key, attempts)
        except _RETRYABLE as exc:
            return self._failed(key, f"gave up after {attempts} attempt(s): {exc}", attempts)
        except (CmeError, CommandError) as exc:
            return self._failed(key, _explain(exc), attempts)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _recover(self) -> None:
        self.step("reopening")
        try:
            await self.session.recover(timeout=self.settings.timeout_s)
        except (TransportError, DeviceSwapped) as exc:
            raise _DeviceLost(str(exc)) from exc
        # A reboot puts the modem back to CFUN 0: read the mode again when it matters.
        self.dev.mode = None

    def _failed(self, key: KeySpec, reason: str, attempts: int) -> KeyRecord:
        self.log.warning("key failed", key=key.name, sec_tag=key.sec_tag, error=reason)
        return KeyRecord(name=key.name, sec_tag=key.sec_tag, type=key.type.value,
                         response=key.response.value, outcome=KeyOutcome.FAILED, error=reason,
                         attempts=attempts)

    async def key_attempt(self, key: KeySpec, attempt: int) -> KeyRecord:
        self.step(f"{key.name}: inspect")
        present, sha = await self.inspect(key)
        state = self.key_states.pop((key.sec_tag, key.type.code), None)
        if state is None:  # a retry: the journal may have changed since identification
            state = await self.job.journal.key_state(self.dev.imei, key.sec_tag, key.type.code)
        if key.type is KeyType.CLIENT_KEY:
            decision = decide_client_key(present=present, journal=state,
                                         if_exists=str(key.if_exists))
        else:
            decision = decide_endorsement_key(present=present, journal=state)
        self.log.debug("decision", key=key.name, action=decision.action, reason=decision.reason)
        if self.job.check:
            return self._planned(key, decision)
        if decision.action is Action.NOTHING:
            if sha and sha != state.cmng_sha:
                await self.job.journal.set_cmng_sha(imei=self.dev.imei, sec_tag=key.sec_tag,
                                                    key_type=key.type.code, sha=sha)
                if state.cmng_sha:
                    self.log.warning("the key's SHA column changed since it was recorded",
                                     key=key.name, sec_tag=key.sec_tag, was=state.cmng_sha,
                                     now=sha)
            return self._record(key, KeyOutcome.UNCHANGED, state.answer, attempt, stored=state)
        if decision.action is Action.KEEP:
            await self.job.journal.mark_pre_existing(imei=self.dev.imei, sec_tag=key.sec_tag,
                                                     key_type=key.type.code, cmng_sha=sha)
            return self._record(key, KeyOutcome.PRE_EXISTING, None, attempt)
        if decision.action is Action.FAIL:
            return self._failed(key, decision.reason, attempt)
        await self.ensure_offline()
        if decision.deletes:
            self.step(f"{key.name}: delete")
            try:
                await self._write(Command.set("%CMNG", 3, key.sec_tag, key.type.code),
                                  action="delete", key=key, attempt=attempt,
                                  timeout=self.settings.timeout_s,
                                  detail={"reason": decision.reason})
            except CmeError as exc:
                if exc.code != CmeCode.NOT_FOUND:
                    raise self._retry_or_fail(exc) from exc
        return await self._keygen(key, decision, attempt,
                                  present_before=present and not decision.deletes,
                                  journal_public_key=state.public_key_pem)

    def _retry_or_fail(self, exc: CmeError) -> Exception:
        if exc.code in (CmeCode.KEYGEN_FAILED, CmeCode.ACTIVE_STATE, CmeCode.ALREADY_EXISTS):
            return _Transient(_explain(exc))
        return exc

    async def _keygen(self, key: KeySpec, decision: Decision, attempt: int, *,
                      present_before: bool, journal_public_key: str | None) -> KeyRecord:
        ctx = self.template_context()
        if key.uses_device_uuid and not self.dev.device_uuid:
            return self._failed(key, "the plan uses {device_uuid} but this modem's device UUID "
                                "is unknown (%ATTESTTOKEN not supported?)", attempt)
        args = key.keygen_args(ctx)
        command = Command.set("%KEYGEN", *args)
        self.step(f"{key.name}: keygen")
        timeout = self.settings.keygen_timeout_s
        try:
            step_id, answer = await self._write(
                command, action="keygen", key=key, attempt=attempt, timeout=timeout,
                detail={"present_before": present_before, "decision": decision.action.value})
        except CmeError as exc:
            if exc.code == CmeCode.ACTIVE_STATE:
                await self.ensure_offline(force=True)
            raise self._retry_or_fail(exc) from exc
        self.step(f"{key.name}: verify")
        try:
            line = answer.first("%KEYGEN:")
            parsed = parse_keygen(line)
            await self._adopt_device_uuid(str(parsed.payload.device_uuid))
            verify_keygen(parsed, self._expectation(key, args, parsed))
        except (CredentialError, RemoteProtocolError, _DeviceLost) as exc:
            raw = "\n".join(answer.lines)
            await self.job.journal.outcome(step_id, outcome="unknown", answer=raw,
                                           error=f"answer failed verification: {exc}")
            raise
        outcome = decision.outcome
        if key.type is KeyType.ENDORSEMENT_KEY:
            outcome = endorsement_outcome(decision=decision, journal_public_key=journal_public_key,
                                          new_public_key=parsed.public_key_pem)
        await self.job.journal.outcome(step_id, outcome="ok", answer=parsed.value,
                                       derived=_derived(parsed))
        if outcome in (KeyOutcome.GENERATED, KeyOutcome.RECOVERED, KeyOutcome.CHANGED):
            self.dev.changed = True
        # The verified answer is the proof the key exists (the modem stores it before it
        # answers); the next run's %CMNG=1 records its SHA column.
        return self._record(key, outcome, parsed.value, attempt, parsed)

    def _expectation(self, key: KeySpec, args: tuple[Any, ...],
                     answer: KeygenAnswer) -> Expectation:
        device = uuid.UUID(self.dev.device_uuid) if self.dev.device_uuid else None
        if key.response is not Response.CSR:
            return Expectation(sec_tag=key.sec_tag, payload_id=8, device_uuid=device)
        attributes = args[3] if len(args) > 3 else None
        subject = (attributes_subject(attributes) if attributes
                   else default_subject(answer.payload.device_uuid))
        return Expectation(sec_tag=key.sec_tag, payload_id=9, device_uuid=device, subject=subject,
                           key_usage=key.key_usage or DEFAULT_KEY_USAGE)

    def _record(self, key: KeySpec, outcome: KeyOutcome, answer: str | None, attempts: int,
                parsed: KeygenAnswer | None = None, stored: KeyState | None = None) -> KeyRecord:
        """The key's record; the CSR / public key / payload fields come from the answer just
        parsed, or from what the journal stored when it captured the answer."""
        fields: dict[str, Any] = {}
        if parsed is not None:
            fields = _derived(parsed)
        elif stored is not None and stored.public_key_pem:
            fields = {"csr_pem": stored.csr_pem, "public_key_pem": stored.public_key_pem,
                      "cose_payload": stored.cose_payload}
        elif answer:
            try:
                fields = _derived(parse_keygen(answer))
            except CredentialError:
                fields = {}
        return KeyRecord(name=key.name, sec_tag=key.sec_tag, type=key.type.value,
                         response=key.response.value, outcome=outcome, keygen_answer=answer,
                         attempts=attempts, **fields)

    async def save_key(self, key: KeySpec, record: KeyRecord) -> None:
        """Keep the key's result, in memory and (real runs) in the journal for the manifest."""
        if not self.job.check and self.dev.imei:
            kept = await self.job.journal.key_result(
                run_id=self.job.run_id, slot=self.slot.name, imei=self.dev.imei,
                key_name=key.name, sec_tag=key.sec_tag, key_type=key.type.code,
                outcome=record.outcome.value, error=record.error, attempts=record.attempts)
            if kept != record.outcome.value:
                self.log.debug("outcome kept from earlier in this run", key=key.name, kept=kept)
        self.dev.keys.append(record)

    async def try_restore_after_failure(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.timeout_s):
            try:
                if self.session.is_open and not self.session.needs_recover:
                    await self.restore_mode()
            except FleetError as exc:
                self.log.warning("function mode not restored", error=str(exc))

    async def finish(self, outcome: DeviceOutcome, error: str | None
                     ) -> tuple[DeviceOutcome, str | None]:
        """Fill in keys never reached, settle the device outcome and journal the slot result."""
        done = {k.name for k in self.dev.keys}
        for key in self.slot.keys:
            if key.name not in done:
                self.dev.keys.append(KeyRecord(
                    name=key.name, sec_tag=key.sec_tag, type=key.type.value,
                    response=key.response.value, outcome=KeyOutcome.NOT_ATTEMPTED))
        failed = [k for k in self.dev.keys if k.outcome is KeyOutcome.FAILED]
        if outcome is DeviceOutcome.DONE and failed:
            outcome = DeviceOutcome.FAILED
            error = "; ".join(f"{k.name}: {k.error}" for k in failed)
        if not self.job.check:
            await self.job.journal.slot_result(
                run_id=self.job.run_id, slot=self.slot.name, port=self.slot.port,
                imei=self.dev.imei or None, outcome=outcome.value, error=error)
        self.status.outcome = outcome.value
        self.step(outcome.value if error is None else f"{outcome.value}: {error}")
        return outcome, error

    def _planned(self, key: KeySpec, decision: Decision) -> KeyRecord:
        self.dev.planned.append({
            "name": key.name, "sec_tag": key.sec_tag, "type": key.type.value,
            "action": decision.action.value, "outcome": decision.outcome.value,
            "changed": decision.changes_device, "reason": decision.reason,
        })
        if decision.changes_device:
            self.dev.changed = True
        return KeyRecord(name=key.name, sec_tag=key.sec_tag, type=key.type.value,
                         response=key.response.value, outcome=KeyOutcome.NOT_ATTEMPTED,
                         extra={"planned": decision.action.value})


def _derived(answer: KeygenAnswer) -> dict[str, Any]:
    """The fields an answer yields for records and the manifest (kept in the journal too)."""
    return {"csr_pem": answer.csr_pem, "public_key_pem": answer.public_key_pem,
            "cose_payload": answer.payload.to_dict()}


def _explain(exc: CommandError) -> str:
    if isinstance(exc, CmeError):
        hints = {
            CmeCode.MEMORY_FULL: "the credential store is full: delete unused credentials",
            CmeCode.NOT_ALLOWED: "the sec_tag is reserved or the operation is not allowed",
            CmeCode.INVALID_CREDENTIAL: "the modem refused the credential as invalid",
            CmeCode.NOT_SUPPORTED: "this modem firmware does not support the command",
        }
        hint = hints.get(exc.code) if isinstance(exc.code, CmeCode) else None
        return f"{exc}" + (f": {hint}" if hint else "")
    return str(exc)


async def provision_slot(job: SlotJob) -> SlotResult:
    """Provision one slot. Never raises a FleetError: failures are in the result.

    Each key's result is written to the journal as soon as it is known and the slot's result at
    the end (also when the run is cancelled: shielded), so the manifest of a run that was stopped
    halfway is still complete for what was done.
    """
    flow = _Flow(job)
    dev = flow.dev
    error: str | None = None
    outcome = DeviceOutcome.DONE
    try:
        try:
            await flow.open_and_identify()
            for key in job.slot.keys:
                record = await flow.provision_key(key)
                record = await certify_key(flow, key, record)  # issue 8: keys with `ca:`
                await flow.save_key(key, record)
                flow.status.keys_done += 1
                flow.job.on_progress(flow.status)
            await flow.restore_mode()
        except (_DeviceLost, DeviceSwapped, PortBusy) as exc:
            error = str(exc)
        except (FleetError, OSError) as exc:
            error = _explain(exc) if isinstance(exc, CommandError) else str(exc)
        if error is not None:
            outcome = DeviceOutcome.FAILED
            flow.log.error("device failed", error=error)
            await flow.try_restore_after_failure()
    except anyio.get_cancelled_exc_class():
        outcome = DeviceOutcome.INTERRUPTED
        error = "interrupted"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await flow.session.close()
            outcome, error = await flow.finish(outcome, error)
    device = DeviceRecord(slot=job.slot.name, port=job.slot.port, imei=dev.imei or None,
                          device_uuid=dev.device_uuid, model=dev.model, firmware=dev.firmware,
                          outcome=outcome, keys=tuple(dev.keys), error=error)
    return SlotResult(record=device, changed=dev.changed, planned=tuple(dev.planned))
