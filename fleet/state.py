"""What fleet knows of a device's keys and certificates: the input of the pure decisions
(:mod:`fleet.provision.decide`, :mod:`fleet.certs.decide`), which the journal stores and reads
back (:mod:`fleet.journal`).

Frozen, keyword-only dataclasses; the kinds of state are string enums whose values are the words
the journal stores, so a row with a word the journal never writes is refused when it is read
(``ValueError``, a :class:`fleet.errors.JournalError` to the journal's caller).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from fleet.records import CertOutcome

__all__ = ["CertState", "CertStateKind", "KeyState", "KeyStateKind", "PendingIntent"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingIntent:
    """A %KEYGEN whose outcome is unknown (the run died, timed out or lost the answer)."""

    step_id: int
    present_before: bool


class KeyStateKind(enum.StrEnum):
    """What the journal holds for one key of one device (``keys.state``)."""

    CAPTURED = "captured"  #: fleet made it and holds its verified answer
    PRE_EXISTING = "pre-existing"  #: it was there before fleet and was kept
    DELETED = "deleted"  #: fleet deleted it
    INTENT = "intent"  #: a %KEYGEN was sent; no answer captured (see ``pending``)


class CertStateKind(enum.StrEnum):
    """What the journal holds for a certificate or chain (``certs.state``)."""

    ISSUED = "issued"  #: fleet signed it (or chose the chain) and is about to write it
    CONFIRMED = "confirmed"  #: the modem lists exactly the bytes fleet wrote
    PRE_EXISTING = "pre-existing"  #: one fleet did not write, kept


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyState:
    """What the journal knows about one key of one device."""

    state: KeyStateKind | None = None  #: None: never seen
    answer: str | None = None  #: the captured, verified %KEYGEN answer
    cmng_sha: str | None = None
    pending: PendingIntent | None = None
    #: What the captured answer yields (stored at capture, so a re-run need not decode it again)
    csr_pem: str | None = None
    public_key_pem: str | None = None
    cose_payload: dict[str, Any] | None = None
    #: Why fleet cannot tell whether the key on the device is the one the journal holds (a
    #: %KEYGEN for it was answered by another board under this IMEI); a capture or a delete of
    #: the key ends it.
    disputed: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CertState:
    """What the journal knows of one certificate (type 1) or chain (type 0) of a device."""

    imei: str
    sec_tag: int
    type: int
    state: CertStateKind | None = None  #: None: only a result
    source_sha256: str | None = None  #: hex SHA-256 of the CSR body it was issued for
    pem: str | None = None  #: the exact text written (or read, for a pre-existing one)
    sha256: str | None = None  #: upper-case hex SHA-256 the modem lists for it
    serial: str | None = None
    issuer: str | None = None
    not_after: str | None = None
    cmng_sha256: str | None = None  #: the SHA the modem listed when it was confirmed
    run_id: str | None = None  #: the run of ``outcome``
    outcome: CertOutcome | None = None
    error: str | None = None
