"""Local CA signing, the external-command CA (a script CA), the CSR and certificate checks, PEM."""

from __future__ import annotations

import datetime
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from fleet.certs import (
    CommandCa,
    LocalCa,
    canonical_pem,
    check_csr,
    check_issued,
    parse_pem_certificates,
    pem_sha256,
)
from fleet.certs.load import load_ca_certificate, load_ca_key, load_chain
from fleet.certs.pem import public_key_der, summarize
from fleet.credentials import attributes_subject
from fleet.errors import CertificateError
from tests.certhelpers import NOW, csr_answer, make_ca, script_ca_command


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCa:
    cert_path, key_path, cert, key = make_ca(tmp_path_factory.mktemp("ca"))
    return LocalCa(cert_path=cert_path, key_path=key_path, certificate=cert, private_key=key,
                   validity_days=365, chain=load_chain(cert_path))


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_oid(oid)


def test_local_ca_signs_a_tls_client_certificate(ca: LocalCa) -> None:
    answer = csr_answer()
    assert answer.csr_null_parameter  # the modem's quirk; the loadable copy is what is signed
    csr = answer.csr
    assert csr is not None
    cert = anyio.run(lambda: ca.issue(csr, now=NOW))
    assert public_key_der(cert) == public_key_der(csr)
    assert cert.subject == csr.subject and cert.issuer == ca.certificate.subject
    cert.verify_directly_issued_by(ca.certificate)
    assert 0 < cert.serial_number < 2**159
    assert cert.not_valid_before_utc == NOW - datetime.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=365)
    constraints = _ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    assert constraints.critical and constraints.value == x509.BasicConstraints(
        ca=False, path_length=None)
    usage = _ext(cert, ExtensionOID.KEY_USAGE)
    assert usage.critical
    assert usage.value == csr.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    assert list(_ext(cert, ExtensionOID.EXTENDED_KEY_USAGE).value) == [  # type: ignore[call-overload]
        ExtendedKeyUsageOID.CLIENT_AUTH]
    ski = _ext(cert, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(csr.public_key())
    aki = _ext(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(
        ca.certificate.public_key()).digest
    other = ca.sign(csr, now=NOW)
    assert other.serial_number != cert.serial_number


def test_default_key_usage_and_validity_capped_at_the_ca(tmp_path: Path) -> None:
    cert_path, key_path, ca_cert, ca_key = make_ca(tmp_path, days=10)
    short = LocalCa(cert_path=cert_path, key_path=key_path, certificate=ca_cert,
                    private_key=ca_key, validity_days=365)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name.from_rfc4514_string("CN=dev")).sign(key, hashes.SHA256()))
    cert = short.sign(csr, now=NOW)
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc
    usage = _ext(cert, ExtensionOID.KEY_USAGE).value
    assert isinstance(usage, x509.KeyUsage)
    assert usage.digital_signature and usage.key_agreement and not usage.key_encipherment


