"""Glue between `fleet run` and the manifest: load the signing key BEFORE anything is sent, and
at the end check the run's record (:mod:`fleet.report`, from the journal) with the checks of
`fleet verify`, sign it, and write it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import structlog

from fleet.errors import ManifestError
from fleet.manifest import (
    build_signed,
    directory_problem,
    name_problem,
    sign,
    verify_contents,
    write_manifest,
)
from fleet.plan import Plan
from fleet.records import RunRecord
from fleet.station_key import (
    Signer,
    ensure_throwaway_key,
    keyid,
    open_signing_key,
    public_key_pem,
)

__all__ = ["ManifestWriter", "check_own_manifest", "load_plan_signing_key", "manifest_path_problem",
           "prepare_manifest"]

#: Signs, checks and writes the manifest of a run's record; returns the path written.
ManifestWriter = Callable[[RunRecord], Awaitable[Path]]


def load_plan_signing_key(plan: Plan) -> Signer:
    """The plan's station key (a file, or a key in a PKCS#11 token, logged in now); a demo plan
    (``throwaway_signing_key: true``) gets a file made."""
    log = structlog.get_logger()
    if plan.signing_key is None:
        raise ManifestError(
            "the plan has no signing_key: create one with `fleet station-key init --out keys` "
            "and set `signing_key: keys/station.pem` in the plan"
        )
    if plan.throwaway_signing_key and isinstance(plan.signing_key, Path):
        key, created = ensure_throwaway_key(plan.signing_key)
        if created:
            log.warning("created a THROWAWAY station signing key: fine for a demo, never for "
                        "production (use `fleet station-key init`)", path=str(plan.signing_key),
                        keyid=keyid(key))
        return key
    return open_signing_key(plan.signing_key)


def manifest_path_problem(plan: Plan, *, create: bool) -> str | None:
    """Why a manifest of a run starting now could not be written where the plan says (its
    name, then its directory: made with ``create``, else only tried), or None."""
    now = datetime.now(UTC)
    return name_problem(plan.sample_manifest_path(now=now)) \
        or directory_problem(plan.manifest_directory(now=now), create=create)


def prepare_manifest(plan: Plan) -> ManifestWriter:
    """Check the signing key, the manifest's name and its directory now (so a missing key, a
    name the file system cannot take or a directory that cannot be written stops the run before
    anything is sent) and return the coroutine function that signs and writes the manifest of a
    run's record."""
    key = load_plan_signing_key(plan)
    problem = manifest_path_problem(plan, create=True)
    if problem is not None:
        raise ManifestError(f"{problem}: the run cannot write its manifest there, so it does "
                            "not start (fix the directory, or change manifest: in the plan)")

    async def write(record: RunRecord) -> Path:
        signed = build_signed(record, station_public_key_pem=public_key_pem(key))
        check_own_manifest(signed)
        document = sign(signed, key)
        now = datetime.now(UTC)
        path = plan.manifest_path(now=now, run_id=record.run_id)
        written: Path = await anyio.to_thread.run_sync(write_manifest, path, document)
        structlog.get_logger().info("manifest written", path=str(written),
                                    complete=record.complete)
        return written

    return write


def check_own_manifest(signed: Mapping[str, Any]) -> None:
    """Run on what a manifest is about to sign the checks of `fleet verify` that concern its
    contents (shape, devices, answers, certificates, summary): one that fails is a bug in
    fleet, so it is refused, never signed. (The signature is made by :func:`sign`, which
    refuses a key other than the embedded station key.)"""
    report = verify_contents(signed)
    if not report.ok:
        reasons = "; ".join(check.line() for check in report.failures[:5])
        more = len(report.failures) - 5
        raise ManifestError("the manifest failed its own verification and was not written "
                            f"(a bug in fleet; the journal is intact): {reasons}"
                            + (f" (and {more} more)" if more > 0 else ""))
