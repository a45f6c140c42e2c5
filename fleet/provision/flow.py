"""The per-device provisioning flow: identify, inspect, decide, act, verify, record, restore.

How this works
--------------
:func:`provision_slot` drives one device (:class:`fleet.provision.base.DeviceWork`) through:

1. open the port, identify (IMEI read twice, model, firmware); ``AT+CMEE=1`` and
   ``AT+CFUN?`` only once a write is needed (a re-run with nothing to do sends neither);
2. per key, in plan order, up to ``retries + 1`` attempts: recover the session if the last
   attempt left it dirty, inspect with ``AT%CMNG=1,<tag>,<type>``, ask
   :mod:`fleet.provision.decide`, and act - every write (``+CFUN=4``, ``%CMNG=3``, ``%KEYGEN``)
   bracketed by a journal intent and outcome. Everything a write needs (the rendered ``%KEYGEN``
   arguments, a known device UUID) is settled before the first write of an attempt, and the IMEI
   is read again right before a delete;
3. verify each %KEYGEN answer (all the checks of :mod:`fleet.credentials`, the requested
   sec_tag, subject and key usage, and for a device the journal holds no UUID of, the UUID
   ``%ATTESTTOKEN`` reported at identification) before it is journaled as captured; the first
   capture claims the device's UUID in the same journal transaction, so no captured answer is
   ever without its device's UUID, and a UUID the journal knows under another IMEI stops the
   slot before any write;
4. the certificate step for keys with ``ca:`` (:mod:`fleet.provision.certs`);
5. one ``AT%CMNG=1`` to record the SHA-256 the modem lists for each key captured;
6. restore the function mode read at the start (or the one an interrupted run left in the
   journal) when ``restore_function_mode``.

A %KEYGEN for a client key is never re-sent blindly: every retry starts again from inspection, so
a key made by a %KEYGEN whose answer was lost is found and handled by the "recovered" rule.
``check`` mode stops after the decision and sends only read-only commands.
"""

from __future__ import annotations

from typing import Any

import anyio

from fleet.at import Command, delete_credential
from fleet.credentials import (
    CredentialType,
    KeygenAnswer,
    parse_cmng_list,
    parse_keygen,
    verify_keygen,
)
from fleet.device import DeviceSwapped, Identity, NoAnswer
from fleet.errors import (
    CmeCode,
    CmeError,
    CommandError,
    CredentialError,
    DeviceTimeout,
    FleetError,
    JournalError,
    PortBusy,
    RemoteProtocolError,
    ShellRefused,
    TransportError,
)
from fleet.journal import KeyResult
from fleet.nrf91 import (
    CMNG_SHA_MIN_FIRMWARE,
    KEYGEN_MIN_FIRMWARE,
    attestation_problem,
    firmware_too_old,
)
from fleet.plan import KeySpec, KeyType
from fleet.provision.base import (
    DeviceLost,
    DeviceWork,
    SlotJob,
    SlotResult,
    derived_fields,
    explain_error,
)
from fleet.provision.certs import certify_key
from fleet.provision.decide import (
    Action,
    Decision,
    decide_client_key,
    decide_endorsement_key,
    endorsement_outcome,
)
from fleet.records import DeviceOutcome, DeviceRecord, KeyOutcome, KeyRecord, outcome_word
from fleet.report import not_attempted
from fleet.retry import RETRY_CODES, RETRYABLE, Transient
from fleet.state import KeyState

__all__ = ["provision_slot"]

#: What identification retries (reopening the port first).
_IDENTIFY_RETRYABLE = (DeviceTimeout, TransportError, RemoteProtocolError)
_CLIENT_CERT = CredentialType.CLIENT_CERT
#: Shell refusals that every later command of the device would meet too: the shell's wildcards
#: without raw AT mode, a shell without the at command.
_SHELL_STOPS_DEVICE = frozenset({"usage", "not-found"})


