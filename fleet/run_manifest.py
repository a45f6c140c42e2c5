"""Glue between `fleet run` and the manifest: load the signing key BEFORE anything is sent, and
at the end build the run's records from the journal, sign them and write the manifest.

The manifest is built from the journal, not from memory, so a run that was interrupted and
resumed (one run id, several invocations) gets one manifest covering everything it did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import structlog

from fleet import __version__
from fleet.certs.report import certificate_extra
from fleet.credentials import parse_keygen
from fleet.errors import CredentialError, ManifestError
from fleet.journal import CertState, Journal, RunInfo
from fleet.manifest import ANSWER_OUTCOMES, answer_fields, build_signed, sign, write_manifest
from fleet.plan import Plan
from fleet.records import DeviceOutcome, DeviceRecord, KeyOutcome, KeyRecord, RunRecord
from fleet.station_key import (
    SigningKey,
    ensure_throwaway_key,
    keyid,
    load_signing_key,
    public_key_pem,
)

__all__ = ["ManifestWriter", "build_run_record", "prepare_manifest"]

ManifestWriter = Callable[[Journal, RunInfo, str, bool], Awaitable[Path]]
_TYPES = {2: "client_key", 8: "endorsement_key"}


def load_plan_signing_key(plan: Plan) -> SigningKey:
    """The plan's station key; a demo plan (``throwaway_signing_key: true``) gets one made."""
    log = structlog.get_logger()
    if plan.signing_key is None:
        raise ManifestError(
            "the plan has no signing_key: create one with `fleet station-key init --out keys` "
            "and set `signing_key: keys/station.pem` in the plan"
        )
    if plan.throwaway_signing_key:
        key, created = ensure_throwaway_key(plan.signing_key)
        if created:
            log.warning("created a THROWAWAY station signing key: fine for a demo, never for "
                        "production (use `fleet station-key init`)", path=str(plan.signing_key),
                        keyid=keyid(key))
        return key
    return load_signing_key(plan.signing_key)


def prepare_manifest(plan: Plan) -> ManifestWriter:
    """Check the signing key now (so a missing key stops the run before anything is sent) and
    return the coroutine function that writes the manifest at the end."""
    key = load_plan_signing_key(plan)

    async def write(journal: Journal, run: RunInfo, ended_at: str, complete: bool) -> Path:
        record = await build_run_record(journal, plan, run, ended_at=ended_at,
                                        complete=complete)
        document = sign(build_signed(record, station_public_key_pem=public_key_pem(key)), key)
        path = plan.manifest_path(now=datetime.now(UTC), run_id=run.run_id)
        written: Path = await anyio.to_thread.run_sync(write_manifest, path, document)
        structlog.get_logger().info("manifest written", path=str(written), complete=complete)
        return written

    return write


def _key_record(row: dict[str, Any], plan: Plan, certs: Mapping[tuple[Any, ...], CertState]
                ) -> KeyRecord:
    spec = plan.keys.get(row["key_name"])
    outcome = KeyOutcome(row["outcome"])
    has_ca = spec is not None and spec.ca is not None
    answer = None
    if row["answer"] and (has_ca or not row["public_key_pem"]):
        try:
            answer = parse_keygen(row["answer"])
        except CredentialError as exc:  # cannot happen: only verified answers are captured
            raise ManifestError(f"journal answer for {row['key_name']} does not decode: {exc}"
                                ) from exc
    extra: dict[str, Any] = {"cmng_sha256": row["cmng_sha"]} if row["cmng_sha"] else {}
    if spec is not None and spec.ca is not None and answer is not None:
        where = (row["imei"], row["sec_tag"])
        extra.update(certificate_extra(
            certs.get((*where, 1)), certs.get((*where, 0)) if spec.ca.chain else None,
            csr_sha256=hashlib.sha256(answer.body).hexdigest()))
    # A key that failed only because its certificate did keeps its captured answer.
    cert_failed = extra.get("certificate", {}).get("outcome") == "failed"
    fields: dict[str, Any] = {}
    if row["answer"] and (outcome in ANSWER_OUTCOMES or outcome is KeyOutcome.PRE_EXISTING
                          or cert_failed):
        if answer is not None:
            fields = answer_fields(answer)
        else:  # what the journal stored when it captured the answer: no need to decode it
            fields = {"keygen_answer": row["answer"], "csr_pem": row["csr_pem"],
                      "public_key_pem": row["public_key_pem"],
                      "cose_payload": json.loads(row["cose_payload"])}
    return KeyRecord(
        name=row["key_name"], sec_tag=row["sec_tag"], type=_TYPES.get(row["type"], "unknown"),
        response=spec.response.value if spec else "public_key", outcome=outcome,
        error=row["error"], attempts=row["attempts"], extra=extra, **fields)


async def build_run_record(journal: Journal, plan: Plan, run: RunInfo, *, ended_at: str,
                           complete: bool) -> RunRecord:
    """The :class:`RunRecord` of ``run`` as the journal has it."""
    slots, keys = await journal.run_results(run.run_id)
    certs = {(c.imei, c.sec_tag, c.type): c for c in await journal.run_certs(run.run_id)}
    order = {spec.name: i for i, spec in enumerate(plan.keys.values())}
    by_device: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for row in keys:
        by_device.setdefault((row["slot"], row["imei"]), []).append(row)
    devices = []
    for slot in slots:
        rows = sorted(by_device.get((slot["slot"], slot["imei"]), []),
                      key=lambda k: order.get(k["key_name"], len(order)))
        devices.append(DeviceRecord(
            slot=slot["slot"], port=slot["port"], imei=slot["imei"],
            device_uuid=slot["device_uuid"], model=slot["model"], firmware=slot["firmware"],
            outcome=DeviceOutcome(slot["outcome"] or "interrupted"), error=slot["error"],
            keys=tuple(_key_record(row, plan, certs) for row in rows)))
    return RunRecord(run_id=run.run_id, station=plan.station, plan_path=str(plan.path),
                     plan_sha256=plan.sha256, started_at=run.started_at, ended_at=ended_at,
                     complete=complete, tool_version=__version__, devices=tuple(devices))
