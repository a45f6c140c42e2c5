"""The modem side of an AT host built with each CONFIG_AT_HOST_TERMINATION, as byte tables
(what lib/at_host hands the modem for what the host sends), byte by byte and in one chunk."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.at import NEED_DATA, Command, HostConnection, ModemConnection, Terminator
from fleet.at.events import CommandLine


def _commands(terminator: Terminator, wire: bytes) -> list[str]:
    modem = ModemConnection(terminator=terminator)
    modem.receive_data(wire)
    out = []
    while (event := modem.next_event()) is not NEED_DATA:
        assert isinstance(event, CommandLine)
        out.append(event.text)
    return out


TABLE = [
    # (built with, host sends, the commands the modem gets)
    (Terminator.CR, b"AT\r", ["AT"]),
    (Terminator.CR, b"AT\r\nAT+CGMM\r", ["AT", "AT+CGMM"]),  # the LF stays, at the front
    (Terminator.CR, b"AT\n", []),  # LF is an ordinary byte: nothing ends yet
    (Terminator.CR, b"AT+CG\x00MM\r", ["AT+CGMM"]),  # a NUL that ends nothing is dropped
    (Terminator.CRLF, b"AT\r", []),
    (Terminator.CRLF, b"AT\r\n", ["AT"]),  # the CR stays in the command: the modem skips it
    (Terminator.CRLF, b"AT\n", []),  # LF ends only after a CR
    (Terminator.CRLF, b"AT\rAT\r\n", ["AT\rAT"]),  # a CR inside: the modem answers ERROR
    (Terminator.LF, b"AT\n", ["AT"]),
    (Terminator.LF, b"AT\r", []),
    (Terminator.LF, b"AT\r\n", ["AT"]),
    (Terminator.NUL, b"AT\x00", ["AT"]),
    (Terminator.NUL, b"AT\r\n\x00", ["AT"]),
    (Terminator.CR, b'AT%CMNG=0,1,0,"A\rB"\r', ['AT%CMNG=0,1,0,"A\rB"']),  # quoted CR stays
    (Terminator.CR, b"AX\x7fT\r", ["AT"]),  # DEL removes the byte before it
    (Terminator.CR, b"  \r\r", []),  # no printable byte: dropped, no answer
]


@pytest.mark.parametrize(("terminator", "wire", "commands"), TABLE)
def test_at_host_line_ends(terminator: Terminator, wire: bytes, commands: list[str]) -> None:
    assert _commands(terminator, wire) == commands
    modem = ModemConnection(terminator=terminator)
    for index in range(len(wire)):
        modem.receive_data(wire[index:index + 1])
    one_by_one = []
    while (event := modem.next_event()) is not NEED_DATA:
        assert isinstance(event, CommandLine)
        one_by_one.append(event.text)
    assert one_by_one == commands


@given(terminator=st.sampled_from(list(Terminator)),
       host_end=st.sampled_from(list(Terminator)),
       cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_what_the_host_sends_is_what_the_modem_gets(terminator: Terminator,
                                                     host_end: Terminator,
                                                     cuts: list[int]) -> None:
    host = HostConnection(terminator=host_end.bytes)
    wire = host.send(Command.set("%CMNG", 1, 16842753, 2))
    modem = ModemConnection(terminator=terminator)
    for start, stop in zip([0, *sorted(cuts)], [*sorted(cuts), len(wire)], strict=True):
        modem.receive_data(wire[start:stop])
    event = modem.next_event()
    # CR LF reaches every build but NUL; each line end reaches its own build
    reaches = host_end is terminator or (host_end is Terminator.CRLF
                                         and terminator is not Terminator.NUL)
    if reaches:
        assert event == CommandLine(text="AT%CMNG=1,16842753,2")
    else:
        assert event is NEED_DATA
