"""The device-side plumbing shared by the key step (:mod:`.flow`) and the certificate step
(:mod:`.certs`): the slot's job, its progress and its result, journaled writes, the function
mode, recovery, retries and error wording.

How this works
--------------
:class:`DeviceWork` owns one device's :class:`fleet.device.DeviceSession` and its mutable
:class:`DeviceState`. Every write goes through :meth:`DeviceWork.write`: a journal intent, the
command, a journal outcome (``ok``, ``error`` when the modem refused it, ``unknown`` when nobody
knows whether it took effect). :meth:`DeviceWork.ensure_offline` takes the modem to ``CFUN=4``
only when it is active, after reading the mode twice (the mode read is what the device is
restored to), and remembers it in the journal before changing it, so a run killed while the modem
was offline still restores it. Every retry and recovery of the device follows its
:class:`fleet.retry.RetryPolicy` (``DeviceWork.policy``, built from the slot's settings when the
slot starts: its deadline counts from then).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from fleet.at import Command
from fleet.credentials import (
    DEFAULT_KEY_USAGE,
    PAYLOAD_ID_CSR,
    PAYLOAD_ID_PUBLIC_KEY,
    Expectation,
    KeygenAnswer,
    attributes_subject,
    default_subject,
    parse_attest_token,
)
from fleet.device import DeviceSession, DeviceSwapped
from fleet.errors import (
    CmeCode,
    CmeError,
    CommandError,
    CredentialError,
    DeviceTimeout,
    FleetError,
    RemoteProtocolError,
    TransportError,
)
from fleet.journal import Journal
from fleet.nrf91 import ACTIVE_MODES, attestation_problem, attestation_ruled_out
from fleet.openers import describe, fresh
from fleet.plan import KeySpec, Slot
from fleet.plan import Response as KeyResponse
from fleet.records import DeviceRecord, KeyRecord
from fleet.retry import RetryPolicy, Transient
from fleet.session import Opener, Response

__all__ = [
    "DeviceLost",
    "DeviceState",
    "DeviceWork",
    "ImeiClaims",
    "Progress",
    "SlotJob",
    "SlotResult",
    "derived_fields",
    "explain_error",
]


class DeviceLost(FleetError):
    """The device cannot be worked on any more in this run (port gone, board swapped)."""


_HINTS = {
    CmeCode.MEMORY_FULL: "the credential store is full: delete unused credentials",
    CmeCode.NOT_ALLOWED: "the sec_tag is reserved or the operation is not allowed",
    CmeCode.INVALID_CREDENTIAL: "the modem refused the credential as invalid (for a "
    "certificate: its public key may not be the private key's in this sec_tag, or the firmware "
    "refuses its format)",
    CmeCode.NOT_SUPPORTED: "this modem firmware does not support the command",
}


def explain_error(exc: FleetError) -> str:
    """The error's message, with what to do about it for the ``+CME ERROR`` codes that need it."""
    hint = _HINTS.get(exc.code) if isinstance(exc, CmeError) and isinstance(exc.code, CmeCode) \
        else None
    return f"{exc}: {hint}" if hint else str(exc)


def derived_fields(answer: KeygenAnswer) -> dict[str, Any]:
    """The record and manifest fields an answer yields (the journal keeps them too)."""
    return {"csr_pem": answer.csr_pem, "public_key_pem": answer.public_key_pem,
            "cose_payload": answer.payload.to_dict()}


