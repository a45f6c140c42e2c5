"""`fleet ports --probe`: what answers on each candidate port, with read-only commands only.

How this works
--------------
Each port is opened and driven through a :class:`fleet.device.DeviceSession` in read-only mode
(what `fleet run --check` does): the first-contact probe (``AT``), then, when an AT host
answered, the identification (``AT+CGSN=1`` twice, ``AT+CGMR``) and ``AT+CGMM``. Nothing that
changes a modem is ever sent (no ``AT+CMEE=1`` either). What the line is (interface,
terminator) is what the session's first contact found (:attr:`~fleet.session.LineSession.line`,
see :mod:`fleet.probe`). All ports are probed at once, in one task
group under a limit; a port that cannot be opened, or where nothing answers, is a result with
the reason, never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import anyio.abc

from fleet.device import DeviceSession, NoAnswer
from fleet.errors import FleetError
from fleet.session import Line
from fleet.transport import open_port

__all__ = ["ProbeResult", "probe_ports"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """What one port answered. ``answered``: an AT host gave a final line."""

    answered: bool
    interface: str | None = None  #: ``at``, ``shell``, or None when nothing was recognised
    terminator: str | None = None
    imei: str | None = None
    model: str | None = None
    firmware: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"answered": self.answered, "interface": self.interface,
                "terminator": self.terminator, "imei": self.imei, "model": self.model,
                "firmware": self.firmware, "error": self.error}


async def _probe_one(port: str, *, baudrate: int, rtscts: bool, probe_timeout: float,
                     timeout: float) -> ProbeResult:
    async def opener() -> anyio.abc.ByteStream:
        return await open_port(port, baudrate=baudrate, rtscts=rtscts)

    session = DeviceSession(opener, port=port, readonly=True, probe_timeout=probe_timeout,
                            baudrate=baudrate, rtscts=rtscts)
    try:
        await session.open()
        await session.probe()
        identity = await session.identify(timeout=timeout)
        model = await session.read_model(timeout=timeout)
    except NoAnswer as exc:
        return _result(session.line, answered=False, error=str(exc))
    except (FleetError, OSError) as exc:
        return _result(session.line, answered=session.line is not None, error=str(exc))
    finally:
        await session.close()
    return _result(session.line, answered=True, imei=identity.imei, model=model,
                   firmware=identity.firmware)


def _result(line: Line | None, *, answered: bool, **found: str) -> ProbeResult:
    return ProbeResult(answered=answered, interface=line.interface.value if line else None,
                       terminator=line.terminator.value if line else None, **found)


async def probe_ports(ports: Sequence[str], *, baudrate: int = 115200, rtscts: bool = True,
                      probe_timeout: float = 3.0, timeout: float = 5.0,
                      concurrency: int = 64) -> dict[str, ProbeResult]:
    """``{port: what answered}`` for every port of ``ports``, probed concurrently."""
    results: dict[str, ProbeResult] = {}
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async def one(port: str) -> None:
        async with limiter:
            results[port] = await _probe_one(port, baudrate=baudrate, rtscts=rtscts,
                                             probe_timeout=probe_timeout, timeout=timeout)

    async with anyio.create_task_group() as group:
        for port in ports:
            group.start_soon(one, port)
    return results
