"""``AT%KEYGEN=<sec_tag>,<key_type>[,<response_content>][,<attributes>][,<key_usage>]``.

Checks, in the order the simulator applies them (the first that fails answers):

1. syntax -> ``ERROR``: sec_tag an integer 1..4294967295 (0 and larger are ERROR); key_type 2 or
   8; response_content 0 or 1, mandatory for type 2, only 1 (or omitted) for type 8; attributes
   and key_usage quoted strings; for a CSR (type 2, content 0) every attribute one the modem
   documents with a sane value, and key_usage 9 binary digits without decipherOnly. Attributes and
   key usage are ignored (not checked) when no CSR is made. An empty string counts as omitted.
2. function mode 1, 2 or 21 -> ``518``.
3. sec_tag above 2147483647 -> ``514`` (reserved for the modem).
4. type 2 and a client key already in the tag -> ``519`` (nothing changes).
5. type 8 and an endorsement key already in the tag -> the answer for THAT key (same public key,
   fresh nonce), as documented.
6. a new key and the store full -> ``515``.
7. the key is generated, stored, and the answer built exactly like the modem's: CSR (with the
   NULL-parameter quirk, payload id 9) or public key DER (payload id 8), COSE_Sign1 with the
   device identity key.

The keygen-fail fault is applied between 4/5/6 and 7: ``523``, nothing stored. The keygen-bad-uuid
fault changes the answer of 5 or 7: the COSE payload names the device UUID with its lowest bit
flipped. The keygen-weak-rng fault makes 7's key from a fixed seed and the sec_tag, the same on
every modem.
"""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.at import ParsedCommand
from fleet.credentials import (
    PAYLOAD_ID_CSR,
    PAYLOAD_ID_PUBLIC_KEY,
    build_csr,
    build_keygen_answer,
    key_usage_extension,
    public_key_der,
    validate_attribute_value,
)
from fleet.errors import CmeCode
from fleet.faults import FaultName
from fleet.nrf91 import MAX_MODEM_SEC_TAG, MAX_USER_SEC_TAG, CredentialType, Work
from fleet.sim.reply import Entropy, Faults, ModemView, Reply, error, ok
from fleet.sim.store import Credential

#: The private value keygen-weak-rng's keys are made from (plus the sec_tag).
_WEAK_SEED = 0x5EED_0000

__all__ = ["handle_keygen"]

CLIENT_KEY = CredentialType.CLIENT_PRIVATE_KEY
ENDORSEMENT_KEY = CredentialType.ENDORSEMENT_KEY


def _attributes_ok(text: str) -> bool:
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or validate_attribute_value(name.strip(), value) is not None:
            return False
    return True


def _usage_ok(bits: str) -> bool:
    try:
        key_usage_extension(bits)
    except ValueError:
        return False
    return True


def handle_keygen(modem: ModemView, cmd: ParsedCommand, entropy: Entropy,
                  faults: Faults) -> Reply:
    """Answer one ``AT%KEYGEN=...`` command (see the module docstring for the rules)."""
    args = cmd.args
    if not 2 <= len(args) <= 5:
        return error()
    sec_tag, key_type, content, attributes, usage = (*args, None, None, None)[:5]
    if not isinstance(sec_tag, int) or not isinstance(key_type, int):
        return error()
    if not 1 <= sec_tag <= MAX_MODEM_SEC_TAG or key_type not in (CLIENT_KEY, ENDORSEMENT_KEY):
        return error()
    if content is not None and not isinstance(content, int):
        return error()
    if key_type == CLIENT_KEY and content not in (0, 1):
        return error()
    if key_type == ENDORSEMENT_KEY and content not in (None, 1):
        return error()
    if (attributes is not None and not isinstance(attributes, str)) or (
            usage is not None and not isinstance(usage, str)):
        return error()
    attributes = attributes or None
    usage = usage or None
    make_csr = key_type == CLIENT_KEY and content == 0
    if make_csr and ((attributes and not _attributes_ok(attributes))
                     or (usage and not _usage_ok(usage))):
        return error()

    if modem.active:
        return modem.cme(CmeCode.ACTIVE_STATE)
    if sec_tag > MAX_USER_SEC_TAG:
        return modem.cme(CmeCode.NOT_ALLOWED)
    existing = modem.store.get(sec_tag, key_type)
    if existing is not None and key_type == CLIENT_KEY:
        return modem.cme(CmeCode.ALREADY_EXISTS)
    if existing is not None:
        public = existing.public_key()
        if public is None:  # a state file edited by hand: treat it like a failed generation
            return modem.cme(CmeCode.KEYGEN_FAILED)
        if faults(FaultName.KEYGEN_FAIL):
            return modem.cme(CmeCode.KEYGEN_FAILED, fault=FaultName.KEYGEN_FAIL)
        body = public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        return _answer(modem, body, PAYLOAD_ID_PUBLIC_KEY, sec_tag, entropy, faults,
                       made=False)
    if modem.store.full:
        return modem.cme(CmeCode.MEMORY_FULL)
    if faults(FaultName.KEYGEN_FAIL):
        return modem.cme(CmeCode.KEYGEN_FAILED, fault=FaultName.KEYGEN_FAIL)

    weak = faults(FaultName.KEYGEN_WEAK_RNG)
    # A random source stuck at one value: the same key for the tag on every modem.
    key = ec.derive_private_key(_WEAK_SEED + sec_tag, ec.SECP256R1()) if weak \
        else entropy.new_key()
    if make_csr:
        try:
            body = build_csr(key, device_uuid=modem.device_uuid, attributes=attributes,
                             key_usage=usage, null_parameter=True)
        except ValueError:  # an attribute value x509 refuses (checked above, belt and braces)
            return error()
        payload_id = PAYLOAD_ID_CSR
    else:
        body = public_key_der(key)
        payload_id = PAYLOAD_ID_PUBLIC_KEY
    _store(modem, sec_tag, key_type, key)
    return _answer(modem, body, payload_id, sec_tag, entropy, faults, made=True,
                   fault=FaultName.KEYGEN_WEAK_RNG if weak else None)


def _store(modem: ModemView, sec_tag: int, key_type: int, key: ec.EllipticCurvePrivateKey) -> None:
    modem.store.put(Credential.generated_key(sec_tag, key_type, key))
    modem.touch()


def _answer(modem: ModemView, body: bytes, payload_id: int, sec_tag: int, entropy: Entropy,
            faults: Faults, *, made: bool, fault: FaultName | None = None) -> Reply:
    device_uuid = modem.device_uuid
    if faults(FaultName.KEYGEN_BAD_UUID):
        fault = FaultName.KEYGEN_BAD_UUID
        device_uuid = uuid.UUID(int=device_uuid.int ^ 1)
    value = build_keygen_answer(body, payload_id=payload_id, device_uuid=device_uuid,
                                sec_tag=sec_tag, identity_key=modem.identity_key,
                                nonce=entropy.nonce())
    return ok(f'%KEYGEN: "{value}"', work=Work.KEYGEN, key_made=made, fault=fault)