class ImeiClaims:
    """Which slot of this invocation holds each IMEI. Two boards that report one IMEI (cloned
    modules, unprogrammed IMEIs) must never share the journal's state for it: the second is
    stopped before the journal records it, and the first before its next write."""

    def __init__(self) -> None:
        self._holders: dict[str, str] = {}
        #: IMEI -> every slot that reported it, for the IMEIs more than one slot reported
        self.clashes: dict[str, set[str]] = {}

    def claim(self, imei: str, slot: str) -> None:
        """``slot`` holds a board with ``imei``; :class:`DeviceLost` when another slot's board
        reported it too."""
        holder = self._holders.setdefault(imei, slot)
        if holder != slot:
            self.clashes.setdefault(imei, {holder}).add(slot)
        self.check(imei)

    def check(self, imei: str) -> None:
        """:class:`DeviceLost` when more than one slot reported ``imei``."""
        if imei in self.clashes:
            raise DeviceLost(self.reason(imei))

    def reason(self, imei: str) -> str:
        slots = ", ".join(sorted(self.clashes.get(imei, ())))
        return (f"two boards report IMEI {imei} (slots {slots}): cloned modules or unprogrammed "
                "IMEIs; every slot with this IMEI is stopped and nothing of one board is "
                "recorded under the other's")


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Where one slot's work is, handed to ``SlotJob.on_progress`` at every step."""

    step: str
    imei: str  #: "" until the device is identified
    keys_done: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotResult:
    record: DeviceRecord
    planned: tuple[dict[str, Any], ...] = ()  #: check mode: what a real run would do per key
    journal_error: str | None = None  #: the slot's result could not be journaled


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotJob:
    """Everything one slot's provisioning needs."""

    run_id: str
    station: str
    slot: Slot
    journal: Journal
    opener: Opener
    check: bool = False
    claims: ImeiClaims = field(default_factory=ImeiClaims)
    on_progress: Callable[[Progress], None] = lambda progress: None
    #: Called with the slot's result once it is known, also when the run is cancelled.
    on_result: Callable[[SlotResult], None] = lambda result: None


@dataclass(slots=True)
class DeviceState:
    """Mutable state of the device being provisioned."""

    imei: str = ""
    model: str | None = None
    firmware: str | None = None
    device_uuid: str | None = None  #: as the journal holds it (claimed with the first capture)
    attested_uuid: str | None = None  #: what %ATTESTTOKEN said (None: refused, or not asked)
    mode: int | None = None  #: function mode as last read or set (None: not read yet)
    restore_target: int | None = None  #: mode to restore at the end (None: never changed)
    changed: bool = False
    #: why this is not the board the journal knows under its IMEI (found before a write)
    other_board: str | None = None
    #: the board on this opening of the port was compared with the known UUID (or none is known)
    board_checked: bool = False
    attestation_token: str | None = None  #: the last %ATTESTTOKEN value the device gave
    #: a key's step gave up on what is worth another try after the device's deadline had passed
    out_of_time: bool = False
    keys: list[KeyRecord] = field(default_factory=list)
    planned: list[dict[str, Any]] = field(default_factory=list)


