"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

After :func:`write_atomic` returns, the file holds either the old or the new content on disk even
if power fails at any instant, and the new name is durable (the directory fsync that labgrid's
``atomic_replace`` forgets). :func:`create_atomic` is the same for a file that must never replace
an existing one (a signing key, a manifest), and :func:`create_new` says why one could not be
made, in the error type of the caller's layer, as :func:`make_private_dir` does for the 0700
directory that holds such files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["create_atomic", "create_new", "fsync_dir", "make_private_dir", "temp_name",
           "write_atomic"]


def fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename or create inside it is durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably; ``mode`` is the new file's mode."""
    path = Path(path)
    directory = _parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def create_atomic(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Create ``path`` holding ``data``, atomically and durably, but NEVER replace a file that is
    already there: raises :class:`FileExistsError` instead (also when another process creates
    ``path`` at the same moment).

    The temp file is created with ``O_CREAT | O_EXCL`` and ``mode`` (so a 0600 secret is never
    readable by others, not even for an instant; the umask can only remove bits), written and
    fsynced, then hard-linked to ``path`` (``link`` fails if the name exists, where ``rename``
    would silently replace it), unlinked, and the directory is fsynced. On a file system without
    hard links it falls back to an exclusive create of ``path`` itself (still never replaces,
    but a crash mid-write can leave a short file there).
    """
    path = Path(path)
    directory = _parent(path)
    tmp = directory / temp_name(path.name)
    try:
        _write_new(tmp, data, mode)
        try:
            os.link(tmp, path)
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in _NO_HARD_LINKS:
                raise
            _write_new(path, data, mode)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(directory)


def temp_name(name: str) -> str:
    """The name of the temp file :func:`create_atomic` writes before it links it to ``name``:
    always as long, so a caller can tell beforehand whether the file system takes it."""
    return f".{name}.{secrets.token_hex(6)}.tmp"


def create_new(path: Path, data: bytes, *, mode: int, error: Callable[[str], Exception]) -> None:
    """:func:`create_atomic` for a file a command makes once (a key, a certificate): a file
    already at ``path``, or a write that failed, is raised as ``error(message)``, the message
    naming ``path``."""
    try:
        create_atomic(path, data, mode=mode)
    except FileExistsError:
        raise error(f"{path} already exists: refusing to overwrite it") from None
    except OSError as exc:
        raise error(f"cannot write {path}: {exc.strerror or exc}") from exc


def make_private_dir(directory: Path, *, error: Callable[[str], Exception]) -> None:
    """Create ``directory`` (and its parents) with mode 0700 when it is missing, durably (its
    parent is fsynced); something else in its place, or a failure, is raised as
    ``error(message)``. A directory another process made meanwhile is used."""
    if directory.is_dir():
        return
    try:
        directory.mkdir(mode=0o700, parents=True)
        fsync_dir(directory.parent)
    except FileExistsError:
        if not directory.is_dir():
            raise error(f"{directory} exists and is not a directory") from None
    except OSError as exc:
        raise error(f"cannot create directory {directory}: {exc.strerror or exc}") from exc


def _parent(path: Path) -> Path:
    """``path``'s directory, created when missing. Something other than a directory in its place
    is :class:`NotADirectoryError`: ``mkdir``'s own :class:`FileExistsError` would read as
    ``path`` itself being there."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                 str(directory)) from None
    return directory


#: errno values of ``link()`` on a file system that has no hard links (vfat, some network FS).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
