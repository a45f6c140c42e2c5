"""``load_plan``: a YAML plan file in, a validated :class:`~fleet.plan.model.Plan` out.

How this works, in order:

1. read the exact bytes (their SHA-256 is the plan digest), decode UTF-8;
2. ``source.read_source`` composes the YAML and records a line for every key and value
   (duplicate keys, merge keys and bad tags are reported here);
3. ``schema.check`` constructs each section on its own (the records of ``model`` check their
   own fields and the rules between them);
4. this module applies the rules that span sections (the simulator, ``--only``),
   ``slots.build_slots`` expands ports and names the slots (unknown key names, duplicate ports,
   names and (sec_tag, type) pairs), ``ca.build_ca`` loads and checks each key's CA (files,
   keys, the program), and every attribute template is rendered with sample values to prove
   that no device can ever be sent a broken or injected ``%KEYGEN``;
5. every problem found is collected as ``file:line: reason``; if there is any, one
   :class:`~fleet.errors.PlanError` carries them all, sorted by line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleet.credentials.attributes import KEYGEN_ATTRIBUTES
from fleet.errors import PlanError, TokenError
from fleet.faults import fault_modems
from fleet.hsm.uri import Pkcs11Uri, is_pkcs11_uri, parse_pkcs11_uri
from fleet.plan.ca import build_ca
from fleet.plan.context import Context, Report
from fleet.plan.model import (
    KeySpec,
    Plan,
    Settings,
    SimulatorSettings,
    Slot,
    attribute_value_problem,
)
from fleet.plan.ports import port_identity
from fleet.plan.schema import PlanFile, check
from fleet.plan.slots import build_slots
from fleet.plan.source import read_source
from fleet.plan.templates import (
    ATTRIBUTE_PLACEHOLDERS,
    MANIFEST_PLACEHOLDERS,
    SAMPLE_DEVICE_UUID,
    SAMPLE_IMEI,
    Template,
)
from fleet.regular import read_regular_file

__all__ = ["MAX_PLAN_BYTES", "load_plan"]

#: A plan larger than this is refused before parsing.
MAX_PLAN_BYTES = 4 * 1024 * 1024


def load_plan(path: Path | str, *, only: Sequence[str] = (), expand_globs: bool = True) -> Plan:
    """Load and validate the plan at ``path``; raise PlanError listing every problem.

    ``only`` keeps the slots whose name or port is listed (each must match a slot).
    ``expand_globs=False`` leaves each device-path glob as one slot whose port is the pattern:
    for checking a plan on a machine that does not have the devices (such a plan cannot run).
    """
    label = str(path)
    report = Report(label)
    try:
        raw = read_regular_file(path, max_bytes=MAX_PLAN_BYTES)
    except OSError as exc:
        raise PlanError([f"{label}: cannot read the plan: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError([f"{label}: the plan is larger than {MAX_PLAN_BYTES} bytes"])
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PlanError([f"{label}:{line}: the plan is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})"]) from None
    src = read_source(text)
    for line, reason in src.problems:
        report(line, reason)
    if src.data is None:
        report.raise_if_any()
    if not isinstance(src.data, dict):
        report(1, "the plan must be a mapping (version, station, keys, slots, ...), not "
                  f"{type(src.data).__name__}")
        report.raise_if_any()
    plan_path = Path(os.path.abspath(path))
    ctx = Context(src, report, plan_path.parent, expand_globs)
    plan = _build(ctx, plan_path, hashlib.sha256(raw).hexdigest(), only)
    report.raise_if_any()
    assert plan is not None
    return plan


def _build(ctx: Context, plan_path: Path, sha256: str, only: Sequence[str]) -> Plan | None:
    top = check(PlanFile, ctx.data, (), ctx.src, ctx.report)
    station = top.station if top is not None else "station"  # a stand-in for the samples
    defaults = Settings()
    if isinstance(ctx.section("defaults"), dict):
        defaults = check(Settings, ctx.section("defaults"), ("defaults",), ctx.src,
                         ctx.report) or defaults
    specs = _key_specs(ctx)
    slots = build_slots(ctx, specs, defaults)
    _render_samples(ctx, specs, station)
    simulator = _simulator(ctx, slots)
    signing_key = _signing_key(ctx, top.signing_key, top.throwaway_signing_key) \
        if top is not None and top.signing_key else None
    if top is not None:
        _check_manifest(ctx, top.manifest, station)
    kept = _only(ctx, slots, only) if not ctx.report.items else ()  # names need a valid plan
    if top is None or ctx.report.items:
        return None
    kept_names = {slot.name for slot in kept}
    return Plan(
        path=plan_path,
        sha256=sha256,
        version=top.version,
        station=top.station,
        signing_key=signing_key,
        throwaway_signing_key=top.throwaway_signing_key,
        manifest=top.manifest,
        journal=ctx.path(top.journal) if top.journal else None,
        defaults=defaults,
        keys=specs,
        slots=kept,
        unselected=tuple(s for s in slots if s.name not in kept_names),
        simulator=simulator,
    )


def _signing_key(ctx: Context, text: str, throwaway: bool) -> Path | Pkcs11Uri | None:
    """``signing_key:``: a PEM file beside the plan, or a key in a PKCS#11 token (opened by
    `fleet run`, before anything is sent; the plan itself holds no PIN)."""
    if not is_pkcs11_uri(text):
        return ctx.path(text)
    try:
        uri = parse_pkcs11_uri(text)
    except TokenError as exc:
        ctx.at(("signing_key",), str(exc))
        return None
    if throwaway:
        ctx.at(("throwaway_signing_key",), "throwaway_signing_key makes a key file; it does "
               "not apply to a key in a PKCS#11 token (create that key with `fleet station-key "
               "init --pkcs11 URI`)")
        return None
    return uri


def _check_manifest(ctx: Context, text: str, station: str) -> None:
    """A manifest template that names a directory is refused now, not after the devices."""
    template = Template.parse(text, MANIFEST_PLACEHOLDERS)
    hint = "name a file in it, like <directory>/{station}-{date}-{time}.json"
    if text.endswith(("/", os.sep)):
        ctx.at(("manifest",), f"{text!r} names a directory (it ends with /): {hint}")
    elif template.placeholders <= {"station"}:
        target = ctx.path(template.render({"station": station}))
        if target.is_dir():
            ctx.at(("manifest",), f"{target} is an existing directory: {hint}")


def _key_specs(ctx: Context) -> dict[str, KeySpec]:
    specs: dict[str, KeySpec] = {}
    section = ctx.section("keys")
    for name, raw in section.items() if isinstance(section, dict) else ():
        path = ("keys", name)
        if not isinstance(raw, dict) or raw.get("ca") is None:
            spec = check(KeySpec, raw, path, ctx.src, ctx.report,
                         supplied={"name": name, "line": ctx.src.line(path, key=True)})
        else:
            ca = build_ca(ctx, (*path, "ca"), raw["ca"])
            spec = check(KeySpec, {**raw, "ca": ca}, path, ctx.src, ctx.report,
                         supplied={"name": name, "line": ctx.src.line(path, key=True)})
            spec = spec if ca is not None else None
        if spec is not None:
            specs[name] = spec
    return specs


def _render_samples(ctx: Context, specs: dict[str, KeySpec], station: str) -> None:
    """Render every attribute of every key spec (valid or not, so that all problems show) with
    sample values, once per slot that uses it, and check what the modem would get."""
    section = ctx.section("keys")
    for name, raw in section.items() if isinstance(section, dict) else ():
        attributes = raw.get("attributes") if isinstance(raw, dict) else None
        if not isinstance(attributes, dict):
            continue
        for slot_name in ctx.users.get(name, ["slot0"]):
            values = {"imei": SAMPLE_IMEI, "slot": slot_name, "station": station,
                      "device_uuid": SAMPLE_DEVICE_UUID}
            if _render_sample(ctx, name, attributes, values) and name in specs:
                try:
                    specs[name].keygen_command(values)
                except ValueError as exc:
                    ctx.at(("keys", name), f"%KEYGEN cannot be sent: {exc}", key=True)


def _render_sample(ctx: Context, name: str, attributes: dict[str, Any],
                   values: dict[str, str]) -> bool:
    ok = True
    for attr, text in attributes.items():
        if attr not in KEYGEN_ATTRIBUTES or not isinstance(text, str):
            ok = False  # reported by the schema
            continue
        try:
            template = Template.parse(text, ATTRIBUTE_PLACEHOLDERS)
        except ValueError:
            ok = False  # reported by the schema
            continue
        problem = attribute_value_problem(attr, template.render(values))
        if problem:
            where = ""
            if "slot" in template.placeholders:
                where = f" (template {text!r} rendered for slot {values['slot']!r})"
            elif template.placeholders:
                where = f" (template {text!r} rendered with sample values)"
            ctx.at(("keys", name, "attributes", attr), problem + where)
            ok = False
    return ok


def _simulator(ctx: Context, slots: list[Slot]) -> SimulatorSettings | None:
    indices = [s.sim_index for s in slots if s.sim_index is not None]
    raw = ctx.section("simulator")
    count = max(indices) + 1 if indices else 0
    doc = None
    if isinstance(raw, dict):
        doc = check(SimulatorSettings, raw, ("simulator",), ctx.src, ctx.report,
                    supplied={"count": count})
        if not indices and not any(isinstance(p, str) and p.startswith("sim://")
                                   for p in _raw_ports(ctx)):
            ctx.at(("simulator",), "no slot uses a sim:// port, so this section would do "
                                   "nothing: remove it", key=True)
            return None
    if not indices:
        return None
    faults = raw.get("faults") if isinstance(raw, dict) else None
    for j, spec in enumerate(faults if isinstance(faults, list) else []):
        bad = [i for i in fault_modems(spec) if i >= count] if isinstance(spec, str) else []
        if bad:
            ctx.at(("simulator", "faults", j), f"fault {spec!r} names modem {bad[0]}, but the "
                   f"plan's sim:// ports only go up to sim://{count - 1}")
    if raw is None:
        return SimulatorSettings(count=count)
    if doc is None:
        return None
    return dataclasses.replace(doc, state=ctx.path(doc.state) if doc.state else None,
                               log=ctx.path(doc.log) if doc.log else None)


def _raw_ports(ctx: Context) -> list[Any]:
    section = ctx.section("slots")
    out: list[Any] = []
    for raw in section if isinstance(section, list) else []:
        port = raw.get("port") if isinstance(raw, dict) else None
        out.extend(port if isinstance(port, list) else [port])
    return out


def _only(ctx: Context, slots: list[Slot], only: Sequence[str]) -> tuple[Slot, ...]:
    if not only:
        return tuple(slots)
    wanted: set[str] = set()
    for item in only:
        identity, not_a_port = _only_identity(item)
        found = [s.name for s in slots
                 if item in (s.name, s.port) or identity == port_identity(s.port)]
        if not found:
            names = ", ".join(s.name for s in slots) or "none"
            why = f"; {not_a_port}" if not_a_port else ""
            ctx.at(("slots",), f"--only {item!r} is neither the name nor the port of a slot "
                               f"(slots: {names}){why}", key=True)
        wanted.update(found)
    return tuple(s for s in slots if s.name in wanted)


def _only_identity(item: str) -> tuple[str | None, str | None]:
    """``(port identity, None)`` of an ``--only`` item, or ``(None, reason)`` when it is not a
    well-formed port: it can still be a slot's name, and when it is neither, the user is told
    both that and why it is no port."""
    try:
        return port_identity(item), None
    except ValueError as exc:
        return None, str(exc)
