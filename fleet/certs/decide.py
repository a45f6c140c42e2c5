"""What to do with a key's client certificate and CA chain: pure functions of (plan, journal,
what the device lists), like :mod:`fleet.provision.decide` for keys.

How this works
--------------
The flow lists the sec_tag (``AT%CMNG=1,<tag>``: the SHA of the certificate (type 1) and of the
root CA (type 0) as stored), reads the journal's :class:`fleet.state.CertState` for each, and
asks these functions. The journal knows every certificate fleet issued for a sec_tag *before* it
was written, and the SHA-256 of the CSR it was issued for, so the decision keys on the CSR: a
re-generated key (new CSR) never keeps the old key's certificate.

Client certificate (type 1), ``fleet's`` meaning journaled as issued by fleet:

=======================================  ==========================  ======  ===========
journal                                  device lists                action  outcome
=======================================  ==========================  ======  ===========
fleet's, for this CSR (confirmed)        its SHA                     NOTHING unchanged
fleet's, for this CSR (never confirmed)  its SHA                     NOTHING issued
fleet's, for this CSR (never confirmed)  nothing / another SHA       WRITE   issued
fleet's, for this CSR (confirmed)        nothing / another SHA       WRITE   rewritten
anything else                            nothing                     SIGN    issued
fleet's, for an earlier CSR              its SHA                     SIGN    issued
anything else                            a certificate for this key  if_exists: keep ->
                                         (pre-existing)              KEEP pre-existing,
                                                                     replace -> SIGN, fail -> FAIL
anything else                            a certificate for another   SIGN issued (fail -> FAIL):
                                         key, or unreadable          it cannot work with this key
=======================================  ==========================  ======  ===========

WRITE never signs again: the certificate journaled before the first write is written, so a crash
between signing and writing costs no second certificate. Whether a certificate fleet did not
write carries this key's public key needs ``AT%CMNG=2`` (:func:`needs_device_certificate`).

CA chain (type 0), compared by the SHA of the plan's chain: the same SHA -> unchanged (written
when fleet's write of it was never confirmed: its answer was lost); nothing ->
written (rewritten when fleet had confirmed it before); a chain fleet wrote earlier -> rewritten;
one fleet did not write -> ``if_exists`` (keep -> pre-existing, replace -> written, fail).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fleet.at import Command, delete_credential
from fleet.nrf91 import CredentialType
from fleet.records import CertOutcome
from fleet.state import CertState

__all__ = ["CertAction", "CertDecision", "decide_certificate", "decide_chain",
           "needs_device_certificate"]

_FLEETS = ("issued", "confirmed")


class CertAction(enum.StrEnum):
    """What the flow does for a certificate."""

    NOTHING = "nothing"  #: the right certificate is on the device
    SIGN = "sign"  #: sign the CSR, journal the certificate, write it
    WRITE = "write"  #: write the journaled certificate (or the plan's chain)
    KEEP = "keep"  #: keep a certificate fleet did not write
    FAIL = "fail"  #: `if_exists: fail` and a certificate fleet did not write


@dataclass(frozen=True, slots=True, kw_only=True)
class CertDecision:
    action: CertAction
    outcome: CertOutcome
    reason: str

    @property
    def writes(self) -> bool:
        return self.action in (CertAction.SIGN, CertAction.WRITE)


def _fleets_for(journal: CertState | None, csr_sha256: str) -> bool:
    return (journal is not None and journal.state in _FLEETS and journal.pem is not None
            and journal.source_sha256 == csr_sha256)


def _kept_before(journal: CertState | None, device_sha: str, source: str | None) -> bool:
    return (journal is not None and journal.state == "pre-existing"
            and journal.sha256 == device_sha and journal.source_sha256 == source)


def needs_device_certificate(*, device_sha: str | None, journal: CertState | None,
                             csr_sha256: str) -> bool:
    """Whether :func:`decide_certificate` needs to know if the certificate on the device
    carries this key's public key (read it with ``AT%CMNG=2,<tag>,1``)."""
    if device_sha is None or _fleets_for(journal, csr_sha256):
        return False
    if journal is not None and journal.state in _FLEETS and journal.sha256 == device_sha:
        return False
    return not _kept_before(journal, device_sha, csr_sha256)


