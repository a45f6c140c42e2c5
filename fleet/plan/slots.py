"""``slots:``: check each entry, expand its ports into slots, name them.

How this works: each entry's ``port`` (a string or a list) is expanded with
``ports.expand_port`` into ``(port, line)`` pairs; each pair becomes one :class:`Slot` with the
entry's keys and settings (``defaults`` overridden by the entry's ``settings``). Names are the
entry's ``name`` (``name-0``, ``name-1``... when it expands to several ports) or ``slot<k>``, k
the 0-based index among all expanded slots. A slot found by a ``usb:location=`` form is named
after its hub position, so it keeps its name whichever board sits there and whichever
positions are empty: ``name`` for one exact location written alone, else ``name-<location>``
(``usb-<location>`` without a name). Names must be unique; so must ports
(``ports.port_identity``: a by-id link and its tty are the same port), and within one slot the
(sec_tag, type) of its keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fleet.plan.context import Context
from fleet.plan.model import KeySpec, Settings, Slot, key_clash
from fleet.plan.ports import PortMatch, expand_port, is_glob, port_identity
from fleet.plan.schema import SlotEntry, check, dotted
from fleet.plan.source import Path_

__all__ = ["build_slots"]


def build_slots(ctx: Context, specs: dict[str, KeySpec], defaults: Settings) -> list[Slot]:
    """Check ``slots``, expand its ports and name the slots (see the module docstring)."""
    section = ctx.section("slots")
    if not isinstance(section, list):
        return []
    defined = ctx.section("keys") if isinstance(ctx.section("keys"), dict) else None
    out: list[Slot] = []
    total = 0  # slots after expansion, for the default names slot<k>
    names: dict[str, int] = {}
    ports: dict[str, tuple[str, str, int]] = {}
    for index, raw in enumerate(section):
        path: Path_ = ("slots", index)
        doc = check(SlotEntry, raw, path, ctx.src, ctx.report)
        expanded = _ports(ctx, raw.get("port"), path) if isinstance(raw, dict) else []
        if doc is None:
            total += len(expanded)
            continue
        settings = _settings(ctx, doc, path, defaults)
        keys = _keys(ctx, doc, path, specs, defined)
        # one exact usb:location= written alone keeps the entry's name
        alone = isinstance(raw, dict) and isinstance(raw.get("port"), str) and not is_glob(
            raw["port"])
        for number, (match, line) in enumerate(expanded):
            port = match.port
            if match.by_location and match.usb is not None:
                location = match.usb.location
                name = (doc.name if doc.name is not None and alone
                        else f"{doc.name or 'usb'}-{location}")
                name_path = path if doc.name is None else (*path, "name")
            elif doc.name is None:
                name, name_path = f"slot{total}", path
            else:
                name = doc.name if len(expanded) == 1 else f"{doc.name}-{number}"
                name_path = (*path, "name")
            total += 1
            if name in names:
                ctx.at(name_path, f"slot name {name!r} is already used (line {names[name]})")
            names.setdefault(name, line)
            ident = port_identity(port)
            if ident in ports:
                other, other_port, other_line = ports[ident]
                same = f" (both are {ident})" if other_port != port else ""
                ctx.report(line, f"{dotted(path)}.port: port {port!r} is already used by "
                                 f"slot {other!r} (line {other_line}){same}")
            ports.setdefault(ident, (name, port, line))
            for key_name in doc.keys:
                ctx.users.setdefault(key_name, []).append(name)
            if keys is None or settings is None:
                continue
            out.append(Slot(name=name, port=port, keys=keys, settings=settings, line=line,
                            usb=match.usb))
    return out


def _ports(ctx: Context, value: Any, path: Path_) -> list[tuple[PortMatch, int]]:
    """Expand ``slots[i].port`` into ``(port, line)`` pairs, reporting problems."""
    port_path = (*path, "port")
    if value is None:  # missing (SlotDoc reports it), unreadable (reported), or null
        if ctx.src.located(port_path) is not None and port_path not in ctx.src.broken:
            ctx.at(port_path, "expected a port string or a non-empty list of port strings",
                   key=True)
        return []
    items: list[tuple[Any, Path_]]
    if isinstance(value, str):
        items = [(value, port_path)]
    elif isinstance(value, list) and value:
        items = [(v, (*port_path, j)) for j, v in enumerate(value)]
    else:
        ctx.at(port_path, "expected a port string or a non-empty list of port strings",
               key=True)
        return []
    out: list[tuple[PortMatch, int]] = []
    for text, item_path in items:
        if not isinstance(text, str):
            ctx.at(item_path, "expected a port string (device path, glob, usb:..., "
                              "socket://host:port or sim://N)")
            continue
        try:
            expanded = expand_port(text, base=ctx.base, expand_globs=ctx.expand_globs,
                                   usb_host=ctx.usb_host)
        except ValueError as exc:
            ctx.at(item_path, str(exc))
            continue
        line = ctx.src.line(item_path)
        out.extend((match, line) for match in expanded)
    return out


def _settings(ctx: Context, doc: SlotEntry, path: Path_, defaults: Settings) -> Settings | None:
    if doc.settings is None:
        return defaults
    spath = (*path, "settings")
    own = check(Settings, doc.settings, spath, ctx.src, ctx.report)
    if "concurrency" in doc.settings:
        ctx.at((*spath, "concurrency"), "concurrency is plan-wide: set it under defaults",
               key=True)
        return None
    if own is None:
        return None
    return dataclasses.replace(defaults, **{f: getattr(own, f) for f in doc.settings})


def _keys(ctx: Context, doc: SlotEntry, path: Path_, specs: dict[str, KeySpec],
          defined: dict[str, Any] | None) -> tuple[KeySpec, ...] | None:
    keys: list[KeySpec] = []
    complete = True
    for j, name in enumerate(doc.keys):
        kpath = (*path, "keys", j)
        if name in doc.keys[:j]:
            ctx.at(kpath, f"key {name!r} is listed twice")
            complete = False
        elif defined is not None and name not in defined:
            known = ", ".join(defined) or "none"
            ctx.at(kpath, f"unknown key {name!r} (defined under keys: {known})")
            complete = False
        elif name not in specs:
            complete = False  # the spec itself is invalid and already reported
        else:
            keys.append(specs[name])
            clash = key_clash(keys)
            if clash is not None:
                ctx.at(kpath, clash[1])
                keys.pop()
                complete = False
    return tuple(keys) if complete else None
