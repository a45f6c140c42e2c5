"""The ``certificate`` and ``ca_chain`` fields of a key, from what the journal holds.

Both the run's JSON output and the manifest take them from here, so they always say the same
thing. A certificate's PEM, serial, issuer and dates are shown only when it was issued (or found)
for the key's current CSR: after a key is generated again, an old certificate is never reported
as this key's.
"""

from __future__ import annotations

from typing import Any

from fleet.journal import CertState, CertStateKind
from fleet.records import CertOutcome

__all__ = ["certificate_extra"]


def certificate_extra(certificate: CertState | None, chain: CertState | None, *,
                      csr_sha256: str | None) -> dict[str, Any]:
    """``{"certificate": {...}, "ca_chain": {...}}`` (each only when the journal has an outcome
    for it): ``certificate`` = outcome, error, pem, sha256, cmng_sha256 (the SHA the modem listed
    when it was confirmed), serial (hex), issuer (RFC 4514), not_after; ``ca_chain`` = outcome,
    error, sha256, cmng_sha256."""
    out: dict[str, Any] = {}
    if certificate is not None and _outcome(certificate) is not None:
        mine = certificate.pem is not None and certificate.source_sha256 == csr_sha256
        out["certificate"] = {
            "outcome": _outcome(certificate),
            "error": certificate.error,
            "pem": certificate.pem if mine else None,
            "sha256": certificate.sha256 if mine else None,
            "cmng_sha256": certificate.cmng_sha256 if mine else None,
            "serial": certificate.serial if mine else None,
            "issuer": certificate.issuer if mine else None,
            "not_after": certificate.not_after if mine else None,
        }
    if chain is not None and _outcome(chain) is not None:
        out["ca_chain"] = {"outcome": _outcome(chain), "error": chain.error,
                           "sha256": chain.sha256, "cmng_sha256": chain.cmng_sha256}
    return out


def _outcome(cert: CertState) -> CertOutcome | None:
    """The run's outcome for ``cert``; ``interrupted`` for one issued to be written whose
    outcome never came (the write may have reached the device)."""
    if cert.outcome is None and cert.state is CertStateKind.ISSUED:
        return CertOutcome.INTERRUPTED
    return cert.outcome
