"""Shared test setup: every fleet manifest a test writes must pass fleet's own verification.

After each test, the autouse fixture :func:`written_manifests_verify` looks at every ``*.json``
file under the session's base temporary directory (``tmp_path``, ``tmp_path_factory`` and
``pytester`` directories alike) that is new or changed since the last look. A file whose top level
is exactly ``{"signed": {...}, "signatures": [...]}`` with ``signed.format`` equal to
``fleet-manifest/1`` is a manifest, and its bytes go through ``fleet.manifest.verify(data,
trusted=None)`` (what ``fleet verify`` runs, without a trusted key); any failure fails the test at
its teardown, with the reasons.

A test that writes forged or broken manifests on purpose says so with
``@pytest.mark.forged_manifests``: the files it writes are not checked; with file name patterns,
``@pytest.mark.forged_manifests("tampered*.json")``, only the files whose name matches one are
not (the run's real manifests still are). Files that appear after a
test's own teardown (a module- or session-scoped fixture's teardown) are checked when that test
is over and once more at the end of the session; a failure there fails the session.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.manifest import FORMAT, verify

FORGED_MARKER = "forged_manifests"


@dataclass
class _Written:
    """The ``*.json`` files seen so far under the base temporary directory, by their stat."""

    basetemp: Path | None = None
    seen: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    late: list[str] = field(default_factory=list)  #: failures found outside any test

    def changed(self) -> list[Path]:
        """The ``*.json`` files that are new or changed since the last call."""
        if self.basetemp is None:
            return []
        found = []
        for directory, _, names in os.walk(self.basetemp):
            for name in names:
                if not name.endswith(".json"):
                    continue
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                except OSError:  # gone meanwhile
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                signature = (info.st_mtime_ns, info.st_size, info.st_ino)
                if self.seen.get(path) != signature:
                    self.seen[path] = signature
                    found.append(Path(path))
        return sorted(found)

    def failures(self, *, forged: tuple[str, ...] | None) -> list[str]:
        """``<file>: <reason>`` for every new or changed manifest that does not verify, but for
        the forged ones: ``forged`` is None (none), ``()`` (all) or file name patterns."""
        changed = self.changed()
        if forged == ():
            return []
        lines = []
        for path in changed:
            if forged and any(fnmatch.fnmatch(path.name, pattern) for pattern in forged):
                continue
            for reason in manifest_failures(path) or ():
                where = path.relative_to(self.basetemp) if self.basetemp else path
                lines.append(f"{where}: {reason}")
        return lines


_WRITTEN = pytest.StashKey[_Written]()


def manifest_failures(path: Path) -> list[str] | None:
    """None when ``path`` is not a fleet manifest; else the reasons it fails verification."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b'"signatures"' not in data or FORMAT.encode() not in data:
        return None  # cheap: most JSON files a test writes are plans, states, documents
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not (isinstance(doc, dict) and set(doc) == {"signed", "signatures"}
            and isinstance(doc["signed"], dict) and isinstance(doc["signatures"], list)
            and doc["signed"].get("format") == FORMAT):
        return None
    report = verify(data, trusted=None)
    if report.ok:
        return []
    return [check.line() for check in report.failures] or ["no check ran"]


def _written(config: pytest.Config) -> _Written:
    if _WRITTEN not in config.stash:
        config.stash[_WRITTEN] = _Written()
    return config.stash[_WRITTEN]


def _forged(item: pytest.Item) -> tuple[str, ...] | None:
    """The test's ``forged_manifests`` patterns: None when not marked, ``()`` for every file."""
    marker = item.get_closest_marker(FORGED_MARKER)
    return None if marker is None else tuple(str(arg) for arg in marker.args)


@pytest.fixture(autouse=True)
def written_manifests_verify(request: pytest.FixtureRequest,
                             tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the test when a manifest it wrote (or a fixture it set up wrote) does not verify."""
    written = _written(request.config)
    if written.basetemp is None:
        written.basetemp = tmp_path_factory.getbasetemp()
    yield
    lines = written.failures(forged=_forged(request.node))
    if lines:
        pytest.fail(f"{len(lines)} check(s) failed on fleet manifest(s) written during this test "
                    f"(under {written.basetemp}); a test that writes forged manifests on purpose "
                    f"is marked @pytest.mark.{FORGED_MARKER}:\n  " + "\n  ".join(lines),
                    pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the last teardown of a test (a module-scoped fixture's, say), check what it wrote."""
    yield
    written = _written(item.config)
    for line in written.failures(forged=_forged(item)):
        written.late.append(f"{item.nodeid} (written after its teardown): {line}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    written = _written(session.config)
    for line in written.failures(forged=None):
        written.late.append(f"(written at the end of the session): {line}")
    if written.late and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    late = _written(terminalreporter.config).late
    if late:
        terminalreporter.section("fleet manifests that do not verify", red=True)
        for line in late:
            terminalreporter.write_line(line)