class DeviceWork:
    """One device's session, state and journaled writes."""

    def __init__(self, job: SlotJob) -> None:
        self.job = job
        self.slot = job.slot
        self.settings = job.slot.settings
        self.current_step = "waiting"
        self.keys_done = 0
        self.log = structlog.get_logger().bind(slot=job.slot.name, port=job.slot.port)
        self.policy = RetryPolicy.from_settings(self.settings)
        self.session = DeviceSession(job.opener, port=job.slot.port, readonly=job.check,
                                     policy=self.policy,
                                     probe_timeout=self.settings.probe_timeout_s,
                                     baudrate=self.settings.baudrate,
                                     rtscts=self.settings.rtscts,
                                     interface=self.settings.interface,
                                     terminator=self.settings.terminator, log=self.log)
        self.dev = DeviceState()

    def step(self, text: str) -> None:
        self.current_step = text
        self.report_progress()

    def report_progress(self) -> None:
        self.job.on_progress(Progress(step=self.current_step, imei=self.dev.imei,
                                      keys_done=self.keys_done))

    def template_context(self) -> dict[str, str]:
        return {"imei": self.dev.imei, "slot": self.slot.name, "station": self.job.station,
                "device_uuid": self.dev.device_uuid or ""}

    async def write(self, command: Command, *, action: str, timeout: float,
                    key: KeySpec | None = None, attempt: int = 1,
                    detail: dict[str, Any] | None = None,
                    credential_type: int | None = None) -> tuple[int, Response]:
        """Send a write with a journal intent before and an outcome after; returns the step id
        and the answer. A ``keygen`` step's ``ok`` outcome is the caller's to record, once the
        answer is verified. The step is journaled for ``key``'s sec_tag and its type, or
        ``credential_type`` (a certificate in the key's sec_tag)."""
        self.job.claims.check(self.dev.imei)
        await self.confirm_board()
        await self.session.enable_cme_codes(timeout=self.settings.timeout_s)
        journal = self.job.journal
        step_id = await journal.intent(
            run_id=self.job.run_id, slot=self.slot.name, imei=self.dev.imei, action=action,
            key_name=key.name if key else None, sec_tag=key.sec_tag if key else None,
            key_type=credential_type if credential_type is not None else (
                key.type.code if key else None), attempt=attempt, command=str(command),
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

    async def attest(self) -> str | None:
        """The device UUID from ``%ATTESTTOKEN``; ``None`` when the firmware does not offer it."""
        try:
            answer = await self.session.command(Command.action("%ATTESTTOKEN"),
                                                timeout=self.settings.timeout_s)
        except CommandError as exc:
            # Expected of an nRF9160 or older firmware (an info line); a warning only where the
            # model and firmware should have the command.
            lacks = attestation_problem(self.dev.model, self.dev.firmware)
            (self.log.info if lacks else self.log.warning)(
                f"%ATTESTTOKEN refused ({lacks or 'this modem should offer it'}): whether this "
                "is the board the journal knows under this IMEI or a clone is told only by the "
                "device UUID in its %KEYGEN answers, after the write", error=str(exc))
            return None
        try:
            token = parse_attest_token(answer.first("%ATTESTTOKEN:"))
        except CredentialError as exc:
            raise Transient(f"%ATTESTTOKEN answer does not decode: {exc}") from exc
        self.dev.attestation_token = token.value
        return str(token.device_uuid)

    async def attest_with_retries(self) -> str | None:
        """:meth:`attest`, recovering the session first when it needs it."""

        async def attempt(number: int) -> str | None:
            if self.session.needs_recover:
                await self.recover()
            return await self.attest()

        return await self.policy.step(attempt)

    async def with_openers(self, reason: str) -> str:
        """``reason``, and the other processes that hold the port open now, if any."""
        found = await fresh(self.slot.port)
        return f"{reason}; {describe(found)}" if found else reason

    def uuid_clash(self, device_uuid: str, owner: str) -> str:
        return (f"this modem's device UUID {device_uuid} belongs to IMEI {owner} in the "
                f"journal, but it reported IMEI {self.dev.imei} (a cloned or reprogrammed "
                "IMEI?): stopping this slot")

    def other_board(self, attested: str, known: str) -> str:
        whose = (f"the one the journal holds for IMEI {self.dev.imei}"
                 if known == self.dev.device_uuid else
                 "the one this slot's board reported when it was identified")
        return (f"this board's device UUID {attested} is not {known}, {whose}: another board "
                "with the same IMEI (a cloned module or an unprogrammed IMEI?); nothing was "
                "written to it")

    async def confirm_board(self) -> None:
        """Once on each opening of the port, before the first write and before a retried step
        reads anything for the record (:meth:`ready`), for a device whose UUID is known (the
        journal's, or the one ``%ATTESTTOKEN`` reported at identification) and whose modem
        offers ``%ATTESTTOKEN``: it must report that UUID. Another board with the same IMEI (a
        cloned module, an unprogrammed IMEI, a board swapped while the port was reopened) is
        never written to and never reported as the known one, so its writes cannot replace the
        journal's state of the real board's keys; :class:`DeviceLost` at this and every later
        step, and the run's record of the slot gives the UUID that board reported. A board that
        attested on an earlier opening and refuses now is not taken for the same board either.
        A modem whose model or firmware rules ``%ATTESTTOKEN`` out is not asked: it is told
        apart only by its ``%KEYGEN`` answers."""
        known = self.dev.device_uuid or self.dev.attested_uuid
        can_say = (self.dev.attested_uuid is not None
                   or not attestation_ruled_out(self.dev.model, self.dev.firmware))
        if not self.dev.board_checked and known is not None and can_say:
            attested = await self.attest_with_retries()
            if attested is None and self.dev.attested_uuid is not None:
                self.dev.other_board = (
                    "after the port was reopened this board refused %ATTESTTOKEN, which it "
                    f"answered before: fleet cannot tell whether it is the board with UUID "
                    f"{known}; nothing more was written to it (run again once it answers)")
            elif attested is not None and attested != known:
                self.dev.other_board = self.other_board(attested, known)
            elif attested is not None:
                self.dev.attested_uuid = attested
            if self.dev.other_board is not None:
                await self.job.journal.another_board(run_id=self.job.run_id, slot=self.slot.name,
                                                     imei=self.dev.imei, device_uuid=attested)
        self.dev.board_checked = True  # the attest may have reopened the port: it is this one's
        if self.dev.other_board is not None:
            raise DeviceLost(self.dev.other_board)

    async def ready(self) -> None:
        """Make the session usable for a retried step: reopened when the last one left it dirty
        (or closed), and the board on it confirmed (:meth:`confirm_board`; not in ``--check``,
        which sends nothing but reads and writes no journal) before the step reads anything."""
        if not self.session.is_open or self.session.needs_recover:
            await self.recover()
        if not self.job.check:
            await self.confirm_board()

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
        if not force and self.dev.mode not in ACTIVE_MODES:
            return
        confirmed = await self.session.read_function_mode(timeout=timeout)
        if not force and confirmed != self.dev.mode:
            raise RemoteProtocolError(f"AT+CFUN? answered {self.dev.mode}, then {confirmed}")
        target = confirmed if self.dev.restore_target is None else self.dev.restore_target
        await self.confirm_board()  # before the journal takes this board's mode as the IMEI's
        await self.job.journal.set_restore_mode(self.dev.imei, target)
        self.dev.restore_target = target
        self.step("offline (CFUN=4)")
        await self.write(Command.set("+CFUN", 4), action="cfun", timeout=timeout,
                         detail={"from": confirmed, "to": 4})
        self.dev.mode = 4
        self.dev.changed = True

    async def restore_mode(self) -> None:
        """Put the function mode back (``restore_function_mode``), also one an interrupted
        run left in the journal."""
        target = self.dev.restore_target
        if target is None or not self.settings.restore_function_mode or self.job.check:
            return
        await self.ready()  # the last step may have left the session to recover
        if self.dev.mode is None:
            self.dev.mode = await self.session.read_function_mode(
                timeout=self.settings.timeout_s)
        if self.dev.mode != target:
            self.step(f"restore CFUN={target}")
            await self.write(Command.set("+CFUN", target), action="cfun",
                             timeout=self.settings.timeout_s,
                             detail={"from": self.dev.mode, "to": target, "restore": True})
            self.dev.mode = target
            self.dev.changed = True
        await self.job.journal.set_restore_mode(self.dev.imei, None)

    async def try_restore_after_failure(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.timeout_s):
            try:
                if self.session.is_open and not self.session.needs_recover:
                    await self.restore_mode()
            except FleetError as exc:
                self.log.warning("function mode not restored", error=str(exc))

    async def recover(self) -> None:
        """Reopen the port and check it is the same device (after a timeout or disconnect)."""
        self.step("reopening")
        try:
            await self.session.recover(timeout=self.settings.timeout_s)
        except DeviceSwapped as exc:
            raise DeviceLost(str(exc)) from exc
        except TransportError as exc:
            raise DeviceLost(await self.with_openers(str(exc))) from exc
        # A reboot puts the modem back to CFUN 0: read the mode again when it matters. The IMEI
        # was read again, but a board with the same IMEI may have taken the slot: it says
        # which it is before the next write.
        self.dev.mode = None
        self.dev.board_checked = False

    async def ensure_same_device(self) -> None:
        """Read the IMEI again (twice) right before a destructive write: on a serial server a
        board can be swapped without the connection dropping."""
        imei = await self.session.read_imei(timeout=self.settings.timeout_s)
        if imei != self.dev.imei:
            raise DeviceLost(f"device swapped: the slot held IMEI {self.dev.imei}, now {imei}")

    def expectation(self, key: KeySpec, args: tuple[Any, ...],
                    answer: KeygenAnswer) -> Expectation:
        """What a %KEYGEN answer for ``key`` sent with ``args`` must show."""
        known = self.dev.device_uuid or self.dev.attested_uuid
        device = uuid.UUID(known) if known else None
        if key.response is not KeyResponse.CSR:
            return Expectation(sec_tag=key.sec_tag, payload_id=PAYLOAD_ID_PUBLIC_KEY,
                               device_uuid=device)
        attributes = args[3] if len(args) > 3 else None
        subject = (attributes_subject(attributes) if attributes
                   else default_subject(answer.payload.device_uuid))
        return Expectation(sec_tag=key.sec_tag, payload_id=PAYLOAD_ID_CSR, device_uuid=device,
                           subject=subject,
                           key_usage=key.key_usage or DEFAULT_KEY_USAGE)
