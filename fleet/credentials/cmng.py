"""``%CMNG`` answers: list lines (``AT%CMNG=1``) and read answers (``AT%CMNG=2``).

A list line is ``%CMNG: <sec_tag>,<type>[,"<SHA-256 hex>"]``. The SHA column is missing on some
firmware and for some types (Nordic's nrfcredstore crashes on that; we do not). The SHA is of the
exact stored bytes, upper-case hex on the modem; we normalise it to upper case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fleet.errors import CredentialError
from fleet.nrf91 import MAX_MODEM_SEC_TAG, CredentialType

__all__ = ["CmngEntry", "CredentialType", "parse_cmng_list", "parse_cmng_list_line",
           "parse_cmng_read"]


_LIST = re.compile(r'%CMNG:\s*([0-9]{1,10})\s*,\s*([0-9]{1,3})\s*(?:,\s*"([0-9A-Fa-f]*)")?\s*\Z')


@dataclass(frozen=True, slots=True, kw_only=True)
class CmngEntry:
    """One credential the modem lists."""

    sec_tag: int
    type: int
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.sec_tag <= MAX_MODEM_SEC_TAG:
            raise CredentialError(f"%CMNG: sec_tag {self.sec_tag} out of range")
        if self.sha256 is not None and not re.fullmatch(r"[0-9A-F]{64}", self.sha256):
            raise CredentialError(f"%CMNG: SHA column {self.sha256!r} is not 64 hex digits")


def parse_cmng_list_line(line: str) -> CmngEntry:
    """Parse one ``%CMNG: tag,type[,"sha"]`` line; raises :class:`CredentialError`."""
    match = _LIST.match(line.strip())
    if not match:
        raise CredentialError(f"not a %CMNG list line: {line[:80]!r}")
    sha = match.group(3)
    return CmngEntry(
        sec_tag=int(match.group(1)),
        type=int(match.group(2)),
        sha256=sha.upper() if sha else None,
    )


def parse_cmng_list(lines: Iterable[str]) -> list[CmngEntry]:
    """Parse the information lines of an ``AT%CMNG=1`` answer."""
    return [parse_cmng_list_line(line) for line in lines]


def parse_cmng_read(lines: list[str]) -> tuple[CmngEntry, str]:
    """Parse an ``AT%CMNG=2`` answer: ``%CMNG: tag,type,"sha","<content>"`` where the quoted
    content (a PEM) spans several lines. Returns the entry and the content with LF endings."""
    if not lines:
        raise CredentialError("%CMNG read: empty answer")
    text = "\n".join(lines)
    match = re.match(r'%CMNG:\s*([0-9]+)\s*,\s*([0-9]+)\s*,\s*"([0-9A-Fa-f]*)"\s*,\s*"(.*)"\s*\Z',
                     text, re.S)
    if not match:
        raise CredentialError(f"not a %CMNG read answer: {lines[0][:80]!r}")
    sha = match.group(3)
    entry = CmngEntry(sec_tag=int(match.group(1)), type=int(match.group(2)),
                      sha256=sha.upper() if sha else None)
    return entry, match.group(4)
