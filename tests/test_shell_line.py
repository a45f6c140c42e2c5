"""A Zephyr shell with the at command, both ends sans-IO: the simulator's shell
(fleet.sim.shell) and fleet's framing (fleet.at.ShellFraming in the host codec), as byte
tables and as a pair that talks through random chunkings of the stream."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.at import (
    NEED_DATA,
    START_RAW,
    Command,
    HostConnection,
    InformationLine,
    Ok,
    ShellFraming,
    ShellRefusal,
)
from fleet.at.shell import shell_quote
from fleet.nrf91 import MODELS
from fleet.sim.config import SimConfig
from fleet.sim.lines import Output, ToModem
from fleet.sim.model import Modem
from fleet.sim.shell import ShellLine, split_args

PROMPT = b"\x1b[1;32muart:~$ \x1b[m"


def shell(**options: object) -> ShellLine:
    return ShellLine(SimConfig(count=1, interface="shell", **options))  # type: ignore[arg-type]


def typed(line: ShellLine, data: bytes) -> tuple[bytes, list[str]]:
    """What the shell prints for ``data`` by itself, and the commands it hands the modem."""
    out, commands = b"", []
    for item in line.receive(data):
        if isinstance(item, ToModem):
            commands.append(item.text)
        else:
            assert isinstance(item, Output)
            out += item.data
    return out, commands


ARGS = [
    ("at AT+CGSN", ["at", "AT+CGSN"], ""),
    ("at   AT  x", ["at", "AT", "x"], ""),
    ("at 'AT+X=\"a b\"'", ["at", 'AT+X="a b"'], ""),
    ('at "it\'s"', ["at", "it's"], ""),
    (r"at a\ b", ["at", "a b"], ""),  # outside quotes a backslash takes the next character
    (r"at 'a\'b'", ["at", "a'b"], ""),
    (r"at 'a\x41\0101\101\n'", ["at", "aAA\\101\\n"], ""),  # \xHH, \0ooo decoded
    (r"at '\\'", ["at", "\\'"], "'"),  # the second backslash quotes the quote
    ("at 'open", ["at", "open"], "'"),
]


@pytest.mark.parametrize(("line", "args", "open_quote"), ARGS)
def test_arguments_split_as_make_argv_does(line: str, args: list[str], open_quote: str) -> None:
    assert split_args(line) == (args, open_quote)


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80))
def test_a_quoted_command_reaches_the_at_command_byte_for_byte(text: str) -> None:
    args, open_quote = split_args("at " + shell_quote(text))
    assert open_quote == ""
    assert args[1].encode("latin-1").decode("utf-8") == text
    assert shell_quote(text).isascii() and "\n" not in shell_quote(text)


def test_an_at_command_through_the_shell() -> None:
    line = shell()
    printed, commands = typed(line, b"at 'AT+CGSN'\r")
    assert printed == b"at 'AT+CGSN'\r\n"  # the echo, then the line end
    assert commands == ["AT+CGSN"]
    assert line.answer(["352656100367872"], Ok()) == (
        b"352656100367872\r\r\nOK\r\r\n\r\n" + PROMPT)


def test_unknown_commands_and_the_shell_commands() -> None:
    line = shell()
    printed, commands = typed(line, b"AT\r")
    assert commands == []
    assert printed == b"AT\r\n\x1b[1;31mAT: command not found\x1b[m\r\n" + PROMPT
    typed(line, b"shell echo off\r")
    typed(line, b"shell colors off\r")
    assert typed(line, b"at 'AT'\r") == (b"", ["AT"])
    assert line.answer([], Ok()) == b"OK\r\r\n\r\nuart:~$ "


def test_wildcards_take_a_read_command_and_at_prints_its_usage() -> None:
    printed, commands = typed(shell(), b"at 'AT+CFUN?'\r")
    assert commands == [] and b"Usage: at <subcommand>" in printed
    assert typed(shell(shell_wildcards=False), b"at 'AT+CFUN?'\r")[1] == ["AT+CFUN?"]


def test_a_full_buffer_drops_the_rest_and_the_open_quote_stops_the_command() -> None:
    line = shell(shell_buffer=32)
    printed, commands = typed(line, b"at 'AT%CMNG=0,1,0,\"" + b"A" * 40 + b"\"'\r")
    assert commands == []
    assert len(printed.split(b"\r\n")[0]) == 32 - 1  # what the buffer holds
    assert b"not terminated: '" in printed


def test_the_echo_breaks_at_the_terminal_width() -> None:
    printed, _ = typed(shell(shell_wildcards=False), b"at '" + b"B" * 100 + b"'\r")
    first = printed.split(b"\r\n", 1)[0]
    assert len(first) == 80 - len("uart:~$ ")


def test_unescape_lf_turns_the_two_characters_into_cr_lf() -> None:
    command = b"at 'AT%CMNG=0,1,0,\"A\\nB\"'\r"
    assert typed(shell(unescape_lf=True), command)[1] == ['AT%CMNG=0,1,0,"A\r\nB"']
    assert typed(shell(), command)[1] == ['AT%CMNG=0,1,0,"A\\nB"']


def test_raw_at_mode_starts_passes_lines_and_leaves() -> None:
    assert typed(shell(), b"at at_cmd_mode start\r")[1] == ["at_cmd_mode"]  # not built
    line = shell(at_cmd_mode=True)
    printed, _ = typed(line, START_RAW.text.encode() + b"\r")
    assert b"AT command mode started" in printed and line.raw
    assert typed(line, b'AT+CFUN?\rAT%CMNG=0,1,0,"a\rb"\r') == (
        b"", ["AT+CFUN?", 'AT%CMNG=0,1,0,"a\rb"'])
    assert line.answer(["+CFUN: 4"], Ok()) == b"+CFUN: 4\r\r\nOK\r\r\n"
    printed, _ = typed(line, b"\x18\x11")
    assert b"AT command mode exited" in printed and not line.raw


def _host(conn: HostConnection) -> list[object]:
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def _exchange(line: ShellLine, modem: Modem, command: Command,
              cuts: Sequence[int]) -> list[object]:
    conn = HostConnection()
    conn.shell = ShellFraming()
    printed = b""
    for item in line.receive(conn.send(command)):
        if isinstance(item, ToModem):
            reply = modem.handle(item.text)
            printed += line.answer(reply.lines, reply.final)
        else:
            assert isinstance(item, Output)
            printed += item.data
    points = sorted(c % (len(printed) + 1) for c in cuts)
    for start, stop in zip([0, *points], [*points, len(printed)], strict=True):
        conn.receive_data(printed[start:stop])
    return _host(conn)


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
       width=st.integers(min_value=1, max_value=60))  # a CN holds at most 64
def test_host_and_shell_agree_over_any_chunking(cuts: list[int], width: int) -> None:
    modem = Modem.create(seed=0, index=0, model=MODELS["nrf9160"])
    line = shell(shell_wildcards=False)
    events = _exchange(line, modem, Command.set("+CGSN", 1), cuts)
    assert events == [InformationLine(text=f'+CGSN: "{modem.imei}"'), Ok()]
    # a command long enough for its echo to wrap, with a quote and a backslash in a value
    long = Command.set("%KEYGEN", 16842753, 2, 0, "CN=" + "x" * width + ",O=Ac'me \\ Inc")
    events = _exchange(line, modem, long, cuts)
    assert isinstance(events[-1], Ok) and len(events) == 2, events
    assert isinstance(events[0], InformationLine) and events[0].text.startswith("%KEYGEN: ")


def test_the_host_tells_each_refusal_with_the_firmware_option() -> None:
    modem = Modem.create(seed=0, index=0, model=MODELS["nrf9160"])
    cases = [
        (shell(), Command.read("+CFUN"), "usage", "CONFIG_SHELL_WILDCARD=n"),
        (shell(shell_buffer=12), Command.set("+CGSN", 1), "buffer",
         "CONFIG_SHELL_CMD_BUFF_SIZE"),
    ]
    for line, command, kind, option in cases:
        events = _exchange(line, modem, command, [])
        assert len(events) == 1 and isinstance(events[0], ShellRefusal), events
        assert events[0].kind == kind and option in events[0].reason