class _Flow(DeviceWork):
    def __init__(self, job: SlotJob) -> None:
        super().__init__(job)
        self.key_states: dict[tuple[int, int], KeyState] = {}
        #: keys whose result in the run was journaled with their capture, and that result
        self.results_saved: dict[str, KeyOutcome] = {}
        #: keys captured in this invocation: the opening of the port (session.openings) it was on
        self.captured_on: dict[str, int] = {}
        #: One ``AT%CMNG=1`` listing of everything, for each key's first inspection (one
        #: command instead of one per key); a retry inspects its key again.
        self.listing: dict[tuple[int, int], str | None] | None = None

    # --- device ------------------------------------------------------------------------------

    async def open_and_identify(self) -> None:
        timeout = self.settings.timeout_s

        async def open_port(number: int) -> None:
            await self.session.close()
            await self.session.open()
            self.step("probe (AT)")
            await self.session.probe(
                on_retry=lambda reason: self.step("probe: no answer, AT again"))

        async def identify(number: int) -> tuple[Identity, str]:
            if number > 1:
                await self.recover()
            identity = await self.session.identify(timeout=timeout)
            # The model is fixed for an IMEI (it is the modem's own number): the journal's
            # spares the AT+CGMM.
            return identity, (await self.job.journal.model_of(identity.imei)
                              or await self.session.read_model(timeout=timeout))

        self.step("opening")
        try:
            await self.policy.opening(open_port)
        except (NoAnswer, TransportError) as exc:  # PortBusy too: name who holds the port
            raise DeviceLost(await self.with_openers(str(exc))) from exc
        self.step("identify")
        identity, model = await self.policy.step(identify, retry_on=_IDENTIFY_RETRYABLE)
        self.dev.imei, self.dev.model, self.dev.firmware = (identity.imei, model,
                                                            identity.firmware)
        self.log = self.log.bind(imei=identity.imei)
        self.session.log = self.log
        self.job.claims.claim(identity.imei, self.slot.name)  # before the journal records it
        if self.job.check:
            info = await self.job.journal.device_info(identity.imei)
        else:
            line = self.session.line
            info = await self.job.journal.device_seen(
                imei=identity.imei, model=model, firmware=identity.firmware,
                device_uuid=None, run_id=self.job.run_id, slot=self.slot.name,
                port=self.slot.port, usb=self.slot.usb,
                interface=line.interface.value if line else None,
                terminator=line.terminator.value if line else None)
        await self._prefetch_listing()
        self.dev.device_uuid = info.device_uuid
        self.dev.restore_target = info.restore_mode
        self.key_states = dict(info.keys)
        if self.dev.device_uuid is None and not self.job.check:
            # A device the journal has no UUID of: %ATTESTTOKEN says which it is, before any
            # write (with retries: a failed listing prefetch may have left the session to
            # recover). Its answers must carry that UUID.
            self.dev.attested_uuid = await self.attest_with_retries()
            self.dev.board_checked = True  # this opening's board said which it is just now
            if self.dev.attested_uuid is not None:
                owner = await self.job.journal.device_uuid_owner(identity.imei,
                                                                 self.dev.attested_uuid)
                if owner is not None:
                    raise DeviceLost(self.uuid_clash(self.dev.attested_uuid, owner))
        elif not self.job.check and attestation_problem(model, identity.firmware) is None:
            # A board that can say which it is says so in every run, also one with nothing to
            # write: the record's device UUID is confirmed, and a clone with the journal's keys
            # copied (the same IMEI and listing) is never reported as the journal's board.
            await self.confirm_board()
        if self.settings.attestation_token:
            await self._keep_attestation_token()

    async def _keep_attestation_token(self) -> None:
        """``attestation_token: true``: the device's ``%ATTESTTOKEN`` (the one identification
        read, or one read now), journaled for the run's record before any write. A modem
        without one fails here, before anything is written to it (``--check`` says so too)."""
        problem = attestation_problem(self.dev.model, self.dev.firmware)
        if problem is not None:
            raise DeviceLost(f"the plan asks for its attestation token, but {problem}; nothing "
                             "was written to it")
        if self.job.check:
            return
        if self.dev.attestation_token is None:
            attested = await self.attest_with_retries()
            if attested is None:
                raise DeviceLost("the plan asks for its attestation token, but the modem "
                                 "refused %ATTESTTOKEN; nothing was written to it")
            known = self.dev.device_uuid
            if known is not None and attested != known:
                raise DeviceLost(self.other_board(attested, known))
            self.dev.attested_uuid, self.dev.board_checked = attested, True
        token = self.dev.attestation_token
        assert token is not None  # attest() keeps the value of every UUID it returns
        await self.job.journal.attestation(run_id=self.job.run_id, slot=self.slot.name,
                                           imei=self.dev.imei, token=token)

    async def _prefetch_listing(self) -> None:
        """The one ``AT%CMNG=1`` listing every key's first inspection uses (plans with more
        than one key). A failure here is left for the first key's attempt to meet again and
        handle (it recovers the session and retries)."""
        if len(self.slot.keys) < 2 or self.listing is not None:
            return
        try:
            await self._read_listing()
        except FleetError as exc:
            self.log.info("credential listing failed; the first key retries it", error=str(exc))

    async def _read_listing(self) -> dict[tuple[int, int], str | None]:
        self.listing = await self._list_all()
        return self.listing

    async def _list_all(self) -> dict[tuple[int, int], str | None]:
        """``AT%CMNG=1``: every credential's (sec_tag, type) and its SHA column."""
        answer = await self.session.command(Command.set("%CMNG", 1),
                                            timeout=self.settings.timeout_s)
        return {(e.sec_tag, e.type): e.sha256 for e in parse_cmng_list(answer.lines)}

    async def record_new_keys_sha(self) -> None:
        """The SHA-256 the modem lists for each key captured in this invocation, recorded now,
        so that a key replaced behind fleet's back before the next run is told from the one
        whose answer the journal holds (that run's decision compares the two).

        One ``AT%CMNG=1`` after the keys, on the opening of the port the keys were captured on
        (only those keys): a reopened port may hold another board, whose SHA must never be
        recorded for this one's key. When it cannot be read, the next run's listing records
        the SHA (as for a key an earlier fleet captured), and the keys keep their outcomes."""
        captured = [key for key in self.slot.keys
                    if self.captured_on.get(key.name) == self.session.openings]
        if (not captured or self.job.check or not self.session.is_open
                or self.session.needs_recover):
            return
        self.step("list new keys")
        try:
            listed = await self._list_all()
        except FleetError as exc:
            self.log.info("the new keys' SHA-256 could not be listed; the next run records it",
                          error=str(exc))
            return
        wheres = [(key.sec_tag, key.type.code) for key in captured]
        shas = {where: sha for where in wheres if (sha := listed.get(where))}
        if shas:
            await self.job.journal.set_cmng_shas(self.dev.imei, shas)

    async def _claim_stored(self, key: KeySpec, state: KeyState) -> KeyRecord | None:
        """A device whose UUID the journal lacks, with a key captured by an earlier version of
        fleet: claim the UUID of that answer (it must be what ``%ATTESTTOKEN`` said); a
        failed key's record when it is not, its capture taken back (regenerated next run)."""
        stored = str((state.cose_payload or {}).get("device_uuid") or "")
        if not stored:
            return None
        attested = self.dev.attested_uuid
        if attested is not None and attested != stored:
            reason = (f"its captured answer carries device UUID {stored}, but the modem "
                      f"attests {attested}: the key is regenerated on the next run")
            await self.job.journal.suspect_capture(imei=self.dev.imei, sec_tag=key.sec_tag,
                                                   key_type=key.type.code, reason=reason)
            return self._failed(key, reason, 1)
        owner = await self.job.journal.claim_device_uuid(self.dev.imei, stored,
                                                         run_id=self.job.run_id,
                                                         slot=self.slot.name)
        if owner is not None:
            raise DeviceLost(self.uuid_clash(stored, owner))
        self.dev.device_uuid = stored
        return None

    def template_context(self) -> dict[str, str]:
        context = super().template_context()
        if not context["device_uuid"] and self.dev.attested_uuid:
            context["device_uuid"] = self.dev.attested_uuid  # every answer must carry it
        return context

    # --- keys ----------------------------------------------------------------------------------

    async def inspect(self, key: KeySpec, *, first: bool = False) -> tuple[bool, str | None]:
        """Is a key of this sec_tag and type on the device, and its SHA column. A key's first
        inspection reads one listing of every credential, made when the first key needs it;
        writes for one key never change another key's (sec_tag, type), so it stays true."""
        where = (key.sec_tag, key.type.code)
        if first and len(self.slot.keys) > 1:
            listing = self.listing if self.listing is not None else await self._read_listing()
            return where in listing, listing.get(where)
        answer = await self.session.command(
            Command.set("%CMNG", 1, key.sec_tag, key.type.code), timeout=self.settings.timeout_s)
        entries = [e for e in parse_cmng_list(answer.lines) if (e.sec_tag, e.type) == where]
        return bool(entries), entries[0].sha256 if entries else None

    def firmware_problem(self, key: KeySpec) -> str | None:
        """Why this modem's firmware cannot provision ``key`` (its ``%KEYGEN``, or for a key
        with a CA the ``%CMNG`` SHA column the certificate step relies on), or None."""
        firmware = self.dev.firmware
        problem = firmware_too_old(firmware, KEYGEN_MIN_FIRMWARE, "%KEYGEN")
        if problem is None and key.ca is not None:
            problem = firmware_too_old(firmware, CMNG_SHA_MIN_FIRMWARE, "the certificate step "
                                       "(the SHA-256 column of the %CMNG list)")
        return None if problem is None else f"{problem}; nothing was written for this key"

    async def provision_key(self, key: KeySpec) -> KeyRecord:
        problem = self.firmware_problem(key)
        if problem is not None:  # before any command for the key
            return self._failed(key, problem, 0)
        attempts = 0

        async def attempt(number: int) -> KeyRecord:
            nonlocal attempts
            attempts = number
            await self.ready()
            return await self.key_attempt(key, number)

        try:
            return await self.policy.step(attempt)
        except RETRYABLE as exc:
            self.dev.out_of_time = self.policy.expired()
            return self._failed(key, f"{self.policy.gave_up(attempts)}: {exc}", attempts)
        except ShellRefused as exc:
            if exc.kind in _SHELL_STOPS_DEVICE:  # no command of this device would pass either
                raise DeviceLost(str(exc)) from exc
            return self._failed(key, str(exc), attempts)
        except CommandError as exc:
            return self._failed(key, explain_error(exc), attempts)

    def out_of_time(self, failed: KeyRecord) -> str:
        """Why a device whose key ``failed`` after its deadline, on errors worth another try
        (timeouts, a lost port, garbled answers), is given up: a board that keeps failing must
        not hold its slot for one more try of every step left. A key refused or decided
        against is not a reason: the device answers, and its other keys go on."""
        return (f"{failed.name}: {failed.error}; the device's deadline (device_deadline_s: "
                f"{self.settings.device_deadline_s:g} s) had passed, so nothing more was tried "
                "on this device: run the plan again once it answers")

    def _failed(self, key: KeySpec, reason: str, attempts: int) -> KeyRecord:
        self.log.warning("key failed", key=key.name, sec_tag=key.sec_tag, error=reason)
        return KeyRecord(name=key.name, sec_tag=key.sec_tag, type=key.type.value,
                         response=key.response.value, outcome=KeyOutcome.FAILED, error=reason,
                         attempts=attempts)

    async def key_attempt(self, key: KeySpec, attempt: int) -> KeyRecord:
        self.step(f"{key.name}: inspect")
        present, sha = await self.inspect(key, first=attempt == 1)
        if attempt == 1:
            # What identification read: every key the journal knows of this device (one the
            # journal does not know has an empty state). A plan gives a slot one key per
            # (sec_tag, type), and writes for other keys never touch this one's state.
            state = self.key_states.get((key.sec_tag, key.type.code), KeyState())
        else:  # a retry: the journal may have changed since identification
            state = await self.job.journal.key_state(self.dev.imei, key.sec_tag, key.type.code)
        if key.type is KeyType.CLIENT_KEY:
            decision = decide_client_key(sec_tag=key.sec_tag, present=present, journal=state,
                                         if_exists=str(key.if_exists), listed_sha=sha)
        else:
            decision = decide_endorsement_key(present=present, journal=state, listed_sha=sha)
        self.log.debug("decision", key=key.name, action=decision.action, reason=decision.reason)
        if self.job.check:
            return self._planned(key, decision)
        if decision.action is Action.NOTHING:
            if sha and not state.cmng_sha:  # the first listing of the captured key
                await self.job.journal.set_cmng_shas(self.dev.imei,
                                                     {(key.sec_tag, key.type.code): sha})
            if self.dev.device_uuid is None:
                failed = await self._claim_stored(key, state)
                if failed is not None:
                    return failed
            return self._record(key, KeyOutcome.UNCHANGED, state.answer, attempt, stored=state)
        if decision.action is Action.KEEP:
            await self.job.journal.mark_pre_existing(imei=self.dev.imei, sec_tag=key.sec_tag,
                                                     key_type=key.type.code, cmng_sha=sha)
            return self._record(key, KeyOutcome.PRE_EXISTING, None, attempt)
        if decision.action is Action.FAIL:
            return self._failed(key, decision.reason, attempt)
        # Everything the %KEYGEN needs is settled before the first write: a delete must never be
        # followed by "cannot generate".
        if key.uses_device_uuid and not self.template_context()["device_uuid"]:
            return self._failed(key, "the plan uses {device_uuid} but this modem's device UUID "
                                "is unknown (%ATTESTTOKEN not supported?)", attempt)
        try:
            args = key.keygen_args(self.template_context())
            command = Command.set("%KEYGEN", *args)
        except (ValueError, FleetError) as exc:
            return self._failed(key, f"cannot build the %KEYGEN command: {exc}", attempt)
        await self.ensure_offline()
        if decision.deletes:
            await self.ensure_same_device()
            if key.type is KeyType.CLIENT_KEY and await self._has_client_certificate(key):
                # The certificate in the tag is for the key about to be deleted: it cannot
                # match the new one. It goes first, so an interruption never leaves it beside
                # a new key.
                await self._delete(key, _CLIENT_CERT, attempt, "the client certificate of the "
                                   f"key being deleted ({decision.reason})")
            await self._delete(key, key.type.code, attempt, decision.reason)
        return await self._keygen(key, decision, attempt, args, command,
                                  present_before=present and not decision.deletes,
                                  journal_public_key=state.public_key_pem,
                                  before=self.key_states.get((key.sec_tag, key.type.code),
                                                             KeyState()))

    def _another_board(self, answer: KeygenAnswer) -> str | None:
        """Why ``answer`` comes from another board than the one the journal knows under this
        IMEI, or None. Only a device the journal holds a UUID for, and whose board
        ``%ATTESTTOKEN`` could not confirm before the write, is told apart this late: its
        answer carries another device UUID (a clone with the same IMEI, or an answer
        corrupted past every local check: fleet cannot tell which, so it stops either way)."""
        known = self.dev.device_uuid
        if known is None or self.dev.attested_uuid is not None:
            return None
        carried = str(answer.payload.device_uuid)
        if carried == known:
            return None
        return (f"this board's %KEYGEN answer carries device UUID {carried}, not {known}, the "
                f"one the journal holds for IMEI {self.dev.imei}: another board with the same "
                "IMEI (a cloned module or an unprogrammed IMEI?), or a corrupted answer. Its "
                f"answer is not recorded for IMEI {self.dev.imei}, and the journal keeps what it "
                "held for that IMEI's keys; check which board this is before running it again")

    async def _has_client_certificate(self, key: KeySpec) -> bool:
        answer = await self.session.command(Command.set("%CMNG", 1, key.sec_tag, _CLIENT_CERT),
                                            timeout=self.settings.timeout_s)
        return any((e.sec_tag, e.type) == (key.sec_tag, _CLIENT_CERT)
                   for e in parse_cmng_list(answer.lines))

    async def _delete(self, key: KeySpec, credential_type: int, attempt: int,
                      reason: str) -> None:
        """``AT%CMNG=3`` of one credential in the key's sec_tag (already gone is fine)."""
        self.step(f"{key.name}: delete")
        try:
            await self.write(delete_credential(key.sec_tag, credential_type),
                             action="delete", key=key, attempt=attempt,
                             timeout=self.settings.timeout_s, credential_type=credential_type,
                             detail={"reason": reason})
        except CmeError as exc:
            if exc.code != CmeCode.NOT_FOUND:
                raise self._retry_or_fail(exc) from exc

    def _retry_or_fail(self, exc: CmeError) -> Exception:
        return Transient(explain_error(exc)) if exc.code in RETRY_CODES else exc

    async def _keygen(self, key: KeySpec, decision: Decision, attempt: int,
                      args: tuple[Any, ...], command: Command, *, present_before: bool,
                      journal_public_key: str | None, before: KeyState) -> KeyRecord:
        """The ``%KEYGEN``, its answer verified and captured. ``before``: what the journal held
        for the key before this invocation worked on it (what an answer of another board puts
        back: an earlier attempt of this invocation may have been on that board too)."""
        self.step(f"{key.name}: keygen")
        try:
            step_id, answer = await self.write(
                command, action="keygen", key=key, attempt=attempt,
                timeout=self.settings.keygen_timeout_s,
                detail={"present_before": present_before, "decision": decision.action.value})
        except CmeError as exc:
            if exc.code == CmeCode.ACTIVE_STATE:
                await self.ensure_offline(force=True)
            raise self._retry_or_fail(exc) from exc
        self.step(f"{key.name}: verify")
        try:
            parsed = parse_keygen(answer.first("%KEYGEN:"))
            another = self._another_board(parsed)
            if another is not None:
                await self.job.journal.another_boards_answer(
                    step_id, answer=parsed.value, error=another, previous=before)
                await self.save_key(key, self._failed(key, another, attempt))
                raise DeviceLost(another)
            verify_keygen(parsed, self.expectation(key, args, parsed))
        except (CredentialError, RemoteProtocolError) as exc:
            await self.job.journal.outcome(step_id, outcome="unknown",
                                           answer="\n".join(answer.lines),
                                           error=f"answer failed verification: {exc}")
            raise
        derived = derived_fields(parsed)  # for the journal and the record alike
        outcome = decision.outcome
        if key.type is KeyType.ENDORSEMENT_KEY:
            outcome = endorsement_outcome(decision=decision, journal_public_key=journal_public_key,
                                          new_public_key=derived["public_key_pem"])
        # The key's result in the run goes into the same journal transaction as the capture
        # (a certificate step after it can only make it a failure), and so does the device's
        # UUID when this is its first capture.
        result = self._key_result(key, outcome, None, attempts=attempt)
        claim = str(parsed.payload.device_uuid) if self.dev.device_uuid is None else None
        owner = await self.job.journal.outcome(step_id, outcome="ok", answer=parsed.value,
                                               derived=derived, result=result,
                                               device_uuid=claim)
        if owner is not None:
            reason = self.uuid_clash(str(parsed.payload.device_uuid), owner)
            await self.save_key(key, self._failed(key, reason, attempt))
            raise DeviceLost(reason)
        self.results_saved[key.name] = outcome
        self.captured_on[key.name] = self.session.openings
        if claim is not None:
            self.dev.device_uuid = claim
            if self.dev.attested_uuid is None:
                # %ATTESTTOKEN was refused, which attest() warned of
                self.log.info("device UUID from its first %KEYGEN answer", device_uuid=claim)
        if outcome in (KeyOutcome.GENERATED, KeyOutcome.RECOVERED, KeyOutcome.CHANGED):
            self.dev.changed = True
        # The verified answer is the proof the key exists (the modem stores it before it
        # answers); the listing after the keys records its SHA column.
        return self._record(key, outcome, parsed.value, attempt, derived)

    def _record(self, key: KeySpec, outcome: KeyOutcome, answer: str | None, attempts: int,
                derived: dict[str, Any] | None = None, stored: KeyState | None = None
                ) -> KeyRecord:
        """The key's record; the CSR / public key / payload fields are those of the answer just
        parsed (``derived``), or what the journal stored when it captured the answer."""
        fields: dict[str, Any] = {}
        if derived is not None:
            fields = derived
        elif stored is not None and stored.public_key_pem:
            fields = {"csr_pem": stored.csr_pem, "public_key_pem": stored.public_key_pem,
                      "cose_payload": stored.cose_payload}
        elif answer:
            try:
                fields = derived_fields(parse_keygen(answer))
            except CredentialError:
                fields = {}
        return KeyRecord(name=key.name, sec_tag=key.sec_tag, type=key.type.value,
                         response=key.response.value, outcome=outcome, keygen_answer=answer,
                         attempts=attempts, **fields)

    def _planned(self, key: KeySpec, decision: Decision) -> KeyRecord:
        self.dev.planned.append({
            "name": key.name, "sec_tag": key.sec_tag, "type": key.type.value,
            "action": decision.action.value, "outcome": decision.outcome.value,
            "changed": decision.changes_device, "reason": decision.reason,
        })
        if decision.changes_device:
            self.dev.changed = True
        return not_attempted(key, planned=decision.action.value)

    # --- results -------------------------------------------------------------------------------

    def _key_result(self, key: KeySpec, outcome: KeyOutcome, error: str | None, *,
                    attempts: int, replace: bool = False) -> KeyResult:
        """The key's result in this run, as the journal records it."""
        return KeyResult(run_id=self.job.run_id, slot=self.slot.name, imei=self.dev.imei,
                         key_name=key.name, sec_tag=key.sec_tag, key_type=key.type.code,
                         outcome=outcome, error=error, attempts=attempts, replace=replace)

    async def save_key(self, key: KeySpec, record: KeyRecord) -> None:
        """Keep the key's result, in memory and (real runs) in the journal for the manifest. A
        result journaled with the key's capture is journaled again only when the certificate
        step made it a failure (which then replaces it)."""
        saved = self.results_saved.get(key.name)
        if not self.job.check and self.dev.imei and saved is not record.outcome:
            kept = await self.job.journal.key_result(self._key_result(
                key, record.outcome, record.error, attempts=0 if saved else record.attempts,
                replace=saved is not None and record.outcome is KeyOutcome.FAILED))
            if kept is not record.outcome:
                self.log.debug("outcome kept from earlier in this run", key=key.name, kept=kept)
        self.dev.keys.append(record)

    async def finish(self, outcome: DeviceOutcome, error: str | None
                     ) -> tuple[DeviceOutcome, str | None]:
        """Record the keys never reached, settle the device outcome and journal the slot's
        result."""
        done = {k.name for k in self.dev.keys}
        for key in self.slot.keys:
            if key.name not in done:
                await self.save_key(key, not_attempted(key))
        failed = [k for k in self.dev.keys if k.outcome is KeyOutcome.FAILED]
        if outcome is DeviceOutcome.DONE and failed:
            outcome = DeviceOutcome.FAILED
            error = "; ".join(f"{k.name}: {k.error}" for k in failed)
        if not self.job.check:
            await self.job.journal.slot_result(
                run_id=self.job.run_id, slot=self.slot.name, port=self.slot.port,
                imei=self.dev.imei or None, outcome=outcome.value, error=error,
                usb=self.slot.usb)
        word = outcome_word(outcome, check=self.job.check)
        self.step(word if error is None else f"{word}: {error}")
        return outcome, error