def test_csr_checks_refuse_bad_signature_subject_and_ca_usage() -> None:
    answer = csr_answer()
    assert answer.csr is not None
    check_csr(answer.csr, subject=attributes_subject("CN=352656100367872,O=Acme,C=NO"))
    with pytest.raises(CertificateError, match="subject"):
        check_csr(answer.csr, subject=attributes_subject("CN=352656100367872,O=Evil,C=NO"))
    # Flip a bit in the CSR's signature: the self-signature no longer verifies.
    der = bytearray(answer.csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    broken = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(CertificateError, match="self-signature"):
        check_csr(broken, subject=None)
    ca_usage = csr_answer(key_usage="100001000")
    assert ca_usage.csr is not None
    with pytest.raises(CertificateError, match="keyCertSign"):
        check_csr(ca_usage.csr, subject=None)


def test_issued_certificate_checks(ca: LocalCa, tmp_path: Path) -> None:
    csr = csr_answer().csr
    other_csr = csr_answer().csr
    assert csr is not None and other_csr is not None
    good = ca.sign(csr, now=NOW)
    check_issued(good, csr, trust=[ca.certificate], require_issuer=True, now=NOW)
    with pytest.raises(CertificateError, match="public key"):
        check_issued(good, other_csr, trust=[ca.certificate], require_issuer=True, now=NOW)
    with pytest.raises(CertificateError, match="expired"):
        check_issued(good, csr, trust=[ca.certificate], require_issuer=True,
                     now=NOW + datetime.timedelta(days=400))
    _, _, stranger, _ = make_ca(tmp_path, name="Stranger")
    with pytest.raises(CertificateError, match="not the CA certificate"):
        check_issued(good, csr, trust=[stranger], require_issuer=True, now=NOW)
    check_issued(good, csr, trust=[stranger], require_issuer=False, now=NOW)  # not checkable
    _, _, impostor, _ = make_ca(tmp_path, name="Test CA", stem="impostor")  # same name
    with pytest.raises(CertificateError, match="does not verify"):
        check_issued(good, csr, trust=[impostor], require_issuer=False, now=NOW)


def test_pem_is_canonical_lf_only_and_strict(ca: LocalCa) -> None:
    pem = canonical_pem([ca.certificate])
    assert "\r" not in pem and pem.endswith("-----END CERTIFICATE-----\n")
    assert pem_sha256(pem) == pem_sha256(pem).upper() and len(pem_sha256(pem)) == 64
    messy = "Bag Attributes\n" + pem.replace("\n", "\r\n")
    with pytest.raises(CertificateError, match="outside"):
        parse_pem_certificates(messy, "x")
    crlf = parse_pem_certificates(pem.replace("\n", "\r\n"), "x")
    assert canonical_pem(crlf) == pem  # re-encoded: the bytes written never carry CR
    with pytest.raises(CertificateError, match="exactly one"):
        parse_pem_certificates(pem + pem, "x", exactly_one=True)
    with pytest.raises(CertificateError, match="no PEM"):
        parse_pem_certificates("hello", "x")
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with pytest.raises(CertificateError, match="only CERTIFICATE"):
        parse_pem_certificates(pem + key_pem, "x")
    between = pem + "a note between the blocks\n" + pem
    with pytest.raises(CertificateError, match="outside the PEM blocks: 'a note between"):
        parse_pem_certificates(between, "x")
    body = pem.splitlines()[1]
    with pytest.raises(CertificateError, match="certificate 1 does not decode"):  # '-'
        parse_pem_certificates(pem.replace(body, body[:10] + "-" + body[11:]), "x")
    headed = pem.replace("-----\n", "-----\nProc-Type: 4,X\n\n", 1)  # RFC 1421 headers
    assert canonical_pem(parse_pem_certificates(headed, "x")) == pem
    assert canonical_pem(parse_pem_certificates(
        pem.replace("-----\n", "-----\v\n", 1), "x")) == pem
    assert len(parse_pem_certificates(pem + "\n" + pem + "\n", "x")) == 2
    summary = summarize(ca.certificate)
    assert summary.serial == format(ca.certificate.serial_number, "x")
    assert summary.issuer == "CN=Test CA" and summary.not_after.endswith("Z")


def test_ca_files_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert_path, _, cert, _ = make_ca(tmp_path / "a")
    _, other_key, _, _ = make_ca(tmp_path / "b")
    leaf_cert, _, _, _ = make_ca(tmp_path / "c", ca=False)
    assert load_ca_certificate(cert_path) == cert
    with pytest.raises(CertificateError, match="not a CA certificate"):
        load_ca_certificate(leaf_cert)
    with pytest.raises(CertificateError, match="is not the key of the CA"):
        load_ca_key(other_key, cert, passphrase_env=None)
    _, secret_key, secret, _ = make_ca(tmp_path / "d", passphrase=b"s3cret")
    with pytest.raises(CertificateError, match="key_passphrase_env"):
        load_ca_key(secret_key, secret, passphrase_env=None)
    with pytest.raises(CertificateError, match=r"FLEET_TEST_UNSET \(key_passphrase_env\)"):
        load_ca_key(secret_key, secret, passphrase_env="FLEET_TEST_UNSET")
    monkeypatch.setenv("FLEET_TEST_PASS", "wrong")
    with pytest.raises(CertificateError, match="wrong passphrase"):
        load_ca_key(secret_key, secret, passphrase_env="FLEET_TEST_PASS")
    monkeypatch.setenv("FLEET_TEST_PASS", "s3cret")
    assert load_ca_key(secret_key, secret, passphrase_env="FLEET_TEST_PASS")


# --- the external-command CA ------------------------------------------------------------------


def _command_ca(tmp_path: Path, mode: str, *, timeout_s: float = 30.0,
                with_issuer: bool = True) -> tuple[CommandCa, x509.Certificate]:
    cert_path, key_path, cert, _ = make_ca(tmp_path / "cmd", name="Script CA")
    ca = CommandCa(argv=tuple(script_ca_command(cert_path, key_path, mode)), timeout_s=timeout_s,
                   issuer=cert if with_issuer else None)
    return ca, cert


def test_command_ca_signs_with_the_script(tmp_path: Path) -> None:
    ca, issuer = _command_ca(tmp_path, "good")
    csr = csr_answer().csr
    assert csr is not None
    cert = anyio.run(lambda: ca.issue(csr, now=datetime.datetime.now(datetime.UTC)))
    assert public_key_der(cert) == public_key_der(csr)
    cert.verify_directly_issued_by(issuer)


COMMAND_FAILURES = {
    "fail": "exit status 3; stderr: script CA: the CA is down",
    "garbage": "no PEM certificate found",
    "wrong-key": "public key is not the CSR's",
    "two": "exactly one certificate, found 2",
    "wrong-subject": "subject",
    "ignore-stdin": "public key is not the CSR's",
}


@pytest.mark.parametrize("mode", sorted(COMMAND_FAILURES))
def test_command_ca_failures_are_clear(tmp_path: Path, mode: str) -> None:
    ca, _ = _command_ca(tmp_path, mode)
    csr = csr_answer().csr
    assert csr is not None
    with pytest.raises(CertificateError, match=COMMAND_FAILURES[mode]):
        anyio.run(lambda: ca.issue(csr, now=datetime.datetime.now(datetime.UTC)))


def test_command_ca_timeout_kills_it(tmp_path: Path) -> None:
    ca, _ = _command_ca(tmp_path, "slow", timeout_s=1.0)
    csr = csr_answer().csr
    assert csr is not None
    started = datetime.datetime.now(datetime.UTC)
    with pytest.raises(CertificateError, match="did not finish within 1 s"):
        anyio.run(lambda: ca.issue(csr, now=started))
    assert (datetime.datetime.now(datetime.UTC) - started).total_seconds() < 10


def test_command_ca_missing_program(tmp_path: Path) -> None:
    ca = CommandCa(argv=(str(tmp_path / "nope"),))
    csr = csr_answer().csr
    assert csr is not None
    with pytest.raises(CertificateError, match="cannot be started"):
        anyio.run(lambda: ca.issue(csr, now=NOW))
