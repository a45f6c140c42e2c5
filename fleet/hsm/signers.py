"""The two keys a station may keep in a token, as the rest of fleet uses them.

How this works: :class:`TokenStationSigner` is a :class:`fleet.station_key.ExternalSigner`
(ECDSA P-256, ES256: what a manifest is signed with), :class:`TokenCaKey` a
:class:`fleet.certs.authority.ExternalCaKey`. Both wrap a :class:`fleet.hsm.token.TokenKey` and
turn its :class:`~fleet.errors.TokenError` into the error of their side (``ManifestError``,
``CertificateError``). A certificate is signed in the token by building it with a stand-in key
of the same kind (so ``cryptography`` writes the TBSCertificate and its AlgorithmIdentifier),
signing those TBS bytes in the token, and putting that signature in place of the stand-in's
(:func:`fleet.credentials.der.replace_signature`); the caller checks the result against the CA
certificate, as for a file key.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fleet.credentials.der import replace_signature
from fleet.errors import CertificateError, ManifestError, TokenError
from fleet.hsm.token import TokenKey, create_ec_key, describe, open_key
from fleet.hsm.uri import Pkcs11Uri

__all__ = ["TokenCaKey", "TokenStationSigner", "create_token_key", "open_ca_key",
           "open_station_signer", "sign_certificate"]


def _warn_if_extractable(key: TokenKey, what: str) -> None:
    if key.extractable:
        structlog.get_logger().warning(
            f"the {what} in the token can be exported (CKA_EXTRACTABLE, or not CKA_SENSITIVE): "
            "it may have copies outside the token; make it with `fleet station-key init "
            "--pkcs11` or `fleet ca init --pkcs11`", key=str(key.uri))


@dataclass(frozen=True, slots=True)
class TokenStationSigner:
    """The station key in a token: an ``ExternalSigner``."""

    key: TokenKey

    def public_key(self) -> ec.EllipticCurvePublicKey:
        public = self.key.public_key
        assert isinstance(public, ec.EllipticCurvePublicKey)  # open_key(p256_only=True)
        return public

    def sign_data(self, data: bytes) -> bytes:
        try:
            return self.key.sign(data)
        except TokenError as exc:
            raise ManifestError(f"the station key cannot sign: {exc}") from exc

    def describe(self) -> str:
        return describe(self.key.uri)


def open_station_signer(uri: Pkcs11Uri) -> TokenStationSigner:
    """The station key ``uri`` names (ECDSA P-256 only); ``ManifestError`` saying why not."""
    try:
        key = open_key(uri, p256_only=True)
    except TokenError as exc:
        raise ManifestError(f"signing key {uri}: {exc}") from exc
    _warn_if_extractable(key, "station key")
    return TokenStationSigner(key)


@functools.cache
def _stand_in(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A throwaway key of the CA key's kind: its signature is replaced, never used."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def sign_certificate(builder: x509.CertificateBuilder, key: TokenKey) -> x509.Certificate:
    """``builder``'s certificate signed with SHA-256 by ``key`` in its token."""
    kind = "rsa" if isinstance(key.public_key, rsa.RSAPublicKey) else "ec"
    draft = builder.sign(_stand_in(kind), hashes.SHA256())
    signature = key.sign(draft.tbs_certificate_bytes)
    der = replace_signature(draft.public_bytes(serialization.Encoding.DER), signature)
    return x509.load_der_x509_certificate(der)


@dataclass(frozen=True, slots=True)
class TokenCaKey:
    """The CA key in a token: an ``ExternalCaKey``."""

    key: TokenKey

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        return self.key.public_key

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        try:
            return sign_certificate(builder, self.key)
        except TokenError as exc:
            raise CertificateError(f"the CA key cannot sign: {exc}") from exc

    def describe(self) -> str:
        return describe(self.key.uri)


def open_ca_key(uri: Pkcs11Uri, certificate: x509.Certificate) -> TokenCaKey:
    """The CA key ``uri`` names, which must be ``certificate``'s; ``CertificateError``."""
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CertificateError(f"CA key {uri}: a CA certificate with a "
                               f"{type(public).__name__} cannot have its key in a token here "
                               "(use EC or RSA)")
    try:
        key = open_key(uri, p256_only=False, public_key=public)
    except TokenError as exc:
        raise CertificateError(f"CA key {uri}: {exc}") from exc
    _warn_if_extractable(key, "CA key")
    return TokenCaKey(key)


def create_token_key(uri: Pkcs11Uri) -> TokenKey:
    """A new non-extractable ECDSA P-256 key pair in the token, opened; ``TokenError``."""
    public = create_ec_key(uri)
    return open_key(uri, p256_only=True, public_key=public)
