"""Read a plan file into plain Python data plus a line number for every key and value.

How this works: PyYAML's safe loader *composes* the document into a node tree (every node keeps
its start mark), and this module walks that tree itself instead of letting PyYAML construct
dicts. The walk

* refuses duplicate mapping keys (PyYAML would silently keep the last one),
* keeps mapping keys as the text written (so ``NO:`` is the key ``"NO"``, not ``False``),
* constructs scalar values with the safe constructor (YAML 1.1 rules: ``NO`` is a boolean,
  ``0123`` is an octal number, ``2024-01-01`` a date; the schema layer tells the user to quote),
* refuses merge keys (``<<``), unknown tags and recursive aliases, and bounds alias expansion,
* refuses mappings and sequences nested more than :data:`MAX_DEPTH` deep, at the line of the
  first one too deep: while composing (PyYAML's composer recurses once per level, so a plan of
  600 ``[`` would otherwise exhaust Python's stack) and while walking (aliases can nest a tree
  deeper than any part of the text),
* records, for each path (``("keys", "tls", "sec_tag")``, ``("slots", 0, "port")``), the line of
  the key, the line of the value, and whether the value was an unquoted scalar.

Problems are collected as ``(line, reason)`` pairs; a syntax error stops the walk (there is no
tree), anything else is reported and the walk goes on, so one run shows every problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "Located", "Source", "read_source"]

Path_ = tuple[str | int, ...]

#: Bound on the number of nodes visited (alias expansion can otherwise blow up exponentially).
MAX_NODES = 50_000
#: How deeply mappings and sequences may nest (the document's top mapping is level 1; a plan
#: needs about 5).
MAX_DEPTH = 64
_TOO_DEEP = f"nested too deeply: more than {MAX_DEPTH} levels of mappings and sequences"

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True, kw_only=True)
class Located:
    """Where one value sits in the file (1-based lines)."""

    key_line: int
    value_line: int
    scalar: bool
    plain: bool  #: an unquoted scalar (so YAML may have turned it into a bool/number/date)
    text: str | None  #: the scalar as written, for hints


@dataclass(slots=True)
class Source:
    """The walked document: ``data`` and the location of every path in it."""

    data: Any = None
    where: dict[Path_, Located] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)
    #: Values that could not be read (kept as None) and mappings with a skipped entry: the
    #: schema does not pile "wrong type" / "missing" errors on top of the problem reported.
    broken: set[Path_] = field(default_factory=set)

    def line(self, path: Path_, *, key: bool = False) -> int:
        """The line of ``path`` (or of its nearest ancestor that is in the file).

        The value's line for a scalar, the key's line otherwise (or when ``key``)."""
        probe = tuple(path)
        while probe:
            found = self.where.get(probe)
            if found is not None:
                return found.key_line if key or not found.scalar else found.value_line
            probe = probe[:-1]
        return 1

    def located(self, path: Path_) -> Located | None:
        """The location record of exactly ``path``, if it is in the file."""
        return self.where.get(tuple(path))


def _mark_line(mark: yaml.Mark | None) -> int:
    return mark.line + 1 if mark is not None else 1


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(_TOO_DEEP)
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader whose composer stops at the first collection deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event: yaml.Event = self.current_event  # the one check_event just peeked at
                mark = event.start_mark
                raise _TooDeep(mark.line + 1 if mark is not None else 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_source(text: str) -> Source:
    """Compose ``text`` and walk it. A syntax error yields a Source with ``data`` None and one
    problem at the error's line."""
    src = Source()
    try:
        loader = _BoundedLoader(text)  # checks that every character is printable
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except _TooDeep as exc:
        src.problems.append((exc.line, str(exc)))
        return src
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        src.problems.append((_mark_line(mark), f"YAML syntax error: {reason}"))
        return src
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        src.problems.append((line, f"YAML syntax error: {exc.reason} ({char!r})"))
        return src
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above carries a mark
        src.problems.append((1, f"YAML syntax error: {exc}"))
        return src
    if root is None:
        src.problems.append((1, "the plan is empty"))
        return src
    walker = _Walker(loader, src)  # its constructor works on scalars only: no recursion
    src.data = walker.value(root, ())
    return src


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, src: Source) -> None:
        self.loader = loader
        self.src = src
        self.stack: set[int] = set()
        self.count = 0
        self.too_deep = False

    def problem(self, node: yaml.Node, reason: str) -> None:
        self.src.problems.append((_mark_line(node.start_mark), reason))

    def value(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            if self.count == MAX_NODES + 1:
                self.problem(node, f"the plan expands to more than {MAX_NODES} YAML nodes "
                                   "(aliases nested too deep?)")
            self.src.broken.add(path)
            return None
        if id(node) in self.stack:
            self.problem(node, "recursive YAML alias")
            self.src.broken.add(path)
            return None
        if len(path) >= MAX_DEPTH and not isinstance(node, yaml.ScalarNode):
            if not self.too_deep:  # once: every branch below is as deep
                self.too_deep = True
                self.problem(node, f"{_TOO_DEEP} (through YAML aliases)")
            self.src.broken.add(path)
            return None
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as exc:
                reason = exc.problem or str(exc)
                self.problem(node, f"cannot read value {node.value!r}: {reason}")
                self.src.broken.add(path)
                return None
            except ValueError as exc:  # e.g. a date that does not exist: 2024-02-30
                self.problem(node, f"cannot read value {node.value!r}: {exc}")
                self.src.broken.add(path)
                return None
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            assert isinstance(node, yaml.SequenceNode)
            if node.tag != _SEQ_TAG:
                self.problem(node, f"unsupported YAML tag {node.tag}")
            items = []
            for index, item in enumerate(node.value):
                self.record((*path, index), item, item)
                items.append(self.value(item, (*path, index)))
            return items
        finally:
            self.stack.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        if node.tag != _MAP_TAG:
            self.problem(node, f"unsupported YAML tag {node.tag}")
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self.problem(key_node, "YAML merge keys (<<) are not supported: write the "
                                       "settings out")
                self.src.broken.add(path)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node, "a mapping key must be a plain string")
                self.src.broken.add(path)
                continue
            key = str(key_node.value)
            line = _mark_line(key_node.start_mark)
            if key in out or key in first_line:
                self.problem(key_node, f"duplicate key {key!r} (first at line {first_line[key]})")
                continue
            first_line[key] = line
            self.record((*path, key), key_node, value_node)
            out[key] = self.value(value_node, (*path, key))
        return out

    def record(self, path: Path_, key_node: yaml.Node, value_node: yaml.Node) -> None:
        scalar = isinstance(value_node, yaml.ScalarNode)
        self.src.where[path] = Located(
            key_line=_mark_line(key_node.start_mark),
            value_line=_mark_line(value_node.start_mark),
            scalar=scalar,
            plain=isinstance(value_node, yaml.ScalarNode) and value_node.style is None,
            text=str(value_node.value) if scalar else None,
        )
