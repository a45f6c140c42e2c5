"""The certificate step of the per-device flow: sign a key's CSR, write the certificate and the
CA chain to the key's sec_tag, confirm both by SHA-256.

How this works
--------------
:func:`certify_key` runs after a client key whose spec has ``ca:`` has a captured, verified CSR
(the key was generated, recovered, or is unchanged from an earlier run). One attempt:

1. inspect: ``AT%CMNG=1,<tag>`` lists the SHA of the stored certificate (type 1) and root CA
   (type 0); the journal says what fleet issued for the tag (:meth:`Journal.cert_state`); when it
   matters, ``AT%CMNG=2,<tag>,1`` reads a certificate fleet did not write, to see whether it
   carries this key;
2. decide (:mod:`fleet.certs.decide`, pure, keyed on the SHA-256 of the CSR);
3. act: a new certificate is signed (the CSR is checked first, the certificate after) and
   journaled BEFORE it is written, so a crash after signing never signs again - the next run
   writes the journaled one; each ``AT%CMNG=0,<tag>,<type>,"<PEM>"`` (LF line endings only) is
   bracketed by a journal intent and outcome (``cert_write`` / ``chain_write``) and needs the
   modem offline (518: ``AT+CFUN=4`` and once more);
4. confirm: ``AT%CMNG=1,<tag>`` must list the SHA-256 of exactly the bytes written (or kept).

A timeout or lost connection starts the attempt again from inspection (bounded by ``retries``),
like a key. A certificate that cannot be issued, written or confirmed fails the key, and so the
device, with the reason; its ``certificate`` field says so. ``--check`` runs 1 and 2 only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import Any

from fleet.at import Command, Multiline
from fleet.certs.authority import CommandCa, LocalCa, check_csr
from fleet.certs.decide import (
    CertAction,
    CertDecision,
    decide_certificate,
    decide_chain,
    needs_device_certificate,
)
from fleet.certs.pem import parse_pem_certificates, public_key_der, summarize
from fleet.certs.report import certificate_extra
from fleet.credentials import (
    KeygenAnswer,
    SubjectPairs,
    parse_cmng_list,
    parse_cmng_read,
    parse_keygen,
)
from fleet.errors import (
    CertificateError,
    CommandError,
    CredentialError,
    FleetError,
)
from fleet.nrf91 import CredentialType
from fleet.plan import KeySpec
from fleet.provision.base import DeviceWork, explain_error
from fleet.records import CertOutcome, KeyOutcome, KeyRecord
from fleet.retry import RETRYABLE
from fleet.state import CertState

__all__ = ["certify_key"]

#: Key outcomes that leave a captured, verified CSR to certify.
_WITH_CSR = frozenset({KeyOutcome.GENERATED, KeyOutcome.UNCHANGED, KeyOutcome.RECOVERED})
_CERT, _CHAIN = CredentialType.CLIENT_CERT, CredentialType.ROOT_CA_CERT


async def certify_key(flow: DeviceWork, key: KeySpec, record: KeyRecord) -> KeyRecord:
    """Give the key of ``record`` its certificate (and the CA chain) when its spec has a CA.
    Returns ``record`` with ``extra["certificate"]`` / ``extra["ca_chain"]``; a failure makes it
    a FAILED key whose error names the certificate. Raises no FleetError: the key's result is
    always returned, to be journaled."""
    if key.ca is None:
        return record
    if flow.job.check:
        await _plan(flow, key, record)
        return record
    if record.outcome not in _WITH_CSR or record.keygen_answer is None:
        return record
    step = _Step(flow, key, parse_keygen(record.keygen_answer))
    error = await step.run()
    extra = await step.extra()
    if error is None:
        return dataclasses.replace(record, extra={**record.extra, **extra})
    return dataclasses.replace(record, outcome=KeyOutcome.FAILED, error=f"certificate: {error}",
                               extra={**record.extra, **extra})


async def _plan(flow: DeviceWork, key: KeySpec, record: KeyRecord) -> None:
    """``--check``: what the certificate step would do, with read-only commands only."""
    planned = record.extra.get("planned")
    state = await flow.job.journal.key_state(flow.dev.imei, key.sec_tag, key.type.code)
    decisions: list[tuple[str, CertDecision]] = []
    if planned == "nothing" and state.answer:
        step = _Step(flow, key, parse_keygen(state.answer))
        decisions = list((await step.inspect()).items())
    elif planned in ("generate", "recover", "replace"):
        new = CertDecision(action=CertAction.SIGN, outcome=CertOutcome.ISSUED,
                           reason="the key will be generated: its CSR will be signed")
        decisions = [("certificate", new)]
        if key.ca is not None and key.ca.chain is not None:
            decisions.append(("ca_chain", CertDecision(
                action=CertAction.WRITE, outcome=CertOutcome.WRITTEN,
                reason="written with the new certificate unless already there")))
    for what, decision in decisions:
        flow.dev.planned.append({
            "name": key.name, "sec_tag": key.sec_tag, "type": what,
            "action": decision.action.value, "outcome": decision.outcome.value,
            "changed": decision.writes, "reason": decision.reason})
        flow.dev.changed = flow.dev.changed or decision.writes


class _Step:
    """The certificate step for one key of one device."""

    def __init__(self, flow: DeviceWork, key: KeySpec, answer: KeygenAnswer) -> None:
        assert key.ca is not None and answer.csr is not None
        self.flow = flow
        self.key = key
        self.ca: LocalCa | CommandCa = key.ca
        self.answer = answer
        self.csr = answer.csr
        self.csr_sha256 = hashlib.sha256(answer.body).hexdigest()
        self.imei = flow.dev.imei
        self.journal = flow.job.journal
        self.device_pem: str | None = None  #: the certificate read from the device, if any
        self.listed: dict[int, str | None] = {}  #: the latest AT%CMNG=1 listing (type: SHA)
        self.known: dict[int, CertState | None] = {}  #: the journal's view (type: state)

    # --- the attempt loop ----------------------------------------------------------------------

    async def run(self) -> str | None:
        """Do the step with retries; the reason it failed, or None. The outcome is journaled."""
        attempts = 0

        async def once(number: int) -> None:
            nonlocal attempts
            attempts = number
            await self.flow.ready()
            await self.attempt(number)

        try:
            await self.flow.policy.step(once)
            return None
        except RETRYABLE as exc:
            self.flow.dev.out_of_time = self.flow.policy.expired()
            reason = f"{self.flow.policy.gave_up(attempts)}: {exc}"
        except CommandError as exc:
            reason = explain_error(exc)
        except FleetError as exc:
            # A CertificateError, or the device lost for good: the key's result is still
            # returned (and journaled); the device fails at its next step.
            reason = str(exc)
        self.flow.log.warning("certificate failed", key=self.key.name, error=reason)
        await self.result(_CERT, CertOutcome.FAILED, reason)
        if self.ca.chain is not None:
            await self.result(_CHAIN, CertOutcome.FAILED, reason)
        return reason

    async def attempt(self, attempt: int) -> None:
        self.flow.step(f"{self.key.name}: certificate")
        decisions = await self.inspect()
        cert, chain = decisions["certificate"], decisions.get("ca_chain")
        for decision in (cert, chain):
            if decision is not None and decision.action is CertAction.FAIL:
                raise CertificateError(decision.reason)
        expected = {_CERT: await self.prepare_certificate(cert)}
        if chain is not None:
            expected[_CHAIN] = await self.prepare_chain(chain)
        wrote = False
        if cert.writes:
            await self.write(_CERT, "cert_write", attempt)
            wrote = True
        if chain is not None and chain.writes:
            await self.write(_CHAIN, "chain_write", attempt)
            wrote = True
        listed = await self.list_tag() if wrote else self.listed
        for cert_type, sha in expected.items():
            if listed.get(cert_type) != sha:
                what = "certificate" if cert_type == _CERT else "CA chain"
                if cert_type in listed and listed[cert_type] is None:
                    raise CertificateError(
                        f"AT%CMNG=1 lists the {what} in sec_tag {self.key.sec_tag} without a "
                        "SHA-256 column, so the bytes on the device cannot be confirmed: this "
                        "firmware is too old for the certificate step (update the modem "
                        "firmware, or drop `ca:` from the plan)")
                raise CertificateError(
                    f"after writing, AT%CMNG=1 lists {listed.get(cert_type) or 'nothing'} for "
                    f"the {what} in sec_tag {self.key.sec_tag}, expected {sha}")
            await self.journal.cert_confirmed(imei=self.imei, sec_tag=self.key.sec_tag,
                                              cert_type=cert_type, cmng_sha256=sha)
        await self.result(_CERT, cert.outcome, None)
        if chain is not None:
            await self.result(_CHAIN, chain.outcome, None)

    # --- inspect and decide --------------------------------------------------------------------

    async def list_tag(self) -> dict[int, str | None]:
        """``{type: SHA}`` of what ``AT%CMNG=1,<tag>`` lists for types 0 and 1."""
        answer = await self.flow.session.command(Command.set("%CMNG", 1, self.key.sec_tag),
                                                 timeout=self.flow.settings.timeout_s)
        self.listed = {e.type: e.sha256 for e in parse_cmng_list(answer.lines)
                       if e.sec_tag == self.key.sec_tag and e.type in (_CERT, _CHAIN)}
        return self.listed

    async def read_device_certificate(self) -> bool:
        """Read the device's client certificate; whether it carries this key's public key."""
        try:
            answer = await self.flow.session.command(
                Command.set("%CMNG", 2, self.key.sec_tag, _CERT),
                timeout=self.flow.settings.timeout_s)
            _, content = parse_cmng_read(list(answer.lines))
            found = parse_pem_certificates(content, "the device's certificate")[0]
        except (CommandError, CredentialError, CertificateError) as exc:
            self.flow.log.info("device certificate not readable", key=self.key.name,
                               error=str(exc))
            return False
        self.device_pem = content
        return public_key_der(found) == public_key_der(self.csr)

    async def inspect(self) -> dict[str, CertDecision]:
        """The decisions for the certificate and, when the plan has one, the chain."""
        listed = await self.list_tag()
        await self.reload(_CERT)
        if self.ca.chain is not None:
            await self.reload(_CHAIN)
        known = self.known[_CERT]
        device_sha = listed.get(_CERT)
        matches = None
        if needs_device_certificate(device_sha=device_sha, journal=known,
                                    csr_sha256=self.csr_sha256):
            matches = await self.read_device_certificate()
        tag, if_exists = self.key.sec_tag, str(self.key.if_exists)
        out = {"certificate": decide_certificate(
            sec_tag=tag, device_sha=device_sha, journal=known, csr_sha256=self.csr_sha256,
            device_cert_matches_key=matches, if_exists=if_exists)}
        if self.ca.chain is not None:
            out["ca_chain"] = decide_chain(
                sec_tag=tag, device_sha=listed.get(_CHAIN), journal=self.known[_CHAIN],
                chain_sha256=self.ca.chain.sha256, if_exists=if_exists)
        self.flow.log.debug("certificate decision", key=self.key.name,
                            **{k: f"{d.action}: {d.reason}" for k, d in out.items()})
        return out

    # --- act -----------------------------------------------------------------------------------

    async def prepare_certificate(self, decision: CertDecision) -> str:
        """Journal what will be on the device (signing first when needed); its SHA."""
        key, journal = self.key, self.journal
        if decision.action is CertAction.SIGN:
            self.flow.step(f"{key.name}: sign")
            check_csr(self.csr, subject=self.expected_subject())
            issued = summarize(await self.ca.issue(self.csr, now=datetime.now(UTC)))
            await journal.cert_issued(
                run_id=self.flow.job.run_id, imei=self.imei, sec_tag=key.sec_tag,
                cert_type=_CERT, state="issued", source_sha256=self.csr_sha256, pem=issued.pem,
                sha256=issued.sha256,
                serial=issued.serial, issuer=issued.issuer, not_after=issued.not_after)
            self.flow.log.info("certificate issued", key=key.name, serial=issued.serial,
                               issuer=issued.issuer)
            await self.reload(_CERT)
        elif decision.action is CertAction.KEEP:
            sha = self.listed.get(_CERT)
            assert sha is not None
            fields: dict[str, Any] = {"serial": None, "issuer": None, "not_after": None}
            if self.device_pem is not None:
                found = summarize(parse_pem_certificates(self.device_pem, "certificate")[0])
                fields = {"serial": found.serial, "issuer": found.issuer,
                          "not_after": found.not_after}
            known = self.known[_CERT]
            if known is None or known.state != "pre-existing" or known.sha256 != sha:
                await journal.cert_issued(run_id=self.flow.job.run_id, imei=self.imei,
                                          sec_tag=key.sec_tag, cert_type=_CERT,
                                          state="pre-existing", source_sha256=self.csr_sha256,
                                          pem=self.device_pem, sha256=sha, **fields)
            return sha
        known = self.known[_CERT]
        assert known is not None and known.sha256 is not None
        return known.sha256

    async def prepare_chain(self, decision: CertDecision) -> str:
        chain = self.ca.chain
        assert chain is not None
        sec_tag = self.key.sec_tag
        known = self.known[_CHAIN]
        if decision.action is CertAction.KEEP:
            sha = self.listed.get(_CHAIN)
            assert sha is not None
            if known is None or known.state != "pre-existing" or known.sha256 != sha:
                await self.journal.cert_issued(run_id=self.flow.job.run_id, imei=self.imei,
                                               sec_tag=sec_tag, cert_type=_CHAIN,
                                               state="pre-existing",
                                               source_sha256=None, pem=None, sha256=sha)
            return sha
        if known is None or known.sha256 != chain.sha256 or known.state == "pre-existing":
            await self.journal.cert_issued(run_id=self.flow.job.run_id, imei=self.imei,
                                           sec_tag=sec_tag, cert_type=_CHAIN,
                                           state="issued", source_sha256=None, pem=chain.pem,
                                           sha256=chain.sha256)
            await self.reload(_CHAIN)
        return chain.sha256

    def expected_subject(self) -> SubjectPairs | None:
        """The subject the plan requests for this device (what the flow checked the CSR for)."""
        key = self.key
        args = key.keygen_args(self.flow.template_context())
        return self.flow.expectation(key, args, self.answer).subject

    async def write(self, cert_type: int, action: str, attempt: int) -> None:
        """``AT%CMNG=0,<tag>,<type>,"<PEM>"`` of what the journal holds, offline."""
        known = self.known[cert_type]
        assert known is not None and known.pem is not None
        command = Command.set("%CMNG", 0, self.key.sec_tag, cert_type, Multiline(known.pem))
        detail = {"credential_type": cert_type, "sha256": known.sha256, "serial": known.serial}
        self.flow.step(f"{self.key.name}: write {'certificate' if cert_type else 'CA chain'}")
        await self.flow.ensure_offline()

        async def send(number: int) -> None:
            if number > 1:
                await self.flow.ensure_offline(force=True)
            await self.flow.write(command, action=action, key=self.key, attempt=attempt,
                                  timeout=self.flow.settings.timeout_s, detail=detail)

        await self.flow.policy.after_active_state(send)  # 518: offline, once more
        self.flow.dev.changed = True

    # --- record --------------------------------------------------------------------------------

    async def reload(self, cert_type: int) -> None:
        """Read what the journal holds for ``cert_type`` in this tag into ``known``."""
        self.known[cert_type] = await self.journal.cert_state(self.imei, self.key.sec_tag,
                                                              cert_type)

    async def result(self, cert_type: int, outcome: CertOutcome, error: str | None) -> None:
        await self.journal.cert_result(run_id=self.flow.job.run_id, imei=self.imei,
                                       sec_tag=self.key.sec_tag, cert_type=cert_type,
                                       outcome=outcome.value, error=error)

    async def extra(self) -> dict[str, Any]:
        """The key's ``certificate`` / ``ca_chain`` fields, from the journal."""
        cert = await self.journal.cert_state(self.imei, self.key.sec_tag, _CERT)
        chain = (await self.journal.cert_state(self.imei, self.key.sec_tag, _CHAIN)
                 if self.ca.chain is not None else None)
        if cert is not None and cert.run_id != self.flow.job.run_id:
            cert = None
        if chain is not None and chain.run_id != self.flow.job.run_id:
            chain = None
        return certificate_extra(cert, chain, csr_sha256=self.csr_sha256)
