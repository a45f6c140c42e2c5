"""Helpers for end-to-end `fleet run` tests: write plans, run the real CLI, read its JSON."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["KEYS", "fleet", "journal_rows", "run_json", "wait_for", "write_plan"]

REPO = Path(__file__).resolve().parents[1]

KEYS = """
keys:
  tls:
    sec_tag: 16842753
    type: client_key
    response: csr
    attributes: {CN: "{imei}", O: "Acme", C: "NO"}
    key_usage: "101010000"
    if_exists: keep
  endorsement:
    sec_tag: 33
    type: endorsement_key
"""


def write_plan(directory: Path, *, ports: str, keys: str = KEYS, extra: str = "",
               defaults: str = "{timeout_s: 5, keygen_timeout_s: 10, retries: 2}",
               slot_keys: str = "[tls, endorsement]", name: str = "plan.yaml",
               signing: str = "signing_key: keys/station.pem\nthrowaway_signing_key: true") -> Path:
    """A plan in ``directory`` whose single slot entry covers ``ports``."""
    text = (
        "version: 1\n"
        "station: test-station\n"
        f"{signing}\n"
        "manifest: out/{station}-{run_id}.json\n"
        f"defaults: {defaults}\n"
    )
    text += textwrap.dedent(keys) + textwrap.dedent(extra)
    text += f"slots:\n  - port: {json.dumps(ports)}\n    keys: {slot_keys}\n"
    path = directory / name
    path.write_text(text)
    return path


def fleet(*args: str | Path, cwd: Path | None = None, timeout: float = 300,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `python -m fleet` command."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "fleet", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=full_env)


def run_json(plan: Path, journal: Path, *args: str | Path, timeout: float = 300
             ) -> tuple[int, dict[str, Any], str]:
    """`fleet run --json`; returns (exit code, the JSON document, stderr)."""
    result = fleet("run", plan, "--journal", journal, "--json", *args, timeout=timeout)
    try:
        document = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not one JSON document ({exc}):\n{result.stdout}\n"
                             f"stderr:\n{result.stderr}") from exc
    return result.returncode, document, result.stderr


def journal_rows(journal: Path, sql: str) -> list[tuple[Any, ...]]:
    """``sql`` against a journal a live run may be writing (read only; nothing yet: [])."""
    if not journal.exists():
        return []
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1) as conn:
            return list(conn.execute(sql))
    except sqlite3.OperationalError:
        return []


def logged_commands(log: Path, *, faults: bool = True) -> list[str]:
    """The command of every line of a simulator's ``log:`` file (a fault's line names the
    command it hit; ``faults=False`` leaves those lines out: each command received once), in
    order; none before the simulator made the file."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [entry["command"] for entry in map(json.loads, lines)
            if "command" in entry and (faults or "fault" not in entry)]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