def decide_certificate(*, sec_tag: int, device_sha: str | None, journal: CertState | None,
                       csr_sha256: str, device_cert_matches_key: bool | None,
                       if_exists: str) -> CertDecision:
    """The decision for the client certificate in ``sec_tag`` of a key whose CSR has SHA-256
    ``csr_sha256`` (hex of the raw CSR body). ``device_cert_matches_key``: whether the
    certificate the device holds carries the CSR's public key (None when not read: only allowed
    where :func:`needs_device_certificate` is False)."""
    _check_if_exists(if_exists)
    if journal is not None and _fleets_for(journal, csr_sha256):
        if device_sha == journal.sha256 and journal.state == "confirmed":
            return CertDecision(action=CertAction.NOTHING, outcome=CertOutcome.UNCHANGED,
                                reason="the certificate issued for this CSR is on the device")
        if device_sha == journal.sha256:
            return CertDecision(action=CertAction.NOTHING, outcome=CertOutcome.ISSUED,
                                reason="the certificate issued for this CSR reached the device "
                                "(the write's answer was lost): confirm it")
        where = ("the device holds no certificate" if device_sha is None
                 else "the device holds another certificate")
        if journal.state == "confirmed":
            return CertDecision(action=CertAction.WRITE, outcome=CertOutcome.REWRITTEN,
                                reason=f"{where}: write the one issued for this CSR again")
        return CertDecision(action=CertAction.WRITE, outcome=CertOutcome.ISSUED,
                            reason=f"{where}: write the certificate issued for this CSR "
                            "(signed and journaled earlier, never confirmed)")
    if device_sha is None:
        return CertDecision(action=CertAction.SIGN, outcome=CertOutcome.ISSUED,
                            reason="no certificate in the sec_tag")
    if journal is not None and journal.state in _FLEETS and journal.sha256 == device_sha:
        return CertDecision(action=CertAction.SIGN, outcome=CertOutcome.ISSUED,
                            reason="the certificate on the device was issued for an earlier "
                            "key of this sec_tag")
    matches = device_cert_matches_key
    if _kept_before(journal, device_sha, csr_sha256):
        matches = True
    if matches is None:
        raise ValueError("the decision needs to know whether the device's certificate carries "
                         "this key (needs_device_certificate)")
    if matches or if_exists == "fail":
        return _not_fleets(if_exists, "client certificate", CertAction.SIGN, CertOutcome.ISSUED,
                           delete_credential(sec_tag, CredentialType.CLIENT_CERT))
    return CertDecision(action=CertAction.SIGN, outcome=CertOutcome.ISSUED,
                        reason="the certificate fleet did not write in this sec_tag is not for "
                        "this key (it cannot work with it): replace it")


def decide_chain(*, sec_tag: int, device_sha: str | None, journal: CertState | None,
                 chain_sha256: str, if_exists: str) -> CertDecision:
    """The decision for the root CA (type 0) of ``sec_tag``, whose plan has a ``chain:`` with
    SHA-256 ``chain_sha256`` (of the canonical PEM written)."""
    _check_if_exists(if_exists)
    if device_sha == chain_sha256:
        if journal is not None and journal.state == "issued" and journal.sha256 == chain_sha256:
            return CertDecision(action=CertAction.NOTHING, outcome=CertOutcome.WRITTEN,
                                reason="the plan's chain reached the device (the write's answer "
                                "was lost): confirm it")
        return CertDecision(action=CertAction.NOTHING, outcome=CertOutcome.UNCHANGED,
                            reason="the plan's chain is on the device")
    mine = journal if journal is not None and journal.state in _FLEETS else None
    if device_sha is None:
        again = mine is not None and mine.state == "confirmed" and mine.sha256 == chain_sha256
        return CertDecision(action=CertAction.WRITE,
                            outcome=CertOutcome.REWRITTEN if again else CertOutcome.WRITTEN,
                            reason="no root CA in the sec_tag")
    if mine is not None and mine.sha256 == device_sha:
        return CertDecision(action=CertAction.WRITE, outcome=CertOutcome.REWRITTEN,
                            reason="the device holds a chain fleet wrote earlier; the plan's "
                            "chain is another one")
    return _not_fleets(if_exists, "root CA", CertAction.WRITE, CertOutcome.WRITTEN,
                       delete_credential(sec_tag, CredentialType.ROOT_CA_CERT))


def _check_if_exists(if_exists: str) -> None:
    if if_exists not in ("keep", "replace", "fail"):
        raise ValueError(f"invalid if_exists {if_exists!r}")


def _not_fleets(if_exists: str, what: str, replace: CertAction, replaced: CertOutcome,
                delete: Command) -> CertDecision:
    """``if_exists`` for a ``what`` fleet did not write: keep it, replace it (``replace``
    leading to ``replaced``) or fail (saying to ``delete`` it)."""
    found = f"a {what} fleet did not write is in this sec_tag"
    if if_exists == "keep":
        return CertDecision(action=CertAction.KEEP, outcome=CertOutcome.PRE_EXISTING,
                            reason=f"{found}; if_exists: keep")
    if if_exists == "replace":
        return CertDecision(action=replace, outcome=replaced,
                            reason=f"{found}; if_exists: replace")
    return CertDecision(action=CertAction.FAIL, outcome=CertOutcome.FAILED,
                        reason=f"{found} (if_exists: fail); delete it with {delete} or set "
                        "if_exists: keep/replace")
