"""Verify a manifest: its shape, every signature, the trust in the signer, every embedded answer.

How this works: nothing in the file is taken on faith. The canonical bytes are recomputed from the
parsed ``signed`` (``rfc8785.dumps``) and each signature is checked over them with the key its
``keyid`` names: the ``station_public_key`` embedded in ``signed`` or one of the ``trusted`` keys.
At least one valid signature must be by the embedded station key (a manifest names its signer),
and, when trusted keys are given, at least one by a trusted key; without trusted keys the report
carries a warning that the signer was not checked. Then every ``%KEYGEN`` answer is decoded again
and checked (digest, CSR self-signature, sec_tag, payload id, device UUID), and the fields derived
from it (``csr_pem``, ``public_key_pem``, ``cose_payload``) must equal what it yields (``csr_pem``
is the CSR without the modem's NULL parameter, or exactly the modem's bytes: both PEMs of the
answer's body are accepted, nothing else); a key's ``certificate`` must carry that public key
and match its recorded SHA-256 (:mod:`fleet.manifest.certcheck`); a device's attestation
token must carry its device UUID (:mod:`fleet.manifest.attestcheck`).

The result is a :class:`VerifyReport` with one :class:`VerifyCheck` per check (passed or failed,
each failure with its reason and where it is) and the warnings; :func:`verify` never raises for a
bad document.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fleet.credentials import KeygenAnswer, check_keygen, decode_keygen, parse_keygen
from fleet.errors import CredentialError, ManifestError
from fleet.manifest.attestcheck import check_attestation
from fleet.manifest.build import FORMAT, RESPONSE_PAYLOAD_IDS, answer_fields
from fleet.manifest.certcheck import check_certificate_fields
from fleet.manifest.shape import check_device, check_key, check_signed, check_summary
from fleet.manifest.signing import ALGORITHMS, canonical_bytes, decode_sig, signature_valid
from fleet.manifest.store import load_document, nesting_problem
from fleet.records import ANSWER_OUTCOMES
from fleet.station_key import PublicKey, algorithm, keyid, public_key_from_pem

__all__ = ["NOT_TRUSTED_WARNING", "VerifyCheck", "VerifyReport", "verify", "verify_contents",
           "verify_file"]

_KEYID = re.compile(r"[0-9a-f]{64}\Z")
NOT_TRUSTED_WARNING = (
    "the signer was not checked against a trusted key (no --pubkey): the signature only shows "
    "that the manifest is intact and signed by the key it names itself"
)


class VerifyCheck(NamedTuple):
    """One check: ``name`` (``shape``, ``signature``, ``trust``, ``digest``...), whether it
    passed, a human ``detail`` (the reason, for a failure) and ``where`` it applies
    (``""`` for the whole manifest, ``"signature 1"``, ``"device <imei> key <name>"``).
    A named tuple: a manifest of 200 devices makes about 4,000 of them."""

    name: str
    ok: bool
    detail: str
    where: str = ""

    def line(self) -> str:
        """``<where>: <detail>`` (just the detail for a manifest-wide check)."""
        return f"{self.where}: {self.detail}" if self.where else self.detail

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "where": self.where, "detail": self.detail}


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """The result of :func:`verify`. ``ok`` only when at least one check ran and all passed."""

    checks: tuple[VerifyCheck, ...]
    warnings: tuple[str, ...] = ()
    complete: bool | None = None  #: ``signed.run.complete`` (False: a partial run)
    signers: tuple[str, ...] = ()  #: keyids with a valid signature
    trusted_signers: tuple[str, ...] = ()  #: ... of which are trusted
    devices: int = 0
    answers: int = 0  #: %KEYGEN answers re-checked
    certificates: int = 0  #: client certificates re-checked
    tokens: int = 0  #: attestation tokens re-checked

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failures(self) -> tuple[VerifyCheck, ...]:
        return tuple(check for check in self.checks if not check.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "complete": self.complete,
            "signers": list(self.signers),
            "trusted_signers": list(self.trusted_signers),
            "devices": self.devices,
            "answers": self.answers,
            "certificates": self.certificates,
            "tokens": self.tokens,
            "failures": [check.line() for check in self.failures],
            "warnings": list(self.warnings),
            "checks": [check.to_dict() for check in self.checks],
        }


@dataclass
class _Report:
    checks: list[VerifyCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    complete: bool | None = None
    signers: list[str] = field(default_factory=list)
    trusted_signers: list[str] = field(default_factory=list)
    devices: int = 0
    answers: int = 0
    certificates: int = 0
    tokens: int = 0

    def add(self, name: str, ok: bool, detail: str, where: str = "") -> None:
        self.checks.append(VerifyCheck(name=name, ok=ok, detail=detail, where=where))

    def fail(self, name: str, detail: str, where: str = "") -> None:
        self.add(name, False, detail, where)

    def build(self) -> VerifyReport:
        return VerifyReport(
            checks=tuple(self.checks), warnings=tuple(self.warnings), complete=self.complete,
            signers=tuple(self.signers), trusted_signers=tuple(self.trusted_signers),
            devices=self.devices, answers=self.answers, certificates=self.certificates,
            tokens=self.tokens,
        )


def verify(
    document: Mapping[str, Any] | bytes | str, *, trusted: Sequence[PublicKey] | None
) -> VerifyReport:
    """Verify a manifest (parsed, or its file bytes) against ``trusted`` public keys.

    ``trusted=None`` checks the signature with the embedded station key only and adds a warning
    that the signer is not trusted; an empty sequence trusts nobody (always a failure).
    """
    if isinstance(document, bytes | str):
        return verify_file(document, trusted=trusted)[0]
    problem = nesting_problem(document)
    if problem is not None:
        report = _Report()
        report.fail("json", problem)
        return report.build()
    return _verify_document(document, trusted)


def verify_file(
    data: bytes | str, *, trusted: Sequence[PublicKey] | None
) -> tuple[VerifyReport, dict[str, Any] | None]:
    """:func:`verify` of a manifest file's contents, and the document parsed from them (None
    when they are not a manifest's JSON), for a caller that reads the document too."""
    try:
        document = load_document(data)
    except ManifestError as exc:
        report = _Report()
        report.fail("json", str(exc))
        return report.build(), None
    return _verify_document(document, trusted), document


