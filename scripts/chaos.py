#!/usr/bin/env python3
"""Chaos run: interrupt `fleet run` at random instants with SIGKILL or SIGTERM, check every
manifest after each interruption, then let one run finish, and check that nothing was lost and no
captured key was ever replaced.

    python scripts/chaos.py --devices 16 --kills 10 [--sigterm-ratio 0.5] [--seed N]
        [--sim "--interface shell --shell-wildcards off --shell-buffer 3584"]

It starts `fleet sim` (ptys, --state, --log, some faults), writes a two-key plan (client key with
CSR, endorsement key), runs `fleet run --json` K times, each time sending SIGTERM (with
probability --sigterm-ratio, drawn from --seed) or SIGKILL after a random delay, then runs it until
it finishes (at most a few times, since faults can fail a device), and checks:

1. every planned key is on every device (the simulator's state file);
2. the public key recorded for each (device, sec_tag) - the last captured %KEYGEN answer in the
   journal and the final manifest - equals the one in the simulator's state;
3. no key whose answer had been captured was ever replaced: for every captured answer, the
   simulator's log shows no %CMNG=3 (delete) or new %KEYGEN of that (device, sec_tag) after the
   capture, and each (device, client-key sec_tag) has exactly one captured public key;
4. the final manifest verifies with the station key (`fleet verify`);

and after EACH interruption (and each run that finished first):

5. every manifest written so far passes `fleet verify --pubkey` (a partial one included);
6. every key a manifest reports with a %KEYGEN answer (generated, unchanged, recovered, changed)
   is the key the simulator holds for that IMEI and sec_tag (same public key), unless a later
   manifest reports another key there or a later invocation journaled a %KEYGEN or delete of it;
7. a manifest with `complete: true` lists every planned slot, each `done` with every planned key
   carrying an answer or `failed` saying why (a fault may fail a device), and no device of the
   run still `interrupted`;
8. a run stopped by SIGTERM prints exactly one JSON document on stdout and exits 3 with
   `interrupted: true` naming its partial manifest (or 0/1 with `interrupted: false` when it had
   finished first); one that lands before the run began must exit 3 with a document saying so
   (`run_id` null, no manifest) and nothing journaled, and one in the interpreter's own first
   milliseconds (the default action: nothing journaled, nothing sent) is counted apart;
9. the JSON document lists the same devices as the manifest it names, with the same IMEIs,
   device outcomes and key outcomes (both are built from the journal's record of the run).

Each violation is printed as it is found (the interruption, signal and delay, the manifest and
the check), then counted per invariant at the end; the last line states the invariants and the
counts. Exit 0 only when every invariant holds, 1 otherwise. The seed fixes the schedule (each
delay and signal) and the simulator's faults; where each signal lands still depends on timing, so
rerun a failing seed a few times to reproduce.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from fleet.credentials import parse_keygen
from fleet.records import ANSWER_OUTCOMES

TLS, ENDORSEMENT = 16842753, 33
KEY_NAMES = ("tls", "endorsement")
TYPE_CODES = {"client_key": 2, "endorsement_key": 8}
FLEET = [sys.executable, "-m", "fleet"]
TERM_WAIT_S = 60.0

INVARIANTS = {
    1: ("keys-on-devices", "every planned key is on every device"),
    2: ("journal-equals-sim", "journal's public keys equal the simulator's"),
    3: ("no-replacement", "no captured key was replaced (one key per device and sec_tag; no "
                          "delete or %KEYGEN after its capture)"),
    4: ("final-verifies", "the final manifest verifies"),
    5: ("every-manifest-verifies", "every manifest written so far passes fleet verify after each "
                                   "interruption (partial ones included)"),
    6: ("manifests-equal-sim", "every key a manifest reports with an answer is the key the "
                               "simulator holds, unless a later manifest or run replaced it"),
    7: ("complete-means-all-done", "a complete manifest lists every planned slot, done with "
                                   "every planned key's answer, or failed saying why"),
    8: ("sigterm-json", "a SIGTERMed run prints one JSON document and exits 3 interrupted (0/1 "
                        "if it had finished), naming its partial manifest"),
    9: ("document-equals-manifest", "the JSON document lists the manifest's devices and "
                                    "outcomes exactly"),
}


@dataclass
class Chaos:
    """What the run has seen so far: violations, the manifests checked, the counters."""

    work: Path
    devices: int
    seed: int
    violations: list[tuple[int, str]] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    verified: dict[Path, bool] = field(default_factory=dict)  # path -> passed fleet verify
    kills: int = 0
    terms: int = 0
    early_terms: int = 0
    finished_first: int = 0

    def violate(self, invariant: int, when: str, text: str, dedupe: str | None = None) -> None:
        if dedupe is not None:
            if dedupe in self.reported:
                return
            self.reported.add(dedupe)
        line = f"[{INVARIANTS[invariant][0]}] {when}: {text}"
        self.violations.append((invariant, line))
        print(f"VIOLATION: {line}")


def start_sim(work: Path, devices: int, seed: int, faults: list[str], profile: str,
              options: list[str]) -> subprocess.Popen[bytes]:
    args = [*FLEET, "sim", "--count", str(devices), "--dir", str(work / "ports"), "--state",
            str(work / "sim.json"), "--log", str(work / "sim.log"), "--seed", str(seed),
            "--profile", profile, *options]
    for fault in faults:
        args += ["--fault", fault]
    with (work / "sim.err").open("wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise SystemExit(f"fleet sim did not start: {(work / 'sim.err').read_text()}")
    print(f"simulator: {line}")
    return proc


def write_plan(work: Path) -> Path:
    plan = work / "plan.yaml"
    plan.write_text(textwrap.dedent(f"""\
        version: 1
        station: chaos
        signing_key: keys/station.pem
        manifest: out/{{station}}-{{run_id}}.json
        defaults: {{timeout_s: 3, keygen_timeout_s: 6, retries: 6}}
        keys:
          tls:
            sec_tag: {TLS}
            type: client_key
            response: csr
            attributes: {{CN: "{{imei}}", O: "Chaos"}}
            if_exists: fail
          endorsement:
            sec_tag: {ENDORSEMENT}
            type: endorsement_key
        slots:
          - port: "{work / 'ports' / 'modem*'}"
            keys: [tls, endorsement]
        """))
    return plan


def fleet_run(plan: Path, journal: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*FLEET, "run", str(plan), "--journal", str(journal), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def open_intents(journal: Path) -> int:
    """Steps whose outcome was never recorded (a later run marks them 'unknown')."""
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=2) as conn:
            return int(conn.execute("SELECT count(*) FROM steps WHERE outcome IS NULL OR "
                                    "error LIKE 'the run died%'").fetchone()[0])
    except sqlite3.Error:
        return 0


def journal_rows(journal: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    if not journal.exists():
        return []
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []


def when_of(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def der_of(pem: str | None) -> bytes | None:
    if not pem:
        return None
    try:
        return load_pem_public_key(pem.encode()).public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except ValueError:
        return pem.encode()


def sim_keys(work: Path) -> tuple[dict[tuple[str, int, int], bytes | None], set[str]]:
    state = json.loads((work / "sim.json").read_text())
    keys: dict[tuple[str, int, int], bytes | None] = {}
    for modem in state["modems"]:
        for cred in modem["credentials"]:
            where = (modem["imei"], cred["sec_tag"], cred["type"])
            keys[where] = der_of(cred.get("public_key_pem"))
    return keys, {m["imei"] for m in state["modems"]}


def load_manifest(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def manifests(work: Path) -> list[Path]:
    """Every manifest written so far, oldest first (fleet never writes over one)."""
    found = [p for p in (work / "out").glob("*.json") if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def check_manifests(chaos: Chaos, journal: Path, when: str) -> None:
    """Invariants 5, 6 and 7 over every manifest written so far."""
    work = chaos.work
    paths = manifests(work)
    new = [p for p in paths if p not in chaos.verified]
    if new:
        result = subprocess.run([*FLEET, "verify", "--json", *map(str, new), "--pubkey",
                                 str(work / "keys" / "station.pub.pem")],
                                capture_output=True, text=True, check=False)
        try:
            reports = {Path(m["path"]): m for m in json.loads(result.stdout)["manifests"]}
        except (ValueError, KeyError, TypeError):
            reports = {}
        for path in new:
            report = reports.get(path)
            ok = bool(report and report.get("ok"))
            chaos.verified[path] = ok
            if report is None:
                chaos.violate(5, when, f"manifest {path.name}: fleet verify gave no report "
                                       f"(exit {result.returncode}): "
                                       f"{(result.stdout + result.stderr).strip()[:400]}")
            elif not ok:
                reasons = report.get("failures") or [report.get("usage_error", "?")]
                complete = report.get("complete")
                for reason in reasons:
                    chaos.violate(5, when, f"manifest {path.name} (complete={complete}): "
                                           f"fleet verify: {reason}")
    docs = {p: load_manifest(p) for p in paths}
    keys, imeis = sim_keys(work)
    planned_ports = {str(work / "ports" / f"modem{i}") for i in range(chaos.devices)}
    # Every claim (manifest, IMEI, sec_tag, type) -> public key, in the order written.
    claims: list[tuple[Path, float, str, int, int, bytes | None, str]] = []
    for path, doc in docs.items():
        signed = doc.get("signed") if doc else None
        if not isinstance(signed, dict):
            chaos.violate(5, when, f"manifest {path.name}: not a manifest document",
                          dedupe=f"shape {path}")
            continue
        ended = when_of(signed["run"]["ended_at"])
        for device in signed.get("devices", []):
            for key in device.get("keys", []):
                if key.get("outcome") in ANSWER_OUTCOMES and key.get("keygen_answer"):
                    claims.append((path, ended, device["imei"], key["sec_tag"],
                                   TYPE_CODES.get(key["type"], -1), der_of(key["public_key_pem"]),
                                   key["outcome"]))
        if path in new and signed["run"].get("complete") is True:
            check_complete(chaos, when, path, signed, planned_ports)
    for i, (path, ended, imei, tag, kind, pem, outcome) in enumerate(claims):
        held = keys.get((imei, tag, kind))
        if held == pem:
            continue
        later = [c for c in claims[i + 1:] if c[2:5] == (imei, tag, kind) and c[5] != pem]
        if later:
            continue
        replaced = journal_rows(journal, "SELECT id, action, intent_at FROM steps WHERE imei = ? "
                                "AND sec_tag = ? AND type = ? AND action IN ('keygen', 'delete') "
                                "ORDER BY id", (imei, tag, kind))
        if any(when_of(row[2]) > ended for row in replaced):
            continue
        what = ("the simulator has no modem with that IMEI" if imei not in imeis else
                "the simulator holds no key there" if (imei, tag, kind) not in keys else
                "the simulator holds another public key there")
        chaos.violate(6, when, f"manifest {path.name}: device {imei} sec_tag {tag} type {kind} "
                               f"reported {outcome} with an answer, but {what} (no later manifest "
                               f"or journaled %KEYGEN/delete replaced it)",
                      dedupe=f"sim {path} {imei} {tag} {kind}")


def check_complete(chaos: Chaos, when: str, path: Path, signed: dict[str, Any],
                   planned_ports: set[str]) -> None:
    ports = {d.get("port") for d in signed.get("devices", [])}
    if missing := sorted(planned_ports - ports, key=lambda p: (len(p), p)):
        chaos.violate(7, when, f"manifest {path.name} is complete but lacks slot(s) "
                               f"{', '.join(Path(p).name for p in missing)}")
    for device in signed.get("devices", []):
        label = f"manifest {path.name} is complete but device {device.get('slot')} " \
                f"{device.get('imei')}"
        if device.get("outcome") not in ("done", "failed"):
            chaos.violate(7, when, f"{label} is {device.get('outcome')} "
                                   f"({device.get('error')})")
        names = [k.get("name") for k in device.get("keys", [])]
        if tuple(names) != KEY_NAMES:
            chaos.violate(7, when, f"{label} lists keys {names}, planned {list(KEY_NAMES)}")
        if device.get("outcome") == "failed":  # a fault may fail a device; it says why
            if not device.get("error"):
                chaos.violate(7, when, f"{label} failed without saying why")
            continue
        for key in device.get("keys", []):
            if key.get("outcome") not in ANSWER_OUTCOMES or not key.get("keygen_answer"):
                chaos.violate(7, when, f"{label} key {key.get('name')} is {key.get('outcome')} "
                                       f"without an answer ({key.get('error')})")


def parse_document(out: bytes) -> tuple[dict[str, Any] | None, str]:
    """The one JSON document on stdout, or None and why not."""
    text = out.decode(errors="replace")
    if not text.strip():
        return None, "stdout is empty"
    decoder = json.JSONDecoder()
    try:
        doc, end = decoder.raw_decode(text.lstrip())
    except ValueError as exc:
        return None, f"stdout is not JSON ({exc}): {text[:200]!r}"
    rest = text.lstrip()[end:].strip()
    if rest:
        return None, f"more than one document on stdout (trailing {rest[:120]!r})"
    if not isinstance(doc, dict):
        return None, "the document is not an object"
    return doc, ""


def _device_views(devices: list[dict[str, Any]]) -> list[tuple[str, str, str, list[str]]]:
    """(slot, IMEI, outcome, key outcomes) per device, in a fixed order."""
    return sorted((d["slot"], d["imei"] or "", d["outcome"], [k["outcome"] for k in d["keys"]])
                  for d in devices)


def check_document(chaos: Chaos, when: str, doc: dict[str, Any]) -> None:
    """Invariant 9: the document and the manifest it names list the same devices, with the
    same outcomes (both are built from the journal's record of the run)."""
    if not doc.get("manifest"):
        return
    path = Path(doc["manifest"])
    manifest = load_manifest(path)
    if manifest is None:
        chaos.violate(9, when, f"the document names manifest {path}, which cannot be read")
        return
    here = _device_views(doc.get("devices", []))
    there = _device_views(manifest["signed"]["devices"])
    for mine, theirs in zip(here, there, strict=False):
        if mine != theirs:
            chaos.violate(9, when, f"the document says (slot, imei, outcome, key outcomes) "
                                   f"{mine}, manifest {path.name} says {theirs}")
    if len(here) != len(there):
        chaos.violate(9, when, f"the document lists {len(here)} device(s), manifest "
                               f"{path.name} {len(there)}")


def check_terminated(chaos: Chaos, when: str, proc: subprocess.Popen[bytes], out: bytes,
                     journal: Path) -> str:
    """Invariant 8 for a run sent SIGTERM; returns a short note for the progress line."""
    code = proc.returncode
    if code == -signal.SIGTERM:
        started = journal_rows(journal, "SELECT run_id FROM runs WHERE pid = ?", (proc.pid,))
        if not started and not out:
            chaos.early_terms += 1
            return "killed by the default action before fleet started its run"
        chaos.violate(8, when, f"fleet run died of SIGTERM (exit {code}, no clean stop) after "
                               f"it had started run {started[0][0] if started else '?'}; "
                               f"stdout {out[:120]!r}")
        return f"exit {code}"
    doc, why = parse_document(out)
    if doc is None:
        chaos.violate(8, when, f"exit {code}: {why}")
        return f"exit {code}"
    interrupted = doc.get("interrupted")
    if code == 3 and doc.get("run_id") is None:  # stopped before its run began
        chaos.early_terms += 1
        if interrupted is not True or doc.get("manifest") is not None:
            chaos.violate(8, when, "stopped before the run began, but the document says "
                                   f"interrupted={interrupted!r}, manifest={doc.get('manifest')}")
        if journal_rows(journal, "SELECT run_id FROM runs WHERE pid = ?", (proc.pid,)):
            chaos.violate(8, when, "the document says the run never began, the journal has it")
        return "exit 3 before the run began (nothing sent)"
    if code == 3:
        if interrupted is not True:
            chaos.violate(8, when, f"exit 3 but the document says interrupted={interrupted!r}")
        if not doc.get("manifest") and not doc.get("manifest_error"):
            chaos.violate(8, when, "exit 3 but the document names no partial manifest (and no "
                                   "manifest_error)")
    elif code in (0, 1):
        if interrupted is not False:
            chaos.violate(8, when, f"exit {code} (finished) but the document says "
                                   f"interrupted={interrupted!r}")
    else:
        chaos.violate(8, when, f"exit {code}, expected 3 (or 0/1 if it had finished)")
    check_document(chaos, when, doc)
    name = Path(doc["manifest"]).name if doc.get("manifest") else "no manifest"
    return f"exit {code}, interrupted={interrupted}, {name}"


def check(work: Path, journal: Path, manifest: Path | None, devices: int) -> list[str]:
    """Invariants 1-4 at the end."""
    problems: list[str] = []
    state = json.loads((work / "sim.json").read_text())
    sim_keys: dict[tuple[str, int, int], str] = {}
    for modem in state["modems"]:
        for cred in modem["credentials"]:
            if cred.get("public_key_pem"):
                sim_keys[(modem["imei"], cred["sec_tag"], cred["type"])] = cred["public_key_pem"]
    # 1. every planned key on every device
    for modem in state["modems"][:devices]:
        for tag, kind in ((TLS, 2), (ENDORSEMENT, 8)):
            if (modem["imei"], tag, kind) not in sim_keys:
                problems.append(f"[keys-on-devices] device {modem['imei']}: no key in sec_tag "
                                f"{tag} type {kind}")
    # 2. journal's captured answers match the simulator's keys
    with sqlite3.connect(journal) as conn:
        captured = conn.execute(
            "SELECT imei, sec_tag, type, answer FROM keys WHERE state = 'captured'").fetchall()
        steps = conn.execute(
            "SELECT imei, sec_tag, type, answer, done_at FROM steps WHERE action = 'keygen' "
            "AND outcome = 'ok' ORDER BY id").fetchall()
    if len(captured) != 2 * devices:
        problems.append(f"[journal-equals-sim] journal holds {len(captured)} captured keys, "
                        f"expected {2 * devices}")
    for imei, tag, kind, answer in captured:
        pem = parse_keygen(answer).public_key_pem
        if sim_keys.get((imei, tag, kind)) != pem:
            problems.append(f"[journal-equals-sim] device {imei} sec_tag {tag}: journal key "
                            f"differs from the device's")
    # 3. no captured key replaced
    distinct: dict[tuple[str, int], set[str]] = {}
    capture_time: dict[tuple[str, int], float] = {}
    for imei, tag, kind, answer, done_at in steps:
        if kind == 2:
            distinct.setdefault((imei, tag), set()).add(parse_keygen(answer).public_key_pem)
            capture_time.setdefault((imei, tag), when_of(done_at))
    for (imei, tag), keys in distinct.items():
        if len(keys) != 1:
            problems.append(f"[no-replacement] device {imei} sec_tag {tag}: {len(keys)} "
                            f"different keys captured")
    index_of = {m["imei"]: m["index"] for m in state["modems"]}
    log = [json.loads(line) for line in (work / "sim.log").read_text().splitlines() if line]
    for (imei, tag), first in capture_time.items():
        for rec in log:
            text = rec.get("command", "").upper()
            if rec.get("modem") != index_of[imei] or rec["time"] <= first:
                continue
            if text.startswith((f"AT%CMNG=3,{tag},2", f"AT%KEYGEN={tag},2")):
                problems.append(f"[no-replacement] device {imei}: '{text}' sent after its key "
                                f"was captured")
    # 4. the manifest verifies
    if manifest is None:
        problems.append("[final-verifies] the final run wrote no manifest")
    else:
        result = subprocess.run([*FLEET, "verify", str(manifest), "--pubkey",
                                 str(work / "keys" / "station.pub.pem")],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problems.append(f"[final-verifies] fleet verify {manifest.name} failed: "
                            f"{result.stdout}{result.stderr}")
    return problems


def interrupt(chaos: Chaos, plan: Path, journal: Path, number: int, rng: random.Random,
              max_delay: float, sigterm_ratio: float) -> int:
    """One run of `fleet run`, interrupted after a random delay; returns 1 if steps were in
    flight when the signal was sent."""
    settled = open_intents(journal)
    # Both draws every time, so a seed gives the same schedule whatever happens.
    delay = rng.uniform(0.05, max_delay)
    sig = signal.SIGTERM if rng.random() < sigterm_ratio else signal.SIGKILL
    proc = fleet_run(plan, journal)
    try:
        out, _ = proc.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        pass
    else:
        chaos.finished_first += 1
        when = f"interruption {number} (run finished before its {sig.name} at {delay:.2f}s)"
        note = check_terminated(chaos, when, proc, out, journal)
        print(f"interruption {number:2}: run finished before {delay:.2f}s ({note})")
        check_manifests(chaos, journal, when)
        return 0
    proc.send_signal(sig)
    open_now = max(0, open_intents(journal) - settled)
    when = f"interruption {number} ({sig.name} at {delay:.2f}s, seed {chaos.seed})"
    if sig is signal.SIGKILL:
        chaos.kills += 1
        proc.communicate()
        note = "killed"
    else:
        chaos.terms += 1
        try:
            out, _ = proc.communicate(timeout=TERM_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            chaos.violate(8, when, f"fleet run had not exited {TERM_WAIT_S:.0f}s after SIGTERM "
                                   f"(then killed)")
            note = "hung, killed"
        else:
            note = check_terminated(chaos, when, proc, out, journal)
    print(f"interruption {number:2}: {sig.name} at {delay:.2f}s, {open_now} step(s) in flight "
          f"({note})")
    check_manifests(chaos, journal, when)
    return int(open_now > 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--kills", type=int, default=10,
                        help="interruptions (each a SIGKILL or a SIGTERM)")
    parser.add_argument("--sigterm-ratio", type=float, default=0.5,
                        help="share of the interruptions sent as SIGTERM (drawn from --seed)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--profile", default="realistic", choices=["fast", "realistic"])
    parser.add_argument("--fault", action="append", default=None,
                        help="simulator faults (default: a little of each recoverable kind)")
    parser.add_argument("--max-delay", type=float, default=5.0,
                        help="interrupt each run after a random delay up to this many seconds")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    parser.add_argument("--sim", default="", metavar="OPTIONS",
                        help="more `fleet sim` options, in one string (the line in front of the "
                        "modems: --interface shell ...)")
    args = parser.parse_args()
    if not 0.0 <= args.sigterm_ratio <= 1.0:
        parser.error("--sigterm-ratio must be between 0 and 1")
    faults = args.fault if args.fault is not None else [
        "lost-answer:0.05", "disconnect:0.01", "keygen-fail:0.05", "garble:0.01",
        "urc-storm:0.05"]
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fleet-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"chaos: devices={args.devices} kills={args.kills} sigterm-ratio={args.sigterm_ratio} "
          f"seed={args.seed} profile={args.profile} faults={faults} sim={args.sim!r} "
          f"workdir={work}")
    subprocess.run([*FLEET, "station-key", "init", "--out", str(work / "keys")], check=True,
                   stdout=subprocess.DEVNULL)
    chaos = Chaos(work=work, devices=args.devices, seed=args.seed)
    sim = start_sim(work, args.devices, args.seed, faults, args.profile, shlex.split(args.sim))
    plan, journal = write_plan(work), work / "journal.sqlite"
    started = time.monotonic()
    mid_step = 0
    try:
        for number in range(1, args.kills + 1):
            mid_step += interrupt(chaos, plan, journal, number, rng, args.max_delay,
                                  args.sigterm_ratio)
        manifest = None
        for attempt in range(1, 4):
            proc = fleet_run(plan, journal)
            out, _ = proc.communicate(timeout=600)
            when = f"final run {attempt}"
            doc, why = parse_document(out)
            if doc is None:
                chaos.violate(8, when, f"exit {proc.returncode}: {why}")
                break
            check_document(chaos, when, doc)
            manifest = Path(doc["manifest"]) if doc.get("manifest") else None
            counts: dict[str, int] = {}
            for device in doc["devices"]:
                for key in device["keys"]:
                    counts[key["outcome"]] = counts.get(key["outcome"], 0) + 1
            print(f"final run {attempt}: exit {proc.returncode}, key outcomes {counts}")
            for device in doc["devices"]:
                if device["error"]:
                    print(f"  {device['slot']} {device['imei']}: {device['error']}")
            check_manifests(chaos, journal, when)
            if proc.returncode == 0:
                break
        elapsed = time.monotonic() - started
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(30)
    log = [json.loads(line) for line in (work / "sim.log").read_text().splitlines() if line]
    keygens = sum(1 for r in log if r.get("command", "").upper().startswith("AT%KEYGEN")
                  and "fault" not in r)
    deletes = sum(1 for r in log if r.get("command", "").upper().startswith("AT%CMNG=3")
                  and "fault" not in r)
    fired: dict[str, int] = {}
    for rec in log:
        if "fault" in rec:
            fired[rec["fault"]] = fired.get(rec["fault"], 0) + 1
    with sqlite3.connect(journal) as conn:
        recovered = conn.execute("SELECT count(*) FROM steps WHERE action = 'delete'"
                                 ).fetchone()[0]
    print(f"figures: {elapsed:.1f}s, {chaos.kills} SIGKILL and {chaos.terms} SIGTERM "
          f"({chaos.early_terms} of them before fleet had started its run), "
          f"{chaos.finished_first} run(s) finished before their signal, {mid_step} with steps "
          f"in flight, {keygens} %KEYGEN and {deletes} %CMNG=3 received, {recovered} journaled "
          f"deletes (recoveries), faults fired {fired}")
    for problem in check(work, journal, manifest, args.devices):
        invariant = next(n for n, (name, _) in INVARIANTS.items()
                         if problem.startswith(f"[{name}]"))
        chaos.violations.append((invariant, f"{problem.split('] ', 1)[0]}] at the end: "
                                            f"{problem.split('] ', 1)[1]}"))
    for number, (name, text) in INVARIANTS.items():
        print(f"invariant {number} ({name}): {text}")
    passed = sum(chaos.verified.values())
    counts_text = (f"{chaos.kills} kills, {chaos.terms} terms, {passed}/{len(chaos.verified)} "
                   f"manifests verified, seed {args.seed}")
    if chaos.violations:
        for number in sorted({n for n, _ in chaos.violations}):
            lines = [line for n, line in chaos.violations if n == number]
            print(f"violated {INVARIANTS[number][0]}: {len(lines)} time(s), first: {lines[0]}")
        broken = sorted({n for n, _ in chaos.violations})
        names = ", ".join(INVARIANTS[n][0] for n in broken)
        print(f"chaos: FAILED, {len(chaos.violations)} violation(s) of {len(broken)} of "
              f"{len(INVARIANTS)} invariants ({names}); {counts_text} "
              f"(reproduce: --seed {args.seed} --devices {args.devices} --kills {args.kills})")
        return 1
    names = ", ".join(name for name, _ in INVARIANTS.values())
    print(f"chaos: OK, all {len(INVARIANTS)} invariants hold ({names}); {counts_text}")
    if not args.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
