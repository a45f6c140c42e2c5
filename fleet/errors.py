"""One exception tree for the whole of fleet.

Callers catch ``FleetError`` (or one of its branches) rather than a foreign exception:
``serial.SerialException``, ``OSError``, ``sqlite3.Error``, ``cbor2.CBORDecodeError`` and friends
are mapped where they occur, each with a message that names what failed (the port, the command,
the journal file): :mod:`fleet.transport` maps the port's, :mod:`fleet.device` the byte
stream's, :mod:`fleet.journal` SQLite's, :mod:`fleet.credentials` the decoders'.

    FleetError
    ├── ProtocolError               the AT byte stream does not make sense
    │   ├── LocalProtocolError      we broke the protocol (bad argument, two commands at once)
    │   │   └── ArgumentError       a command argument that could inject another command
    │   └── RemoteProtocolError     the peer broke it (over-long line, junk where a line belongs)
    │       └── LineTooLong
    ├── CommandError                the modem answered ERROR / +CME ERROR / +CMS ERROR
    │   └── CmeError                ... with a numeric +CME ERROR code
    ├── DeviceTimeout               no final line in time
    ├── TransportError              the port could not be opened or went away
    │   └── PortBusy                someone else holds the port
    ├── CredentialError             a %KEYGEN / %CMNG / %ATTESTTOKEN answer failed a check
    ├── PlanError                   the YAML plan is invalid (file, line, reason)
    ├── JournalError                the journal cannot be used (locked, corrupt)
    ├── ManifestError               a manifest cannot be built, signed or verified
    ├── CertificateError            a CSR cannot be signed or a certificate failed a check
    ├── TokenError                  a key in a PKCS#11 token cannot be named, reached or used
    └── ExportError                 an export would not be correct (every problem named)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = [
    "AnswerTooLong",
    "ArgumentError",
    "CertificateError",
    "CmeCode",
    "CmeError",
    "CommandError",
    "CredentialError",
    "DeviceTimeout",
    "ExportError",
    "FleetError",
    "JournalError",
    "LineTooLong",
    "LocalProtocolError",
    "ManifestError",
    "PlanError",
    "PortBusy",
    "ProtocolError",
    "RemoteProtocolError",
    "ShellRefused",
    "TokenError",
    "TransportError",
]


class FleetError(Exception):
    """Root of every error fleet raises on purpose."""


class ProtocolError(FleetError):
    """The AT byte stream broke a rule of the line protocol."""


class LocalProtocolError(ProtocolError):
    """Our side broke the protocol: a bad argument, or a command while one is pending."""


class ArgumentError(LocalProtocolError, ValueError):
    """A command argument that cannot be sent safely (it could inject another command)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class LineTooLong(RemoteProtocolError):
    """A line exceeded the codec's maximum length; it was discarded."""


class AnswerTooLong(RemoteProtocolError):
    """An answer went over the codec's bound of lines or bytes without a final line."""


class CmeCode(enum.IntEnum):
    """``+CME ERROR`` codes documented for the nRF91 (see reference/nrf91-facts.md).

    Unknown codes are allowed everywhere a code is carried: use :meth:`of`, which returns the
    plain ``int`` for a code that has no member.
    """

    NOT_SUPPORTED = 0
    NOT_FOUND = 513
    NOT_ALLOWED = 514
    MEMORY_FULL = 515
    ACTIVE_STATE = 518
    ALREADY_EXISTS = 519
    KEYGEN_FAILED = 523
    INVALID_CREDENTIAL = 527
    POWER_OFF_WARNING = 528

    @classmethod
    def of(cls, value: int) -> CmeCode | int:
        """The member for ``value``, or ``value`` itself when the code is not documented."""
        try:
            return cls(value)
        except ValueError:
            return value


_CME_TEXT: Mapping[int, str] = {
    0: "command not supported by this modem firmware",
    513: "not found",
    514: "not allowed (reserved sec_tag?)",
    515: "memory full: the credential store has no room",
    518: "not allowed while the modem is active (needs AT+CFUN=4)",
    519: "already exists",
    523: "key generation failed",
    527: "invalid credential",
    528: "not allowed in power-off warning state",
}


def cme_text(code: int) -> str:
    """A short human description of a ``+CME ERROR`` code."""
    return _CME_TEXT.get(int(code), "undocumented error code")


class CommandError(FleetError):
    """The modem answered a command with ERROR (or +CMS ERROR)."""

    def __init__(self, command: str, message: str = "ERROR") -> None:
        super().__init__(f"{command}: {message}")
        self.command = command


class CmeError(CommandError):
    """The modem answered ``+CME ERROR: <code>``."""

    def __init__(self, command: str, code: CmeCode | int) -> None:
        self.code: CmeCode | int = code
        super().__init__(command, f"+CME ERROR: {int(code)} ({cme_text(int(code))})")


class ShellRefused(CommandError):
    """A Zephyr shell refused the command (``kind`` as in :class:`fleet.at.ShellRefusal`)."""

    def __init__(self, command: str, kind: str, reason: str) -> None:
        super().__init__(command, reason)
        self.kind = kind


class DeviceTimeout(FleetError):
    """The modem did not send a final line in time."""


class TransportError(FleetError):
    """A port could not be opened, or the connection to it was lost."""


class PortBusy(TransportError):
    """The port is held by another process (another fleet run, a terminal program...)."""


class CredentialError(FleetError):
    """An answer from the modem failed a check; ``failures`` names each failed check."""

    def __init__(self, message: str, failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures or (message,)


class PlanError(FleetError):
    """The plan is invalid. ``errors`` holds one ``file:line: reason`` string per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class JournalError(FleetError):
    """The journal cannot be used."""


class ManifestError(FleetError):
    """A manifest cannot be built, signed, parsed or verified."""


class CertificateError(FleetError):
    """A CSR cannot be signed (bad self-signature, unexpected subject, the CA failed) or a
    certificate failed a check (wrong key or subject, does not chain to the CA)."""


class TokenError(FleetError):
    """A PKCS#11 URI cannot be used, or its token, PIN or key is missing, wrong or gone. The
    message never holds the PIN."""


class ExportError(FleetError):
    """An export was refused. ``problems`` holds one line per problem (the device(s) concerned
    and the reason)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