def _verify_document(doc: Mapping[str, Any], trusted: Sequence[PublicKey] | None
                     ) -> VerifyReport:
    """Every check of :func:`verify` on a document already known to nest within bounds."""
    report = _Report()
    signed, signatures = _check_top(doc, report)
    shape_ok = False
    data: bytes | None = None
    if signed is not None:
        before = len(report.checks)
        shape_ok = check_signed(signed, report.fail)
        try:
            data = canonical_bytes(signed)
        except ManifestError as exc:
            report.fail("canonical", f"signed cannot be canonicalized: {exc}")
        if shape_ok and data is not None and len(report.checks) == before:
            report.add("shape", True, f"document shape is {FORMAT}")
        run = signed.get("run")
        if isinstance(run, Mapping) and isinstance(run.get("complete"), bool):
            report.complete = run["complete"]
    _check_signatures(signed, signatures or [], data, trusted, report)
    if signed is not None and shape_ok:
        _check_devices(signed, report, decode_keygen)
    return report.build()


def verify_contents(signed: Mapping[str, Any]) -> VerifyReport:
    """The checks of :func:`verify` that concern what ``signed`` says (its shape, every device,
    answer and certificate, the summary), not its signatures: what a manifest about to be signed
    must pass."""
    report = _Report()
    problem = nesting_problem(signed)
    if problem is not None:
        report.fail("json", problem)
    elif check_signed(signed, report.fail):
        report.add("shape", True, f"document shape is {FORMAT}")
        _check_devices(signed, report, parse_keygen)  # a run's answers: decoded already
    return report.build()


def _check_top(
    doc: Mapping[str, Any], report: _Report
) -> tuple[Mapping[str, Any] | None, list[Any] | None]:
    extra = sorted(set(doc) - {"signed", "signatures"})
    if extra:
        report.fail("shape", f"unexpected top-level field(s) {', '.join(map(repr, extra))}: "
                    "a manifest is {\"signed\": ..., \"signatures\": [...]}")
    signed = doc.get("signed")
    if not isinstance(signed, Mapping):
        report.fail("shape", "missing or non-object 'signed'")
        signed = None
    signatures = doc.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        report.fail("shape", "missing or empty 'signatures': the manifest is not signed")
        signatures = None
    return signed, signatures


