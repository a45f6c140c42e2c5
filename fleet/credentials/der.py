"""Just enough DER to handle the nRF91 CSR quirk.

Modem firmware encodes the CSR's signature algorithm as ``ecdsa-with-SHA256`` WITH an explicit
ASN.1 NULL parameter. RFC 5758 says the parameter must be absent and recent ``cryptography``
releases refuse to load such a CSR. The CSR's self-signature covers only the
CertificationRequestInfo, so dropping the NULL from a copy leaves the signature valid; the COSE
digest, however, is over the ORIGINAL bytes, so callers must keep those for hashing.

:func:`strip_sigalg_null` makes the loadable copy; :func:`add_sigalg_null` does the reverse (the
simulator uses it to produce the same bytes a real modem does).
"""

from __future__ import annotations

__all__ = ["DerError", "add_sigalg_null", "encode_tlv", "read_tlv", "replace_signature",
           "strip_sigalg_null"]

_SEQUENCE = 0x30
_OID = 0x06
_NULL_TLV = b"\x05\x00"


class DerError(ValueError):
    """The bytes are not the DER structure that was expected."""


def read_tlv(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """Read one TLV at ``pos``: ``(tag, value, end)``. Only definite lengths (DER)."""
    if pos + 2 > len(data):
        raise DerError("truncated DER element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte DER tags are not supported here")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise DerError("invalid DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError("non-minimal DER length")
        pos += count
    end = pos + length
    if end > len(data):
        raise DerError("DER element runs past the end of the data")
    return tag, data[pos:end], end


def encode_tlv(tag: int, value: bytes) -> bytes:
    """Encode one TLV with a minimal definite length."""
    length = len(value)
    if length < 0x80:
        return bytes([tag, length]) + value
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + value


def _split_csr(csr_der: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """``(info_tlv, alg_oid_tlv, alg_params, signature_tlv)`` of a CertificationRequest (or of
    any structure of the same SIGNED shape, like a Certificate)."""
    tag, outer, end = read_tlv(csr_der)
    if tag != _SEQUENCE or end != len(csr_der):
        raise DerError("CSR is not a single DER SEQUENCE")
    tag, _, info_end = read_tlv(outer)
    if tag != _SEQUENCE:
        raise DerError("CSR has no CertificationRequestInfo")
    info = outer[:info_end]
    tag, alg, alg_end = read_tlv(outer, info_end)
    if tag != _SEQUENCE:
        raise DerError("CSR has no signature AlgorithmIdentifier")
    tag, _, oid_end = read_tlv(alg)
    if tag != _OID:
        raise DerError("signature AlgorithmIdentifier does not start with an OID")
    signature = outer[alg_end:]
    tag, _, sig_end = read_tlv(signature)
    if tag != 0x03 or sig_end != len(signature):
        raise DerError("CSR signature is not a single BIT STRING")
    return info, alg[:oid_end], alg[oid_end:], signature


def strip_sigalg_null(csr_der: bytes) -> bytes | None:
    """A copy of ``csr_der`` without the NULL parameter, or ``None`` if it has none."""
    info, oid, params, signature = _split_csr(csr_der)
    if params != _NULL_TLV:
        return None
    return encode_tlv(_SEQUENCE, info + encode_tlv(_SEQUENCE, oid) + signature)


def add_sigalg_null(csr_der: bytes) -> bytes:
    """A copy of ``csr_der`` whose signature algorithm carries an explicit NULL parameter."""
    info, oid, params, signature = _split_csr(csr_der)
    if params == _NULL_TLV:
        return csr_der
    if params:
        raise DerError("signature algorithm already has parameters")
    return encode_tlv(_SEQUENCE, info + encode_tlv(_SEQUENCE, oid + _NULL_TLV) + signature)


def replace_signature(signed_der: bytes, signature: bytes) -> bytes:
    """A copy of a signed structure (a Certificate or a CertificationRequest: the signed part,
    the AlgorithmIdentifier, the signature BIT STRING) with ``signature`` in place of its own,
    the signed part and the algorithm kept byte for byte."""
    info, oid, params, _ = _split_csr(signed_der)
    return encode_tlv(_SEQUENCE, info + encode_tlv(_SEQUENCE, oid + params)
                      + encode_tlv(0x03, b"\x00" + signature))
