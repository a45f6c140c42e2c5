"""The modem's side of ``%KEYGEN``: build the exact answer bytes a real nRF91 produces.

Used by the simulator and by tests, so the parser is always exercised against answers built from
the same format definition (tag 18 COSE_Sign1, tag 55799 payload, NULL-parameter CSR).
"""

from __future__ import annotations

import hashlib
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.credentials.attributes import parse_attributes
from fleet.credentials.cose import encode_keygen_payload, sign_cose_sign1
from fleet.credentials.der import add_sigalg_null
from fleet.credentials.keygen import b64url_encode

__all__ = ["DEFAULT_KEY_USAGE", "build_csr", "build_keygen_answer", "key_usage_extension",
           "public_key_der"]

#: What the modem uses when ``<key_usage>`` is omitted.
DEFAULT_KEY_USAGE = "111010000"


def key_usage_extension(bits: str) -> x509.KeyUsage:
    """The KeyUsage for a 9-digit ``<key_usage>`` string (``decipherOnly`` is refused)."""
    if len(bits) != 9 or set(bits) - {"0", "1"}:
        raise ValueError(f"key usage must be 9 binary digits, not {bits!r}")
    if bits[8] == "1":
        raise ValueError("decipherOnly is not supported by the modem")
    flag = [b == "1" for b in bits]
    return x509.KeyUsage(
        digital_signature=flag[0],
        content_commitment=flag[1],
        key_encipherment=flag[2],
        data_encipherment=flag[3],
        key_agreement=flag[4],
        key_cert_sign=flag[5],
        crl_sign=flag[6],
        encipher_only=flag[7] and flag[4],
        decipher_only=False,
    )


def build_csr(
    key: ec.EllipticCurvePrivateKey,
    *,
    device_uuid: uuid.UUID,
    attributes: str | None = None,
    key_usage: str | None = None,
    null_parameter: bool = True,
) -> bytes:
    """A DER CSR as the modem makes it: subject from ``attributes`` (default ``CN=<uuid>``),
    KeyUsage from ``key_usage`` (default ``111010000``), ecdsa-with-SHA256 signature, with the
    explicit NULL parameter when ``null_parameter``."""
    if attributes:
        name = x509.Name([x509.NameAttribute(oid, value) for oid, value in
                          parse_attributes(attributes)])
    else:
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, str(device_uuid))])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name).add_extension(
        key_usage_extension(key_usage or DEFAULT_KEY_USAGE), critical=False
    )
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return add_sigalg_null(der) if null_parameter else der


def public_key_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 91-byte DER SubjectPublicKeyInfo the modem returns for public-key answers."""
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def build_keygen_answer(
    body: bytes,
    *,
    payload_id: int,
    device_uuid: uuid.UUID,
    sec_tag: int,
    identity_key: ec.EllipticCurvePrivateKey,
    nonce: bytes,
) -> str:
    """The ``<body>.<cose>`` value of a ``%KEYGEN`` answer, signed with the identity key."""
    payload = encode_keygen_payload(
        payload_id=payload_id,
        device_uuid=device_uuid,
        sec_tag=sec_tag,
        digest=hashlib.sha256(body).digest(),
        nonce=nonce,
    )
    return b64url_encode(body) + "." + b64url_encode(sign_cose_sign1(payload, identity_key))