def _signature_entry(entry: Any, where: str, report: _Report) -> tuple[str, str, bytes] | None:
    if not isinstance(entry, Mapping):
        report.fail("shape", "a signature must be an object {keyid, alg, sig}", where)
        return None
    problems = [f"unexpected field {name!r}" for name in sorted(set(entry) - {"keyid", "alg",
                                                                              "sig"})]
    kid, alg, sig = entry.get("keyid"), entry.get("alg"), entry.get("sig")
    if not isinstance(kid, str) or not _KEYID.match(kid):
        problems.append("keyid must be 64 lower-case hex digits (SHA-256 of the key's DER)")
    if alg not in ALGORITHMS:
        problems.append(f"alg {alg!r} is not one of {', '.join(ALGORITHMS)}")
    raw = b""
    if not isinstance(sig, str):
        problems.append("sig must be a base64 string")
    else:
        try:
            raw = decode_sig(sig)
        except ManifestError as exc:
            problems.append(str(exc))
    for problem in problems:
        report.fail("shape", problem, where)
    if problems:
        return None
    return str(kid), str(alg), raw


def _check_signatures(
    signed: Mapping[str, Any] | None,
    signatures: list[Any],
    data: bytes | None,
    trusted: Sequence[PublicKey] | None,
    report: _Report,
) -> None:
    known: dict[str, PublicKey] = {}
    embedded_id: str | None = None
    pem = None if signed is None else signed.get("station_public_key")
    if isinstance(pem, str):
        try:
            embedded = public_key_from_pem(pem, "signed.station_public_key")
        except ManifestError as exc:
            report.fail("station_key", str(exc))
        else:
            embedded_id = keyid(embedded)
            known[embedded_id] = embedded
    trusted_ids = []
    for trusted_key in trusted or ():
        kid = keyid(trusted_key)
        known.setdefault(kid, trusted_key)
        trusted_ids.append(kid)
    for index, entry in enumerate(signatures, 1):
        where = f"signature {index}"
        parsed = _signature_entry(entry, where, report)
        if parsed is None or data is None:
            continue
        kid, alg, sig = parsed
        key = known.get(kid)
        if key is not None and signature_valid(key, alg, sig, data):
            roles = [r for r, yes in (("station key", kid == embedded_id),
                                      ("trusted", kid in trusted_ids)) if yes]
            report.add("signature", True, f"valid {alg} signature by key {kid}"
                       + (f" ({', '.join(roles)})" if roles else ""), where)
            report.signers.append(kid)
            continue
        actual = next((k for k, pub in known.items()
                       if k != kid and signature_valid(pub, alg, sig, data)), None)
        if actual is not None:
            report.fail("keyid", f"keyid {kid} does not name the key that made this signature "
                        f"(key {actual} did)", where)
        elif key is None:
            report.warnings.append(
                f"{where}: key {kid} is neither the embedded station key nor a trusted key: "
                "that signature was not checked")
        elif alg != algorithm(key):
            report.fail("signature", f"alg {alg} does not match key {kid} ({algorithm(key)})",
                        where)
        else:
            report.fail("signature", f"{alg} signature by key {kid} does NOT verify over the "
                        "canonical bytes of signed: the manifest was changed after signing, or "
                        "the signature is corrupt", where)
    if data is None:
        return
    if embedded_id is not None:
        if embedded_id in report.signers:
            report.add("station_key", True,
                       f"signed by its embedded station_public_key ({embedded_id})")
        else:
            claimed = any(isinstance(e, Mapping) and e.get("keyid") == embedded_id
                          for e in signatures)
            report.fail("station_key", "no valid signature by the embedded station_public_key "
                        f"(key {embedded_id})" + ("" if claimed else
                                                  ": the manifest names one key and is signed "
                                                  "by another"))
    if trusted is None:
        report.warnings.append(NOT_TRUSTED_WARNING)
        return
    report.trusted_signers = [kid for kid in report.signers if kid in trusted_ids]
    if report.trusted_signers:
        report.add("trust", True, f"signed by trusted key {', '.join(report.trusted_signers)}")
    else:
        given = ", ".join(trusted_ids) if trusted_ids else "none given"
        report.fail("trust", f"not signed by any trusted key (trusted keys: {given})")


