"""Client certificates for the keys fleet generates.

Modules: ``pem`` (strict PEM parsing, the canonical LF-only bytes written to the modem and their
SHA-256), ``authority`` (the local CA and the external-command CA, the CSR and certificate
checks), ``command`` (running a CA program), ``load`` (reading a plan's CA files), ``decide``
(what to do with a certificate or chain: pure, table-tested), ``report`` (the ``certificate`` /
``ca_chain`` fields of a key), ``devca`` (``fleet ca init``), ``nrfcloud`` (``fleet export
nrfcloud``), ``cells`` (the spreadsheet-safe CSV cells every export writes). The device side
is :mod:`fleet.provision.certs`.
"""

from fleet.certs.authority import (
    CertificateAuthority,
    Chain,
    CommandCa,
    LocalCa,
    check_csr,
    check_issued,
)
from fleet.certs.pem import (
    CertSummary,
    canonical_pem,
    parse_pem_certificates,
    pem_sha256,
    summarize,
)

__all__ = [
    "CertSummary",
    "CertificateAuthority",
    "Chain",
    "CommandCa",
    "LocalCa",
    "canonical_pem",
    "check_csr",
    "check_issued",
    "parse_pem_certificates",
    "pem_sha256",
    "summarize",
]
