"""Manifest files: write one without ever replacing another, and read one strictly.

How this works: :func:`write_manifest` pretty-prints the document (indent 2, trailing newline)
and creates the file with :func:`fleet.atomic.create_atomic` (temp file, fsync, hard link, fsync
the directory), which refuses an existing name even against a concurrent writer; on a clash it
tries ``<stem>-2<suffix>``, ``<stem>-3<suffix>``... and returns the path it wrote. The file bytes
are not what is signed (that is the RFC 8785 form of ``signed``), so the layout is free.

:func:`load_document` parses strictly: UTF-8, no duplicate object keys (two parsers that keep a
different one of the duplicates would verify one text and act on another), no NaN/Infinity, and
objects and arrays nested at most :data:`MAX_DEPTH` deep (a manifest needs 7; the recursive code
that copies, canonicalizes and checks a document never sees a deeper one). The depth is measured
without recursion (:func:`nesting_problem`); JSON too deep for the parser itself is refused too.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fleet.atomic import create_atomic, temp_name
from fleet.errors import ManifestError
from fleet.manifest.build import plain_json
from fleet.regular import file_kind, read_regular_file

__all__ = ["MAX_DEPTH", "directory_problem", "json_syntax_problem", "load_document",
           "name_problem", "nesting_problem", "read_manifest", "write_manifest"]

_MAX_VARIANTS = 10_000
#: The longest file name when the file system does not say (Linux's NAME_MAX).
_DEFAULT_NAME_MAX = 255
#: How deeply a manifest may nest objects and arrays (the document itself is level 1).
MAX_DEPTH = 64


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # a key came twice: name the first one that did
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ManifestError(f"duplicate object key {key!r}")
            seen.add(key)
    return out


def _constant(name: str) -> Any:
    raise ManifestError(f"{name} is not a JSON number")


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` deep (iterative; only the
    containers are visited, built-in types first, as a manifest holds tens of thousands of
    values)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, Mapping) else item:
            kind = type(child)
            if kind is dict or kind is list or (
                    kind is not str and kind is not int and kind is not bool and child is not None
                    and isinstance(child, Mapping | list | tuple)):
                stack.append((child, depth + 1))
    return False


def nesting_problem(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """Why ``value`` nests objects/arrays more than ``limit`` deep (naming where), or ``None``.

    Iterative, so it works for any depth."""
    if not isinstance(value, Mapping | list | tuple) or not _too_deep(value, limit):
        return None
    path: list[str | int] = []
    item: Any = value
    while isinstance(item, Mapping | list | tuple) and len(path) < 8:  # where, for the message
        pairs = item.items() if isinstance(item, Mapping) else enumerate(item)
        step, item = next(((k, v) for k, v in pairs if isinstance(v, Mapping | list | tuple)
                           and _too_deep(v, limit - len(path) - 1)), (None, None))
        if step is None:
            break
        path.append(step)
    where = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)
    return (f"nested too deeply: more than {limit} levels of objects and arrays (at "
            f"{where.lstrip('.')}...)")


def _parse(data: bytes | str, **hooks: Any) -> Any:
    """``json.loads`` of a manifest file's contents, as UTF-8 text without a byte order mark;
    ``ManifestError`` says why they are no JSON text. The one parse both
    :func:`json_syntax_problem` and :func:`load_document` use, so that what the commands take
    for JSON is exactly what the strict read parses (``json.loads`` of bytes would also take
    UTF-16 or a BOM); the hooks raise their own errors."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text ({exc.reason} at byte {exc.start}; JSON is "
                            "UTF-8)") from exc
    if text.startswith("\ufeff"):
        raise ManifestError("not JSON (it starts with a UTF-8 byte order mark: save the file "
                            "without one)")
    try:
        return json.loads(text, **hooks)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"not JSON ({exc})") from exc
    except ValueError as exc:  # what else it raises: a number too long for int()
        raise ManifestError(f"not JSON (an integer is too long: more than "
                            f"{sys.get_int_max_str_digits()} digits)") from exc


def json_syntax_problem(data: bytes) -> str | None:
    """``"not JSON (...)"`` (or ``"not UTF-8 text (...)"``) when ``data`` is no JSON text at
    all (a usage error for the commands), else ``None`` (JSON nested too deeply is JSON:
    :func:`load_document` refuses it as a manifest)."""
    try:
        _parse(data)
    except RecursionError:
        return None
    except ManifestError as exc:
        return str(exc)
    return None