def _device_label(device: Mapping[str, Any], index: int) -> str:
    if isinstance(device.get("imei"), str):
        return f"device {device['imei']}"
    if isinstance(device.get("slot"), str):
        return f"device in slot {device['slot']}"
    return f"devices[{index}]"


#: How :func:`_check_devices` decodes a ``keygen_answer``: cached or not (see
#: :func:`fleet.credentials.decode_keygen`).
_Decode = Callable[[str], KeygenAnswer]


def _check_devices(signed: Mapping[str, Any], report: _Report, decode: _Decode) -> None:
    devices = signed["devices"]
    report.devices = len(devices)
    all_ok = True
    for index, device in enumerate(devices):
        where = _device_label(device, index) if isinstance(device, Mapping) else f"devices[{index}]"
        readable, device_uuid = check_device(device, where, report.fail)
        if not readable:
            all_ok = False
            continue
        report.tokens += check_attestation(device, device_uuid, where, report.add)
        seen: dict[str, uuid.UUID] = {}
        for key_index, key in enumerate(device["keys"]):
            name = key.get("name") if isinstance(key, Mapping) else None
            key_where = f"{where} key {name if isinstance(name, str) else f'#{key_index}'}"
            if not check_key(key, key_where, report.fail):
                all_ok = False
                continue
            answer = _check_answer(key, device_uuid, key_where, report, decode)
            known = (answer.public_key_der if answer is not None
                     and key["public_key_pem"] == answer.public_key_pem else None)
            report.certificates += check_certificate_fields(key, key_where, report.add,
                                                            known_der=known)
            if answer is not None:
                seen[key["name"]] = answer.payload.device_uuid
        if len(set(seen.values())) > 1:
            listing = ", ".join(f"{name}: {value}" for name, value in seen.items())
            report.fail("device_uuid", f"the answers of one device carry different device UUIDs "
                        f"({listing})", where)
    if all_ok:
        check_summary(signed, report.add)


def _check_answer(
    key: Mapping[str, Any], device_uuid: uuid.UUID | None, where: str, report: _Report,
    decode: _Decode,
) -> KeygenAnswer | None:
    """Check the key's ``keygen_answer`` and what the manifest derived from it; the decoded
    answer (None: there is none, or it does not decode)."""
    text = key["keygen_answer"]
    if text is None:
        if key["outcome"] in ANSWER_OUTCOMES:
            report.fail("answer", f"outcome {key['outcome']!r} but no keygen_answer recorded",
                        where)
        return None
    report.answers += 1
    try:
        answer = decode(text)
    except CredentialError as exc:
        report.fail("answer", f"keygen_answer does not decode: {exc}", where)
        return None
    for check in check_keygen(answer):
        report.add(check.name, check.ok, check.detail if check.ok else
                   f"{check.name}: {check.detail}", where)
    payload = answer.payload

    def compare(name: str, ok: bool, good: str, bad: str) -> None:
        report.add(name, ok, good if ok else f"{name}: {bad}", where)

    compare("sec_tag", payload.sec_tag == key["sec_tag"], f"sec_tag {payload.sec_tag}",
            f"the answer is for sec_tag {payload.sec_tag}, the key says {key['sec_tag']}")
    wanted_id = RESPONSE_PAYLOAD_IDS[key["response"]]
    compare("payload_id", payload.payload_id == wanted_id, f"payload id {payload.payload_id}",
            f"the answer has payload id {payload.payload_id}, response {key['response']!r} "
            f"means {wanted_id}")
    if device_uuid is None:
        report.fail("device_uuid", f"device_uuid: the answer is from device "
                    f"{payload.device_uuid} but the device's device_uuid is null", where)
    else:
        compare("device_uuid", payload.device_uuid == device_uuid,
                f"device UUID {payload.device_uuid}",
                f"the answer is from device {payload.device_uuid}, the device's device_uuid "
                f"is {device_uuid}")
    for name, value in answer_fields(answer).items():
        if name != "keygen_answer":
            accepted = [value]
            if name == "csr_pem" and answer.raw_csr_pem is not None:
                accepted.append(answer.raw_csr_pem)  # the modem's bytes, NULL parameter kept
            compare(name, key[name] in accepted, f"{name} is what the answer yields",
                    "not what the keygen_answer yields" if key[name] is not None
                    else "null, but the keygen_answer yields one")
    return answer
