"""One modem session: the serial line to it (:class:`fleet.session.LineSession`: commands,
timeouts, URCs, the interface), what it is (IMEI, firmware, model, function mode), and reopening
after a disconnect or a timeout with the device identified again.

How this works
--------------
Before anything else is asked of a port, :meth:`DeviceSession.probe` finds out whether anything
answers, and what: the :class:`~fleet.session.Line` (interface and terminator) that the plan
names, or that first contact finds (:mod:`fleet.probe`). Nothing but a final line counts; when
none comes, :class:`NoAnswer` carries a diagnosis of the bytes that came instead
(:mod:`fleet.diagnose`).

A timeout or a lost connection leaves the line in an unknown state (a late answer could be taken
for the next command's), so the codec's connection is left in its ERROR state, which refuses
every command until the caller has ``recover()``-ed: close,
reopen (tries and backoff from the :class:`fleet.retry.RetryPolicy`), probe, ``AT+CMEE=1``, and
read the IMEI again. A different IMEI means the board in the slot was swapped:
:class:`DeviceSwapped`.

Time: the codec below never reads a clock. The session's command timeouts are anyio's
(``anyio.fail_after``, on the event loop's clock); the waits between reopen attempts are the
retry policy's, whose ``sleep`` and ``clock`` are injected, so a test of a port that never comes
back does not wait for real.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from fleet.at import Command
from fleet.errors import FleetError, PortBusy, RemoteProtocolError, TransportError
from fleet.nrf91 import FUNCTION_MODES, identity_text_problem, luhn_valid
from fleet.probe import NoAnswer, first_contact
from fleet.retry import REOPEN_RETRYABLE, RetryPolicy
from fleet.session import Line, LineSession, Opener, Response

__all__ = ["DeviceSession", "DeviceSwapped", "Identity", "Line", "NoAnswer", "Response"]

_IMEI = re.compile(r'\+CGSN:\s*"?([0-9]{15})"?\Z')


class DeviceSwapped(FleetError):
    """The board in the slot changed while fleet was working on it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Which device answers on the port, and the firmware it runs."""

    imei: str
    firmware: str


def _identity_text(command: str, what: str, text: str) -> str:
    problem = identity_text_problem(text)
    if problem is not None:
        raise RemoteProtocolError(f"{command} answered a {what} string with {problem} "
                                  f"({text!r}); it is not recorded: a garbled line, or a modem "
                                  "that is not an nRF91")
    return text


class DeviceSession(LineSession):
    """One modem: its line, its identity, and the way back after the line failed."""

    def __init__(
        self,
        opener: Opener,
        *,
        port: str,
        policy: RetryPolicy | None = None,
        probe_timeout: float = 3.0,
        baudrate: int = 115200,
        rtscts: bool = True,
        interface: str = "auto",
        terminator: str = "auto",
        readonly: bool = False,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        super().__init__(opener, port=port, probe_timeout=probe_timeout, baudrate=baudrate,
                         rtscts=rtscts, interface=interface, terminator=terminator, log=log)
        self.readonly = readonly  #: --check: never send AT+CMEE=1 (or any other set command)
        self.policy = policy or RetryPolicy()
        self._cme_codes = False
        self.identity: Identity | None = None

    async def open(self) -> None:
        """Open the port (one attempt); ``AT+CMEE=1`` is to be sent again on it."""
        await super().open()
        self._cme_codes = False

    async def enable_cme_codes(self, *, timeout: float) -> None:
        """``AT+CMEE=1`` (numeric ``+CME ERROR`` codes), once per opened port."""
        if not self._cme_codes and not self.readonly:
            await self.command(Command.set("+CMEE", 1), timeout=timeout)
            self._cme_codes = True

    async def identify(self, *, timeout: float) -> Identity:
        """``AT+CGSN=1`` (twice) and ``AT+CGMR``: the IMEI, and the firmware (read every time,
        since it can be updated between runs). The IMEI is what :meth:`recover` checks the
        board against."""
        imei = await self.read_imei(timeout=timeout)
        lines = (await self.command(Command.action("+CGMR"), timeout=timeout)).lines
        self.identity = Identity(
            imei=imei,
            firmware=_identity_text("AT+CGMR", "firmware", lines[-1].strip() if lines else ""),
        )
        return self.identity

    async def read_model(self, *, timeout: float) -> str:
        """The model from ``AT+CGMM``."""
        lines = (await self.command(Command.action("+CGMM"), timeout=timeout)).lines
        return _identity_text("AT+CGMM", "model", lines[-1].strip() if lines else "")

    async def read_imei(self, *, timeout: float) -> str:
        """The IMEI from ``AT+CGSN=1``, read twice: both reads must agree and pass the Luhn
        check, so a line garbled on the wire is never taken for another device's identity."""
        first = await self._read_imei_once(timeout)
        second = await self._read_imei_once(timeout)
        if first != second:
            raise RemoteProtocolError(f"AT+CGSN=1 answered {first}, then {second} (garbled line?)")
        return first

    async def _read_imei_once(self, timeout: float) -> str:
        answer = await self.command(Command.set("+CGSN", 1), timeout=timeout)
        found = [m.group(1) for m in (_IMEI.match(line.strip()) for line in answer.lines) if m]
        if not found:
            raise RemoteProtocolError(f"AT+CGSN=1: no IMEI in the answer {answer.lines}")
        if not luhn_valid(found[0]):
            raise RemoteProtocolError(f"AT+CGSN=1: IMEI {found[0]} fails its Luhn check "
                                      "(garbled line?)")
        return found[0]

    async def read_function_mode(self, *, timeout: float) -> int:
        """The function mode from ``AT+CFUN?`` (a documented mode, or RemoteProtocolError)."""
        answer = await self.command(Command.read("+CFUN"), timeout=timeout)
        text = answer.first("+CFUN:").split(",")[0].strip()
        if not text.isdigit() or int(text) not in FUNCTION_MODES:
            raise RemoteProtocolError(f"AT+CFUN?: {text!r} is not a function mode")
        return int(text)

    async def probe(self, *, on_retry: Callable[[str], None] | None = None) -> None:
        """Does anything answer on this port, and what? Settles :attr:`line`
        (:func:`fleet.probe.first_contact`; once found, a reopen probes with that line).
        Raises :class:`NoAnswer` with a diagnosis of what came instead; ``on_retry(reason)``
        is called before a second try."""
        with self.hearing():
            self.use_line(await first_contact(self, on_retry=on_retry))

    async def recover(self, *, timeout: float) -> None:
        """Close, reopen (tries and backoff from the policy), probe, re-enable CME codes and
        check that the same device is still there. Raises TransportError when the port does
        not come back and :class:`DeviceSwapped` when another board answers."""
        await self.close()
        attempts = 0

        async def reopen(number: int) -> str:
            nonlocal attempts
            attempts = number
            try:
                await self.open()
                await self.probe()
                await self.enable_cme_codes(timeout=timeout)
                return await self.read_imei(timeout=timeout)
            except BaseException as exc:
                self.log.info("reopen failed", attempt=number, error=str(exc))
                await self.close()
                raise

        try:
            imei = await self.policy.reopening(reopen)
        except PortBusy:
            raise
        except REOPEN_RETRYABLE as exc:
            raise TransportError(
                f"{self.port}: device not usable after reopening the port {attempts} "
                f"time(s) (last error: {exc})") from exc
        if self.identity is not None and imei != self.identity.imei:
            raise DeviceSwapped(
                f"device swapped: the slot held IMEI {self.identity.imei}, now {imei}"
            )
        self.log.info("port reopened", attempt=attempts)
