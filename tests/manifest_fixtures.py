"""Run records with realistic %KEYGEN answers (built the way the modem builds them), for the
manifest tests."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from fleet.credentials import build_csr, build_keygen_answer, parse_keygen, public_key_der
from fleet.manifest import answer_fields
from fleet.nrf91 import luhn_digit
from fleet.records import DeviceOutcome, DeviceRecord, KeyOutcome, KeyRecord, RunRecord

IDENTITY = ec.generate_private_key(ec.SECP256R1())  # the modems' identity key (one for all)
TLS_TAG = 16842753
ENDORSEMENT_TAG = 33


def imei(n: int) -> str:
    """A 15-digit IMEI with a valid Luhn check digit."""
    body = f"35265610036{n:03d}"[:14]
    return body + luhn_digit(body)


def keygen_answer(device_uuid: uuid.UUID, sec_tag: int, *, csr: bool = True,
                  attributes: str | None = None) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    body = (build_csr(key, device_uuid=device_uuid, attributes=attributes, key_usage="101010000")
            if csr else public_key_der(key))
    return build_keygen_answer(body, payload_id=9 if csr else 8, device_uuid=device_uuid,
                               sec_tag=sec_tag, identity_key=IDENTITY, nonce=os.urandom(16))


def key_record(name: str, device_uuid: uuid.UUID, *, imei_: str, csr: bool = True,
               outcome: KeyOutcome = KeyOutcome.GENERATED, **overrides: Any) -> KeyRecord:
    sec_tag = TLS_TAG if csr else ENDORSEMENT_TAG
    answer = keygen_answer(device_uuid, sec_tag, csr=csr,
                           attributes=f"CN={imei_},O=Acme,C=NO" if csr else None)
    fields: dict[str, Any] = {
        "name": name,
        "sec_tag": sec_tag,
        "type": "client_key" if csr else "endorsement_key",
        "response": "csr" if csr else "public_key",
        "outcome": outcome,
        "attempts": 1,
        **answer_fields(parse_keygen(answer)),
    }
    fields.update(overrides)
    return KeyRecord(**fields)


def device_record(n: int, *, slot: str | None = None, outcome: DeviceOutcome = DeviceOutcome.DONE,
                  keys: tuple[KeyRecord, ...] | None = None) -> DeviceRecord:
    device_uuid = uuid.UUID(int=(0x5050_3041 << 96) + n)
    number = imei(n)
    if keys is None:
        keys = (key_record("tls", device_uuid, imei_=number),
                key_record("endorsement", device_uuid, imei_=number, csr=False))
    return DeviceRecord(
        slot=slot if slot is not None else f"slot{n}",
        port=f"sim://{n}",
        imei=number,
        device_uuid=str(device_uuid),
        model="nRF9160-SICA",
        firmware="mfw_nrf9160_1.3.5",
        outcome=outcome,
        keys=keys,
    )


def run_record(devices: tuple[DeviceRecord, ...] | None = None, *, complete: bool = True,
               **overrides: Any) -> RunRecord:
    if devices is None:
        devices = (device_record(1), device_record(2))
    record = RunRecord(
        run_id="01J9Z8RUNID",
        station="line1-a",
        plan_path="plans/demo.yaml",
        plan_sha256="ab" * 32,
        started_at="2025-01-01T10:00:00Z",
        ended_at="2025-01-01T10:02:03Z",
        complete=complete,
        tool_version="0.1.0",
        devices=devices,
    )
    return replace(record, **overrides)
