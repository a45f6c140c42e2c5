"""The simulator's side of certificates: exact bytes, SHA listing, read back, and 527 for a client
certificate whose public key is not the private key's in that sec_tag."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.at import CmeErrorLine, Ok
from fleet.certs import LocalCa, canonical_pem
from fleet.credentials import parse_cmng_read, parse_keygen
from fleet.sim import MODELS, Modem
from tests.certhelpers import NOW, csr_answer, make_ca


def _modem(model: str = "nrf9160") -> Modem:
    modem = Modem.create(seed=3, index=0, model=MODELS[model], function_mode=4)
    modem.handle("AT+CMEE=1")
    return modem


def _ca(tmp_path: Path) -> LocalCa:
    cert_path, key_path, cert, key = make_ca(tmp_path)
    return LocalCa(cert_path=cert_path, key_path=key_path, certificate=cert, private_key=key)


def test_client_certificate_must_match_the_key_in_its_tag(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    modem = _modem()
    answer = parse_keygen(modem.handle("AT%KEYGEN=7,2,0").lines[0])
    assert answer.csr is not None
    good = canonical_pem([ca.sign(answer.csr, now=NOW)])
    other_csr = csr_answer().csr
    assert other_csr is not None
    wrong = canonical_pem([ca.sign(other_csr, now=NOW)])

    assert modem.handle(f'AT%CMNG=0,7,1,"{wrong}"').final == CmeErrorLine(code=527)
    assert modem.store.get(7, 1) is None
    assert modem.handle(f'AT%CMNG=0,7,1,"{good}"').final == Ok()
    sha = hashlib.sha256(good.encode()).hexdigest().upper()
    assert modem.handle("AT%CMNG=1,7,1").lines == (f'%CMNG: 7,1,"{sha}"',)
    entry, content = parse_cmng_read(list(modem.handle("AT%CMNG=2,7,1").lines))
    assert content == good and entry.sha256 == sha
    # No key in the tag (or content that is no certificate): accepted, as documented.
    assert modem.handle(f'AT%CMNG=0,8,1,"{wrong}"').final == Ok()
    assert modem.handle('AT%CMNG=0,7,1,"not a certificate"').final == Ok()
    # The CA certificate as the root CA (type 0) is never checked against the key.
    ca_pem = ca.certificate.public_bytes(serialization.Encoding.PEM).decode()
    assert modem.handle(f'AT%CMNG=0,7,0,"{ca_pem}"').final == Ok()


@pytest.mark.parametrize("model", ["nrf9160", "nrf9151"])
def test_crlf_certificate_is_stored_as_written_on_every_model(tmp_path: Path,
                                                              model: str) -> None:
    ca = _ca(tmp_path)
    modem = _modem(model)
    answer = parse_keygen(modem.handle("AT%KEYGEN=7,2,0").lines[0])
    assert answer.csr is not None
    pem = canonical_pem([ca.sign(answer.csr, now=NOW)]).replace("\n", "\r\n")
    assert modem.handle(f'AT%CMNG=0,7,1,"{pem}"').final == Ok()
    stored = modem.store.get(7, 1)
    assert stored is not None and stored.content == pem.encode()
    listed = modem.handle("AT%CMNG=1,7,1").lines[0]
    assert hashlib.sha256(pem.encode()).hexdigest().upper() in listed
    assert x509.load_pem_x509_certificate(stored.content or b"")