def load_document(data: bytes | str) -> dict[str, Any]:
    """Parse a manifest strictly (see the module docstring); ``ManifestError`` says why not."""
    try:
        value = _parse(data, object_pairs_hook=_pairs, parse_constant=_constant)
    except RecursionError as exc:  # the parser's own guard, far beyond MAX_DEPTH
        raise ManifestError(f"nested too deeply: more than {MAX_DEPTH} levels of objects and "
                            "arrays") from exc
    if not isinstance(value, dict):
        raise ManifestError(f"expected a JSON object, got {type(value).__name__}")
    problem = nesting_problem(value)
    if problem is not None:
        raise ManifestError(problem)
    return value


def read_manifest(path: Path | str) -> dict[str, Any]:
    """Read and strictly parse the manifest at ``path``; ``ManifestError`` naming the path."""
    try:
        data = read_regular_file(path)
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return load_document(data)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc


def _variant(path: Path, n: int) -> Path:
    return path.with_name(f"{path.stem}-{n}{path.suffix}")


def _variants(path: Path) -> Iterator[Path]:
    yield path
    for n in range(2, _MAX_VARIANTS):
        yield _variant(path, n)


def write_manifest(path: Path | str, document: Mapping[str, Any]) -> Path:
    """Write ``document`` to ``path`` atomically, never over an existing file: when ``path``
    exists, write ``<stem>-<n><suffix>`` (n = 2, 3, ...). Returns the path actually written."""
    if set(document) != {"signed", "signatures"}:
        raise ManifestError("a manifest is {\"signed\": ..., \"signatures\": [...]}")
    plain_json(document, "manifest")
    data = (json.dumps(document, indent=2) + "\n").encode("ascii")
    for candidate in _variants(Path(path)):
        try:
            create_atomic(candidate, data, mode=0o644)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ManifestError(f"cannot write manifest {candidate}: {exc}") from exc
        return candidate
    raise ManifestError(f"cannot write manifest {path}: {_MAX_VARIANTS} names are taken")


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def _name_max(path: Path) -> int:
    """The longest name (bytes) the file system of ``path`` takes."""
    try:
        limit = os.pathconf(path, "PC_NAME_MAX")
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX
    return limit if limit > 0 else _DEFAULT_NAME_MAX


def name_problem(path: Path) -> str | None:
    """Why no manifest can be written at ``path`` under its name (None: it can), known before
    any device is touched (``path`` rendered as a run would: :meth:`Plan.sample_manifest_path`).
    A name longer than the file system takes fails only at the write, after the keys were made;
    what counts is the longest name a write uses, its temp file for ``<stem>-<n><suffix>``
    after a clash, and every directory the write makes. A file at ``path`` that is not a
    regular one (``/dev/stdout``, a FIFO) is refused too: the write would put the manifest
    beside it as ``<stem>-2<suffix>``, where nobody looks for it."""
    existing = _nearest_existing(path.parent)
    limit = _name_max(existing)
    hint = "shorten manifest: in the plan"
    for part in path.parent.relative_to(existing).parts:
        if len(os.fsencode(part)) > limit:
            return (f"the manifest directory name {part} is too long: it is "
                    f"{len(os.fsencode(part))} bytes, over {limit} bytes, the longest name the "
                    f"file system takes in {existing}; {hint}")
    longest = len(os.fsencode(temp_name(_variant(path, _MAX_VARIANTS - 1).name)))
    if longest > limit:
        return (f"the manifest file name {path.name} is too long for {path.parent}: a run writes "
                f"it as a temp file named after it, of up to {longest} bytes (with a "
                f"-{_MAX_VARIANTS - 1} name after a clash), over {limit} bytes, the longest "
                f"name the file system takes there; {hint}")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # nothing there: the write makes it (a directory it cannot is found next)
    if not stat.S_ISREG(mode):
        return (f"the manifest path {path} is {file_kind(mode)}, not a regular file: a manifest "
                "is always written as a new file (beside an existing regular file as "
                "<stem>-2<suffix>); name a file with manifest: in the plan")
    return None


def directory_problem(directory: Path, *, create: bool) -> str | None:
    """Why no manifest can be written in ``directory`` (None: one can), found by creating and
    removing a temp file there. With ``create`` the directory is made first (as the manifest
    write would); without, nothing but that temp file is ever made: the nearest directory that
    exists is tried."""
    target = _nearest_existing(directory)
    if not target.is_dir():
        return f"the manifest directory {directory} cannot be made: {target} is not a directory"
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create the manifest directory {directory}: {exc.strerror or exc}"
        target = directory
    try:
        fd, probe = tempfile.mkstemp(prefix=".fleet-write-test-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if target == directory else f" (in {target}, where it would be made)"
        return (f"cannot write in the manifest directory {directory}{where}: "
                f"{exc.strerror or exc}")
    return None
