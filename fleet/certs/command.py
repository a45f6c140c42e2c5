"""Run an external CA program: argv (never a shell), CSR PEM on stdin, certificate PEM on stdout.

How this works: the program runs under anyio (no thread), in the plan's directory, with a
timeout, in a process group of its own (a new session). When it exits, times out or is
cancelled, the whole group is killed: a child it left behind holding its stdout or stderr
could otherwise keep fleet waiting for the end of that output. A non-zero exit, a timeout, a
program that cannot be started, output over :data:`MAX_OUTPUT` bytes or output that is not text
are a :class:`CertificateError` carrying the tail of the program's stderr. What the output must
contain (exactly one PEM certificate) is checked by the caller
(:class:`fleet.certs.authority.CommandCa`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.abc

from fleet.errors import CertificateError

__all__ = ["MAX_OUTPUT", "run_ca_command"]

#: A certificate chain is a few kB; more output than this is refused.
MAX_OUTPUT = 1024 * 1024
_STDERR_TAIL = 600


async def _drain(stream: anyio.abc.ByteReceiveStream | None, into: bytearray) -> None:
    if stream is None:  # pragma: no cover - always a pipe here
        return
    async for chunk in stream:
        if len(into) <= MAX_OUTPUT:
            into += chunk


async def _feed(stream: anyio.abc.ByteSendStream | None, data: bytes) -> None:
    if stream is None:  # pragma: no cover - always a pipe here
        return
    try:
        await stream.send(data)
        await stream.aclose()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass  # the program did not read all of its input: its exit status tells


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of the program's process group (nothing, usually)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _tail(data: bytes | bytearray) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    if len(text) > _STDERR_TAIL:
        text = "..." + text[-_STDERR_TAIL:]
    return text or "(no stderr)"


async def run_ca_command(argv: Sequence[str], csr_pem: str, *, timeout_s: float,
                         cwd: Path | None = None) -> str:
    """Run ``argv`` with ``csr_pem`` on stdin and return its stdout as text."""
    name = argv[0]
    out, err = bytearray(), bytearray()
    code: int | None = None
    with anyio.move_on_after(timeout_s) as scope:
        try:
            process = await anyio.open_process(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)
        except OSError as exc:
            raise CertificateError(f"CA command {name!r} cannot be started: "
                                   f"{exc.strerror or exc}") from exc
        async with process, anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stdout, out)
            tg.start_soon(_drain, process.stderr, err)
            tg.start_soon(_feed, process.stdin, csr_pem.encode("ascii"))
            try:
                code = await process.wait()
            finally:  # exited, timed out or cancelled: none of its children may hold the pipes
                _kill_group(process.pid)
    if scope.cancelled_caught or code is None:
        raise CertificateError(f"CA command {name!r} did not finish within {timeout_s:g} s "
                               f"(killed); stderr: {_tail(err)}")
    if code != 0:
        raise CertificateError(f"CA command {name!r} failed with exit status {code}; "
                               f"stderr: {_tail(err)}")
    if len(out) > MAX_OUTPUT:
        raise CertificateError(f"CA command {name!r} printed more than {MAX_OUTPUT} bytes")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CertificateError(f"CA command {name!r} printed something that is not text "
                               f"({exc.reason} at byte {exc.start})") from exc
