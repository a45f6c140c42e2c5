"""PEM text of one DER value, written as OpenSSL (and ``cryptography``'s ``public_bytes``) writes
it, and read back without an X.509 parser: a ``%KEYGEN`` answer's public key and CSR are written
here, and the audit reads a manifest's public keys here (tens of thousands of them, so a parse
that ``cryptography`` would spend building a key object for is saved)."""

from __future__ import annotations

import base64
import binascii

__all__ = ["pem_der", "pem_text"]


def pem_text(label: str, der: bytes) -> str:
    """``der`` as one PEM block named ``label``: 64-column base64, a newline after each line."""
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def pem_der(text: object, label: str) -> bytes | None:
    """The DER of ``text`` when it is one PEM block named ``label`` (surrounding white space
    allowed) whose body is valid base64; None otherwise."""
    if not isinstance(text, str):
        return None
    lines = text.strip().splitlines()
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if len(lines) < 3 or lines[0] != begin or lines[-1] != end:
        return None
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        return None
