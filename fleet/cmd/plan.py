"""``fleet plan check PLAN``: validate a plan and print its expanded slots and key actions.

Nothing here opens a port: globs are expanded against the file system (``--no-expand`` leaves
them as patterns), and each key action is shown as the ``AT%KEYGEN=...`` line it would send with
its templates unrendered. It also says whether `fleet run` could start here: whether the signing
key exists and loads, whether a manifest can be written in the manifest directory (a temp
file is made and removed there; no directory is made), and whether the run would refuse the
journal (read as `fleet run --check` reads it, never written). Exit 0 for a valid plan (also
when the key, the directory or the journal is not usable here, which the output says), 2 for
an invalid or unreadable one (every ``file:line: reason`` on stderr, then a line saying nothing
was sent to any device).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet import exitcodes
from fleet.certs.authority import LocalCa
from fleet.errors import ManifestError, PlanError
from fleet.journal.files import journal_problem, old_journal_problem
from fleet.logs import configure_logging
from fleet.plan import KeySpec, KeyType, Plan, Settings, Slot, load_plan
from fleet.plan.ports import is_glob
from fleet.run_manifest import manifest_path_problem
from fleet.station_key import algorithm, keyid, open_signing_key

__all__ = ["plan_document", "register", "run_check"]

_NOTHING_SENT = "nothing was sent to any device"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan", help="work with plans", description="Work with provisioning plans.")
    commands = parser.add_subparsers(dest="plan_command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a plan and print the expanded slots and key actions",
        description="Validate PLAN and print every slot (after expanding globs, lists and "
        "sim:// ranges) with the key actions and the AT%KEYGEN command each would send "
        "(templates unrendered), and whether the signing key loads, the manifest "
        "directory is writable and the journal is usable here. Nothing is sent to any device.",
    )
    check.add_argument("plan", metavar="PLAN", help="the plan file (YAML)")
    check.add_argument("--json", action="store_true", help="print one JSON document")
    check.add_argument("--only", metavar="SLOT", action="append", default=[],
                       help="keep only this slot (name or port); repeatable")
    check.add_argument("--no-expand", action="store_true",
                       help="do not expand port globs (check a plan written for another "
                       "machine); each glob stays one slot")
    check.set_defaults(func=run_check)


@dataclass(frozen=True, slots=True, kw_only=True)
class Readiness:
    """Whether `fleet run` could start on this machine: each problem, or None."""

    signing_key: str | None  #: the signing key's state, in words
    signing_key_problem: str | None
    manifest_problem: str | None
    journal_problem: str | None

    @property
    def problems(self) -> list[str]:
        return [p for p in (self.signing_key_problem, self.manifest_problem,
                            self.journal_problem) if p]


def readiness(plan: Plan) -> Readiness:
    """Load the signing key (never making one), check the manifest's name and try its
    directory (never made), and read the journal as `fleet run --check` would (never made or
    written; and the one at the old default place, which `fleet run` also asks about)."""
    state, problem = None, None
    if plan.signing_key is None:
        problem = ("the plan has no signing_key: create one with `fleet station-key init --out "
                   "keys` and set `signing_key: keys/station.pem`")
    elif plan.throwaway_signing_key and isinstance(plan.signing_key, Path) \
            and not os.path.lexists(plan.signing_key):
        state = "does not exist yet: a throwaway key is made at the first run"
    else:
        try:
            key = open_signing_key(plan.signing_key)
            state = f"loads: {algorithm(key)} key {keyid(key)[:16]}..."
            if not isinstance(plan.signing_key, Path):
                from fleet.hsm.token import describe  # loaded already, to open the key

                state += f", {describe(plan.signing_key)}"
        except ManifestError as exc:
            problem = str(exc)
    return Readiness(signing_key=state, signing_key_problem=problem,
                     manifest_problem=manifest_path_problem(plan, create=False),
                     journal_problem=journal_problem(plan.journal_path, station=plan.station)
                     or old_journal_problem(plan.journal_path, station=plan.station,
                                            plan_sha256=plan.sha256, plan_path=plan.path))


def run_check(args: argparse.Namespace) -> int:
    """Run ``fleet plan check``."""
    configure_logging(level="warning")  # a signing key readable by others: a warning on stderr
    try:
        plan = load_plan(args.plan, only=args.only, expand_globs=not args.no_expand)
    except PlanError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        count = len(exc.errors)
        hint = ""
        if not args.no_expand and any("matches no port" in e for e in exc.errors):
            hint = " (--no-expand checks the rest without the devices)"
        print(f"fleet plan check: {args.plan}: {count} error{'s' if count != 1 else ''}"
              f"{hint}; {_NOTHING_SENT}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "changed": False, "failed": True,
                              "plan": args.plan, "errors": exc.errors}, indent=2))
        return exitcodes.USAGE
    ready = readiness(plan)
    if args.json:
        print(json.dumps({**plan_document(plan), "ready": not ready.problems,
                          "signing_key_state": ready.signing_key,
                          "signing_key_problem": ready.signing_key_problem,
                          "manifest_problem": ready.manifest_problem,
                          "journal_problem": ready.journal_problem}, indent=2))
    else:
        _print_human(plan, ready)
    return exitcodes.OK


def _settings(settings: Settings, *, slot: bool = False) -> dict[str, Any]:
    """Settings as a dict; for a slot without ``concurrency``, which is plan-wide."""
    return {name: getattr(settings, name) for name in Settings.__dataclass_fields__
            if not (slot and name == "concurrency")}


def _action(spec: KeySpec) -> dict[str, Any]:
    action: dict[str, Any] = {
        "name": spec.name,
        "sec_tag": spec.sec_tag,
        "type": str(spec.type),
        "response": str(spec.response),
        "if_exists": str(spec.if_exists) if spec.type is KeyType.CLIENT_KEY else None,
        "attributes": dict(spec.attributes),
        "key_usage": spec.key_usage,
        "command": spec.keygen_template(),
    }
    if spec.ca is not None:  # only keys with a CA have the field
        action["ca"] = {
            "kind": "local" if isinstance(spec.ca, LocalCa) else "command",
            "describe": spec.ca.describe(),
            "chain": str(spec.ca.chain.path) if spec.ca.chain else None,
            "chain_sha256": spec.ca.chain.sha256 if spec.ca.chain else None}
    return action


def _slot(slot: Slot) -> dict[str, Any]:
    return {"name": slot.name, "port": slot.port, "line": slot.line,
            "unexpanded_pattern": is_glob(slot.port) or slot.port.startswith("usb:"),
            "usb": slot.usb.to_dict() if slot.usb is not None else None,
            "settings": _settings(slot.settings, slot=True),
            "keys": [_action(k) for k in slot.keys]}


def plan_document(plan: Plan) -> dict[str, Any]:
    """The ``--json`` document for a valid plan."""
    sim = plan.simulator
    return {
        "ok": True,
        "changed": False,
        "failed": False,
        "plan": str(plan.path),
        "sha256": plan.sha256,
        "version": plan.version,
        "station": plan.station,
        "signing_key": str(plan.signing_key) if plan.signing_key else None,
        "throwaway_signing_key": plan.throwaway_signing_key,
        "manifest": plan.manifest,
        "manifest_pattern": plan.manifest_pattern,
        "journal": str(plan.journal_path),
        "defaults": _settings(plan.defaults),
        "keys": {name: _action(spec) for name, spec in plan.keys.items()},
        "slots": [_slot(slot) for slot in plan.slots],
        "simulator": None if sim is None else {
            "count": sim.count, "seed": sim.seed, "model": sim.model, "profile": sim.profile,
            "state": str(sim.state) if sim.state else None,
            "log": str(sim.log) if sim.log else None, "faults": list(sim.faults),
            "function_mode": sim.function_mode, "capacity": sim.capacity,
        },
    }


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "all" if value is None else str(value)


def _print_human(plan: Plan, ready: Readiness) -> None:
    def fmt(settings: Settings) -> str:
        return " ".join(f"{k}={_value(v)}" for k, v in _settings(settings).items())

    print(f"plan:      {plan.path}")
    print(f"sha256:    {plan.sha256}")
    print(f"station:   {plan.station}")
    notes = ["throwaway key allowed"] if plan.throwaway_signing_key else []
    notes.append(ready.signing_key or "NOT USABLE, see below")
    key = str(plan.signing_key) if plan.signing_key else "(none)"
    print(f"signing:   {key}  ({'; '.join(notes)})")
    writable = "NOT WRITABLE, see below" if ready.manifest_problem else "directory writable"
    print(f"manifest:  {plan.manifest_pattern}  ({writable})")
    unusable = "  (NOT USABLE, see below)" if ready.journal_problem else ""
    print(f"journal:   {plan.journal_path}{unusable}")
    print(f"defaults:  {fmt(plan.defaults)}")
    if plan.simulator is not None:
        sim = plan.simulator
        extra = f" faults={','.join(sim.faults)}" if sim.faults else ""
        print(f"simulator: {sim.count} modem(s) model={sim.model} profile={sim.profile} "
              f"seed={sim.seed}{extra}")
    actions = sum(len(slot.keys) for slot in plan.slots)
    print(f"slots:     {len(plan.slots)}, {actions} key action(s)")
    for slot in plan.slots:
        note = (", pattern not expanded" if is_glob(slot.port) or slot.port.startswith("usb:")
                else "")
        print(f"  {slot.name}  {slot.port}  (line {slot.line}{note})")
        if slot.usb is not None:
            usb = slot.usb
            print(f"    usb: {usb.vid}:{usb.pid} serial={usb.serial or '-'} at {usb.location} "
                  f"interface {'-' if usb.interface is None else usb.interface}"
                  + (f" ({usb.kit})" if usb.kit else ""))
        own = {k: v for k, v in _settings(slot.settings).items()
               if v != getattr(plan.defaults, k)}
        if own:
            print(f"    settings: {' '.join(f'{k}={_value(v)}' for k, v in own.items())} "
                  "(the rest as defaults)")
        for spec in slot.keys:
            policy = (f"  if_exists={spec.if_exists}" if spec.type is KeyType.CLIENT_KEY
                      else "")
            print(f"    {spec.name}: sec_tag={spec.sec_tag} type={spec.type} "
                  f"response={spec.response}{policy}")
            print(f"      {spec.keygen_template()}")
            if spec.ca is not None:
                chain = f"; chain {spec.ca.chain.path} as type 0" if spec.ca.chain else ""
                print(f"      certificate: {spec.ca.describe()}{chain}")
    for problem in ready.problems:
        print(f"  fleet run would stop: {problem}")
    if ready.problems:
        print(f"plan is valid, but fleet run would stop here before any device (see above); "
              f"{_NOTHING_SENT}")
    else:
        print(f"plan is valid, and fleet run can start here; {_NOTHING_SENT}")
