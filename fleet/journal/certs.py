"""The journal's certificate records: what fleet issued or found in a sec_tag, its
confirmation on the device, and each run's outcome for it."""

from __future__ import annotations

import sqlite3

from fleet.journal.engine import JournalEngine
from fleet.journal.records import utc_now
from fleet.journal.schema import CERT_FIELDS, cert_state
from fleet.state import CertState

__all__ = ["CertJournal"]

#: Certificate outcomes that a later "unchanged" in the same run must not hide.
_CERT_STICKY = ("issued", "written", "rewritten", "pre-existing")


class CertJournal(JournalEngine):
    """Certificate operations of the journal."""

    async def cert_state(self, imei: str, sec_tag: int, cert_type: int) -> CertState | None:
        """What the journal knows of the certificate (type 1) or chain (type 0) in a tag."""

        def op(conn: sqlite3.Connection) -> CertState | None:
            cur = conn.execute(f"SELECT {', '.join(CERT_FIELDS)} FROM certs WHERE imei = ? AND "
                               "sec_tag = ? AND type = ?", (imei, sec_tag, cert_type))
            row = cur.fetchone()
            return None if row is None else cert_state(row)

        return await self._execute(op)

    async def cert_issued(self, *, run_id: str, imei: str, sec_tag: int, cert_type: int,
                          state: str, source_sha256: str | None, pem: str | None, sha256: str,
                          serial: str | None = None, issuer: str | None = None,
                          not_after: str | None = None) -> None:
        """Record a certificate before it is written (``state="issued"``: fleet signed it, or
        the chain it is about to write) or one found on the device (``"pre-existing"``), as
        ``run_id``'s, with no outcome yet: an issued one the run never saw listed is reported
        as ``interrupted``."""
        if state not in ("issued", "pre-existing"):
            raise ValueError(f"invalid certificate state {state!r}")
        await self._execute(lambda c: c.execute(
            "INSERT INTO certs (imei, sec_tag, type, state, source_sha256, pem, sha256, serial, "
            "issuer, not_after, cmng_sha256, run_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, "
            "?, ?, ?, NULL, ?, ?) ON CONFLICT (imei, sec_tag, type) DO UPDATE SET state = "
            "excluded.state, source_sha256 = excluded.source_sha256, pem = excluded.pem, "
            "sha256 = excluded.sha256, serial = excluded.serial, issuer = excluded.issuer, "
            "not_after = excluded.not_after, cmng_sha256 = NULL, run_id = excluded.run_id, "
            "outcome = NULL, error = NULL, updated_at = excluded.updated_at",
            (imei, sec_tag, cert_type, state, source_sha256, pem, sha256, serial, issuer,
             not_after, run_id, utc_now())))

    async def cert_confirmed(self, *, imei: str, sec_tag: int, cert_type: int,
                             cmng_sha256: str) -> None:
        """The modem lists ``cmng_sha256`` for the journaled certificate: mark it confirmed
        (a pre-existing one keeps its state)."""
        await self._execute(lambda c: c.execute(
            "UPDATE certs SET cmng_sha256 = ?, state = CASE state WHEN 'issued' THEN 'confirmed' "
            "ELSE state END, updated_at = ? WHERE imei = ? AND sec_tag = ? AND type = ? AND "
            "sha256 = ?", (cmng_sha256, utc_now(), imei, sec_tag, cert_type, cmng_sha256)))

    async def cert_result(self, *, run_id: str, imei: str, sec_tag: int, cert_type: int,
                          outcome: str, error: str | None) -> str:
        """Record the outcome of a certificate in this run; returns the outcome kept. Within one
        run an ``unchanged`` never replaces an earlier outcome that changed something."""

        def op(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT run_id, outcome FROM certs WHERE imei = ? AND sec_tag = ? "
                               "AND type = ?", (imei, sec_tag, cert_type)).fetchone()
            kept = outcome
            if (row is not None and row[0] == run_id and outcome == "unchanged"
                    and row[1] in _CERT_STICKY):
                kept = row[1]
            conn.execute(
                "INSERT INTO certs (imei, sec_tag, type, run_id, outcome, error, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (imei, sec_tag, type) DO UPDATE SET "
                "run_id = excluded.run_id, outcome = excluded.outcome, error = excluded.error, "
                "updated_at = excluded.updated_at",
                (imei, sec_tag, cert_type, run_id, kept, error, utc_now()))
            return kept

        return await self._execute(op)