async def provision_slot(job: SlotJob) -> SlotResult:
    """Provision one slot. Never raises a FleetError: failures are in the result.

    Each key's result is written to the journal as soon as it is known and the slot's result at
    the end (also when the run is cancelled: shielded, and handed to ``job.on_result``), so the
    manifest and the output of a run that was stopped halfway still say what was done.
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
                record = await certify_key(flow, key, record)  # keys with `ca:`
                await flow.save_key(key, record)
                flow.keys_done += 1
                flow.report_progress()
                if dev.out_of_time:
                    raise DeviceLost(flow.out_of_time(record))
            await flow.record_new_keys_sha()
            await flow.restore_mode()
        except (DeviceLost, DeviceSwapped, PortBusy) as exc:
            error = str(exc)
        except (FleetError, OSError) as exc:  # OSError: one that escaped its boundary
            error = explain_error(exc) if isinstance(exc, FleetError) else str(exc)
        if error is not None:
            outcome = DeviceOutcome.FAILED
            flow.log.error("device failed", error=error)
            await flow.try_restore_after_failure()
    except anyio.get_cancelled_exc_class():
        outcome = DeviceOutcome.INTERRUPTED
        error = "the run was stopped while this slot was being worked on: run again to resume"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await flow.session.close()
            journal_error = None
            try:
                outcome, error = await flow.finish(outcome, error)
            except JournalError as exc:  # a full disk: the run reports it, from this result
                journal_error = str(exc)
                if outcome is DeviceOutcome.DONE:
                    outcome = DeviceOutcome.FAILED
                error = "; ".join(filter(None, (error, f"not journaled: {exc}")))
            line = flow.session.line if dev.imei else None
            result = SlotResult(
                record=DeviceRecord(slot=job.slot.name, port=job.slot.port,
                                    imei=dev.imei or None, device_uuid=dev.device_uuid,
                                    model=dev.model, firmware=dev.firmware, outcome=outcome,
                                    keys=tuple(dev.keys), error=error, changed=dev.changed,
                                    usb=job.slot.usb,
                                    interface=line.interface.value if line else None,
                                    terminator=line.terminator.value if line else None),
                planned=tuple(dev.planned), journal_error=journal_error)
            job.on_result(result)
    return result
