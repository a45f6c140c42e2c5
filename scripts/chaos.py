#!/usr/bin/env python3
"""Chaos run: SIGKILL `fleet run` at random instants, then let one run finish, and check that
nothing was lost and no captured key was ever replaced.

    python scripts/chaos.py --devices 16 --kills 10

It starts `fleet sim` (ptys, --state, --log, some faults), writes a two-key plan (client key with
CSR, endorsement key), runs `fleet run` K times killing it with SIGKILL after a random delay,
then runs it until it finishes (at most a few times, since faults can fail a device), and checks:

1. every planned key is on every device (the simulator's state file);
2. the public key recorded for each (device, sec_tag) - the last captured %KEYGEN answer in the
   journal and the final manifest - equals the one in the simulator's state;
3. no key whose answer had been captured was ever replaced: for every captured answer, the
   simulator's log shows no %CMNG=3 (delete) or new %KEYGEN of that (device, sec_tag) after the
   capture, and each (device, client-key sec_tag) has exactly one captured public key;
4. the final manifest verifies with the station key (`fleet verify`).

Exit 0 only when every invariant holds. Figures are printed as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fleet.credentials import parse_keygen

TLS, ENDORSEMENT = 16842753, 33
FLEET = [sys.executable, "-m", "fleet"]


def start_sim(work: Path, devices: int, seed: int, faults: list[str], profile: str
              ) -> subprocess.Popen[bytes]:
    args = [*FLEET, "sim", "--count", str(devices), "--dir", str(work / "ports"), "--state",
            str(work / "sim.json"), "--log", str(work / "sim.log"), "--seed", str(seed),
            "--profile", profile]
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


def check(work: Path, journal: Path, manifest: Path | None, devices: int) -> list[str]:
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
                problems.append(f"device {modem['imei']}: no key in sec_tag {tag} type {kind}")
    # 2. journal's captured answers match the simulator's keys
    with sqlite3.connect(journal) as conn:
        captured = conn.execute(
            "SELECT imei, sec_tag, type, answer FROM keys WHERE state = 'captured'").fetchall()
        steps = conn.execute(
            "SELECT imei, sec_tag, type, answer, done_at FROM steps WHERE action = 'keygen' "
            "AND outcome = 'ok' ORDER BY id").fetchall()
    if len(captured) != 2 * devices:
        problems.append(f"journal holds {len(captured)} captured keys, expected {2 * devices}")
    for imei, tag, kind, answer in captured:
        pem = parse_keygen(answer).public_key_pem
        if sim_keys.get((imei, tag, kind)) != pem:
            problems.append(f"device {imei} sec_tag {tag}: journal key differs from the device's")
    # 3. no captured key replaced
    distinct: dict[tuple[str, int], set[str]] = {}
    capture_time: dict[tuple[str, int], float] = {}
    for imei, tag, kind, answer, done_at in steps:
        if kind == 2:
            distinct.setdefault((imei, tag), set()).add(parse_keygen(answer).public_key_pem)
            when = datetime.fromisoformat(done_at.replace("Z", "+00:00")).timestamp()
            capture_time.setdefault((imei, tag), when)
    for (imei, tag), keys in distinct.items():
        if len(keys) != 1:
            problems.append(f"device {imei} sec_tag {tag}: {len(keys)} different keys captured")
    index_of = {m["imei"]: m["index"] for m in state["modems"]}
    log = [json.loads(line) for line in (work / "sim.log").read_text().splitlines() if line]
    for (imei, tag), first in capture_time.items():
        for rec in log:
            text = rec.get("command", "").upper()
            if rec.get("modem") != index_of[imei] or rec["time"] <= first:
                continue
            if text.startswith((f"AT%CMNG=3,{tag},2", f"AT%KEYGEN={tag},2")):
                problems.append(f"device {imei}: '{text}' sent after its key was captured")
    # 4. the manifest verifies
    if manifest is None:
        problems.append("the final run wrote no manifest")
    else:
        result = subprocess.run([*FLEET, "verify", str(manifest), "--pubkey",
                                 str(work / "keys" / "station.pub.pem")],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problems.append(f"fleet verify failed: {result.stdout}{result.stderr}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--profile", default="realistic", choices=["fast", "realistic"])
    parser.add_argument("--fault", action="append", default=None,
                        help="simulator faults (default: a little of each recoverable kind)")
    parser.add_argument("--max-delay", type=float, default=5.0,
                        help="kill each run after a random delay up to this many seconds")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    args = parser.parse_args()
    faults = args.fault if args.fault is not None else [
        "lost-answer:0.05", "disconnect:0.01", "keygen-fail:0.05", "garble:0.01",
        "urc-storm:0.05"]
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fleet-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"chaos: devices={args.devices} kills={args.kills} seed={args.seed} "
          f"profile={args.profile} faults={faults} workdir={work}")
    subprocess.run([*FLEET, "station-key", "init", "--out", str(work / "keys")], check=True,
                   stdout=subprocess.DEVNULL)
    sim = start_sim(work, args.devices, args.seed, faults, args.profile)
    plan, journal = write_plan(work), work / "journal.sqlite"
    started = time.monotonic()
    mid_step = 0
    try:
        for kill in range(1, args.kills + 1):
            settled = open_intents(journal)
            proc = fleet_run(plan, journal)
            delay = rng.uniform(0.05, args.max_delay)
            try:
                proc.wait(delay)
                print(f"kill {kill:2}: run finished before {delay:.2f}s (exit {proc.returncode})")
                continue
            except subprocess.TimeoutExpired:
                pass
            proc.send_signal(signal.SIGKILL)
            open_now = max(0, open_intents(journal) - settled)
            proc.wait()
            mid_step += open_now > 0
            print(f"kill {kill:2}: SIGKILL at {delay:.2f}s, {open_now} step(s) in flight")
        manifest = None
        for attempt in range(1, 4):
            proc = fleet_run(plan, journal)
            out, _ = proc.communicate(timeout=600)
            doc: dict[str, Any] = json.loads(out)
            manifest = Path(doc["manifest"]) if doc.get("manifest") else None
            counts: dict[str, int] = {}
            for device in doc["devices"]:
                for key in device["keys"]:
                    counts[key["outcome"]] = counts.get(key["outcome"], 0) + 1
            print(f"final run {attempt}: exit {proc.returncode}, key outcomes {counts}")
            for device in doc["devices"]:
                if device["error"]:
                    print(f"  {device['slot']} {device['imei']}: {device['error']}")
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
    print(f"figures: {elapsed:.1f}s, {args.kills} kills ({mid_step} with steps in flight), "
          f"{keygens} %KEYGEN and {deletes} %CMNG=3 received, {recovered} journaled deletes "
          f"(recoveries), faults fired {fired}")
    problems = check(work, journal, manifest, args.devices)
    invariants = ["every planned key is on every device",
                  "journal's public keys equal the simulator's",
                  "no captured key was replaced (one key per device and sec_tag; no delete or "
                  "%KEYGEN after its capture)",
                  "the final manifest verifies"]
    for text in invariants:
        print(f"invariant: {text}")
    if problems:
        for problem in problems:
            print(f"VIOLATION: {problem}")
        return 1
    print(f"chaos: OK, all {len(invariants)} invariants hold")
    if not args.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
