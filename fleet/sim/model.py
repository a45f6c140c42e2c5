"""The sans-IO model of one nRF91 modem: its state and a pure ``handle(command line) -> Reply``.

How this works
--------------
A :class:`Modem` holds what a real modem holds (IMEI, device UUID, model and firmware strings,
identity key, function mode, CMEE setting, credential store). :meth:`Modem.handle` parses one
command line with the shared AT grammar (:func:`fleet.at.parse_command`), looks the
``(name, operation)`` pair up in one dispatch table (:data:`_COMMANDS`; a missing entry answers
``ERROR``, like an unknown command on the modem) and returns a :class:`~fleet.sim.reply.Reply`.

No I/O, no clock, no sleeping: the reply says which kind of work the command took and whether the
persistent state changed; the server (:mod:`fleet.sim.core`) decides the delay, persists the state
and writes the bytes. ``revision`` counts changes, so the state writer can tell which modems need
re-serialising.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.at import Op, ParsedCommand, parse_command
from fleet.credentials import ATTEST_MESSAGE_TYPE, b64url_encode, sign_cose_sign1
from fleet.errors import CmeCode, RemoteProtocolError
from fleet.faults import FaultName
from fleet.nrf91 import (
    ACTIVE_MODES,
    FUNCTION_MODES,
    CredentialType,
    ModelInfo,
    Work,
    attestation_problem,
)
from fleet.sim.cmng import handle_cmng
from fleet.sim.identity import (
    derive_device_uuid,
    derive_identity_key,
    derive_imei,
    firmware_uuid,
)
from fleet.sim.keygen import handle_keygen
from fleet.sim.reply import NO_FAULTS, SYSTEM_ENTROPY, Entropy, Faults, Reply, cme, error, ok
from fleet.sim.store import CredentialStore, reserved_entries

__all__ = ["Modem"]


_SELF_DESCRIBE = 55799


@dataclass(frozen=True, slots=True, kw_only=True)
class _Context:
    """What a command handler may use besides the modem and the command."""

    entropy: Entropy
    faults: Faults


class Modem:
    """One simulated modem. Mutable state, pure behaviour."""

    def __init__(
        self,
        *,
        index: int,
        imei: str,
        device_uuid: uuid.UUID,
        model: ModelInfo,
        identity_key: ec.EllipticCurvePrivateKey,
        store: CredentialStore,
        function_mode: int = 0,
        firmware: str | None = None,
        cgmm: str | None = None,
    ) -> None:
        if index < 0:
            raise ValueError(f"modem index must be >= 0, not {index}")
        if len(imei) != 15 or not imei.isdigit():
            raise ValueError(f"IMEI must be 15 digits, not {imei!r}")
        if function_mode not in FUNCTION_MODES:
            raise ValueError(f"function mode {function_mode} is not one of {FUNCTION_MODES}")
        if not isinstance(identity_key.curve, ec.SECP256R1):
            raise ValueError("the identity key must be a P-256 key")
        self.index = index
        self.imei = imei
        self.device_uuid = device_uuid
        self.model = model
        self.firmware = firmware or model.firmware
        self.cgmm = cgmm or model.cgmm  #: what AT+CGMM prints (the model's, unless the state says)
        self.firmware_uuid = firmware_uuid(self.firmware)
        self.identity_key = identity_key
        self.identity_public_key_pem = identity_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        self.store = store
        self.function_mode = function_mode
        self.cmee = 0
        self.revision = 0
        self._reserved = reserved_entries(device_uuid.bytes)

    @classmethod
    def create(cls, *, seed: int, index: int, model: ModelInfo, function_mode: int = 0,
               capacity: int = 32) -> Modem:
        """A fresh modem whose identity is derived from ``(seed, index)``."""
        return cls(index=index, imei=derive_imei(seed, index),
                   device_uuid=derive_device_uuid(seed, index), model=model,
                   identity_key=derive_identity_key(seed, index),
                   store=CredentialStore(capacity), function_mode=function_mode)

    def swapped(self, *, seed: int, model: ModelInfo | None = None) -> Modem:
        """The board the swap fault puts in this one's place: the same IMEI (a cloned module,
        or an unprogrammed IMEI), model and firmware (``model`` and its firmware, when given),
        its own device UUID and identity key (derived from this board's UUID, so every swap,
        also in a later simulator with the same state file, brings another board), no
        credentials, function mode 0."""
        board = self.device_uuid.int & 0xFFFFFFFF or 1  # 0 names the original board
        same = model is None  # a model given brings its own firmware and AT+CGMM text
        return Modem(index=self.index, imei=self.imei,
                     device_uuid=derive_device_uuid(seed, self.index, board),
                     model=self.model if model is None else model,
                     identity_key=derive_identity_key(seed, self.index, board),
                     store=CredentialStore(self.store.capacity),
                     firmware=self.firmware if same else None, cgmm=self.cgmm if same else None)

    def __repr__(self) -> str:
        return (f"Modem(index={self.index}, imei={self.imei}, model={self.model.name}, "
                f"cfun={self.function_mode}, credentials={len(self.store)})")

    # -- state helpers used by the command handlers ------------------------------------------

    @property
    def active(self) -> bool:
        """True in the function modes where credential work is refused (518)."""
        return self.function_mode in ACTIVE_MODES

    def touch(self) -> None:
        """Record that the persistent state changed."""
        self.revision += 1

    def cme(self, code: CmeCode, *, fault: FaultName | None = None) -> Reply:
        """``+CME ERROR: <code>``, or ``ERROR`` while CMEE is 0."""
        return cme(int(code), cmee=self.cmee, fault=fault)

    def reserved_entries(self) -> list[tuple[int, int, str]]:
        """The modem's own credentials ``(sec_tag, type, SHA)`` that %CMNG lists."""
        return list(self._reserved)

    def check_client_certificate(self, sec_tag: int, content: bytes) -> CmeCode | None:
        """The error that refuses writing client certificate ``content`` to ``sec_tag`` with
        ``%CMNG=0,<tag>,1``, or ``None`` to accept it.

        A certificate whose public key is not the public key of the client private key (type 2)
        stored in the same tag is refused with ``527`` (invalid credential): it could never be
        used with that key. With no private key in the tag, or content that does not parse as a
        PEM certificate, the write is accepted (what a real modem does there is unconfirmed; it
        stores the bytes, and TLS would fail later).
        """
        key = self.store.get(sec_tag, CredentialType.CLIENT_PRIVATE_KEY)
        expected = key.public_key() if key is not None else None
        if expected is None:
            return None
        try:
            cert = x509.load_pem_x509_certificate(content)
            actual = cert.public_key()
        except ValueError:
            return None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        mine = expected.public_bytes(serialization.Encoding.DER, spki)
        if not isinstance(actual, ec.EllipticCurvePublicKey) or actual.public_bytes(
                serialization.Encoding.DER, spki) != mine:
            return CmeCode.INVALID_CREDENTIAL
        return None

    def reboot(self) -> None:
        """Power cycle: function mode 0 and CMEE 0; stored credentials are kept."""
        self.function_mode = 0
        self.cmee = 0
        self.touch()

    # -- the command interpreter -------------------------------------------------------------

    def handle(self, line: str, *, entropy: Entropy = SYSTEM_ENTROPY,
               faults: Faults = NO_FAULTS) -> Reply:
        """Answer one command line (terminator removed).

        ``faults`` is asked at the moment a fault that depends on the command could apply
        (keygen-fail, keygen-bad-uuid, list-no-sha, list-drop, swap, swap-unattested; see
        :mod:`fleet.faults`); the reply names the one that took effect.
        """
        try:
            cmd = parse_command(line)
        except RemoteProtocolError:
            return error()
        handler = _COMMANDS.get((cmd.name, cmd.op))
        if handler is None:
            return error()
        return handler(self, cmd, _Context(entropy=entropy, faults=faults))

    def _at(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok()

    def _cfun_read(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok(f"+CFUN: {self.function_mode}")

    def _cfun_test(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok(f"+CFUN: ({','.join(str(m) for m in FUNCTION_MODES)})")

    def _cfun_set(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        mode = cmd.arg(0)
        if len(cmd.args) != 1 or not isinstance(mode, int) or mode not in FUNCTION_MODES:
            return error()
        if mode == self.function_mode:
            return ok()
        self.function_mode = mode
        self.touch()
        return ok(work=Work.CFUN_CHANGE, changed=True)

    def _cmee_read(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok(f"+CMEE: {self.cmee}")

    def _cmee_test(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok("+CMEE: (0,1)")

    def _cmee_set(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        value = cmd.arg(0)
        if len(cmd.args) != 1 or value not in (0, 1):
            return error()
        self.cmee = 1 if value else 0
        return ok()

    def _cgsn(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok(self.imei)

    def _cgsn_set(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        kind = cmd.arg(0)
        if len(cmd.args) > 1:
            return error()
        if kind in (None, 0):
            return ok(self.imei)
        if kind == 1:
            return ok(f'+CGSN: "{self.imei}"')
        if kind == 2:
            return ok(f'+CGSN: "{self.imei[:14]}{self._svn}"')
        if kind == 3:
            return ok(f'+CGSN: "{self._svn}"')
        return error()

    @property
    def _svn(self) -> str:
        return f"{sum(map(ord, self.firmware)) % 100:02d}"

    def _cgmi(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok("Nordic Semiconductor ASA")

    def _cgmm(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok(self.cgmm)

    def _cgmr(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok(self.firmware)

    def _xmodemuuid(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return ok(f"%XMODEMUUID: {self.firmware_uuid}")

    def _attesttoken(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        if attestation_problem(self.cgmm, self.firmware) is not None:
            return error()  # an nRF9160, or mfw < 2.0.0: the command does not exist there
        return ok(f'%ATTESTTOKEN: "{self.attestation_token(ctx.entropy.nonce())}"')

    def attestation_token(self, nonce: bytes) -> str:
        """``<b64url CBOR body>.<b64url COSE_Sign1>``: body ``[1, device UUID, device type,
        firmware UUID, nonce]``; the COSE payload (tag 55799) is ``[1, device UUID,
        SHA-256(body), nonce]``, signed with the identity key (the payload layout is this
        simulator's choice: only the body's layout is documented)."""
        body = cbor2.dumps([ATTEST_MESSAGE_TYPE, self.device_uuid.bytes, self.model.device_type,
                            self.firmware_uuid.bytes, nonce])
        digest = hashes.Hash(hashes.SHA256())
        digest.update(body)
        payload = cbor2.dumps(cbor2.CBORTag(_SELF_DESCRIBE, [
            ATTEST_MESSAGE_TYPE, self.device_uuid.bytes, digest.finalize(), nonce]))
        return b64url_encode(body) + "." + b64url_encode(sign_cose_sign1(payload,
                                                                         self.identity_key))

    def _cmng(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return handle_cmng(self, cmd, ctx.faults)

    def _keygen(self, cmd: ParsedCommand, ctx: _Context) -> Reply:
        return handle_keygen(self, cmd, ctx.entropy, ctx.faults)


_Handler = Callable[[Modem, ParsedCommand, _Context], Reply]

#: The command table: ``(name, operation) -> handler``. Anything else answers ERROR.
_COMMANDS: dict[tuple[str, Op], _Handler] = {
    ("", Op.ACTION): Modem._at,
    ("+CFUN", Op.READ): Modem._cfun_read,
    ("+CFUN", Op.TEST): Modem._cfun_test,
    ("+CFUN", Op.SET): Modem._cfun_set,
    ("+CMEE", Op.READ): Modem._cmee_read,
    ("+CMEE", Op.TEST): Modem._cmee_test,
    ("+CMEE", Op.SET): Modem._cmee_set,
    ("+CGSN", Op.ACTION): Modem._cgsn,
    ("+CGSN", Op.SET): Modem._cgsn_set,
    ("+CGMI", Op.ACTION): Modem._cgmi,
    ("+CGMM", Op.ACTION): Modem._cgmm,
    ("+CGMR", Op.ACTION): Modem._cgmr,
    ("%XMODEMUUID", Op.ACTION): Modem._xmodemuuid,
    ("%ATTESTTOKEN", Op.ACTION): Modem._attesttoken,
    ("%CMNG", Op.SET): Modem._cmng,
    ("%KEYGEN", Op.SET): Modem._keygen,
}
