"""The sans-IO AT codec: byte tables both ways, chunking invariance, bounded memory, injection."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.at import (
    MAX_COMMAND_BYTES,
    NEED_DATA,
    CmeErrorLine,
    CmsErrorLine,
    Command,
    CommandLine,
    Error,
    HostConnection,
    HostState,
    InformationLine,
    ModemConnection,
    Multiline,
    Ok,
    Op,
    StrayLine,
    Urc,
    parse_command,
)
from fleet.errors import (
    AnswerTooLong,
    ArgumentError,
    CmeCode,
    LineTooLong,
    LocalProtocolError,
    RemoteProtocolError,
)


def drain(conn: HostConnection | ModemConnection) -> list[object]:
    out: list[object] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)


def drain_with_errors(conn: HostConnection | ModemConnection) -> list[object]:
    out: list[object] = []
    while True:
        try:
            event = conn.next_event()
        except LineTooLong:
            out.append("LineTooLong")
            continue
        if event is NEED_DATA:
            return out
        out.append(event)


# --- host side: commands to bytes -------------------------------------------------------------

ENCODE_TABLE = [
    (Command.action(), b"AT\r"),
    (Command.action("+CGMM"), b"AT+CGMM\r"),
    (Command.read("+CFUN"), b"AT+CFUN?\r"),
    (Command(name="+CFUN", op=Op.TEST), b"AT+CFUN=?\r"),
    (Command.set("+CFUN", 4), b"AT+CFUN=4\r"),
    (Command.set("+CGSN", 1), b"AT+CGSN=1\r"),
    (Command.set("%CMNG", 1, 16842753, 2), b"AT%CMNG=1,16842753,2\r"),
    (Command.set("%KEYGEN", 11, 2, 0, None, "101010000"), b'AT%KEYGEN=11,2,0,,"101010000"\r'),
    (
        Command.set("%KEYGEN", 11, 2, 0, "O=Nordic Semiconductor,L=Trondheim,C=no", "101010000"),
        b'AT%KEYGEN=11,2,0,"O=Nordic Semiconductor,L=Trondheim,C=no","101010000"\r',
    ),
    (Command.set("%KEYGEN", 33, 8, None, None), b"AT%KEYGEN=33,8\r"),
    (
        Command.set("%CMNG", 0, 12, 0, Multiline("-----BEGIN X-----\nAAAA\n-----END X-----\n")),
        b'AT%CMNG=0,12,0,"-----BEGIN X-----\nAAAA\n-----END X-----\n"\r',
    ),
]


@pytest.mark.parametrize(("command", "wire"), ENCODE_TABLE)
def test_encode_table(command: Command, wire: bytes) -> None:
    assert HostConnection().send(command) == wire


def test_crlf_terminator_selectable() -> None:
    assert HostConnection(terminator=b"\r\n").send(Command.read("+CFUN")) == b"AT+CFUN?\r\n"
    with pytest.raises(ValueError):
        HostConnection(terminator=b";")


@pytest.mark.parametrize(
    "evil",
    [
        'Acme"\rAT+CFUN=0\r"',
        "Acme\rAT+CFUN=0",
        "Acme\nAT%CMNG=3,16842753,2",
        "Acme\x00AT+CFUN=0",
        "Acme\x1b[2J",
        "Acme\x7f",
        "Acme\u0085next",
        "Acme\u2028next",
        'O=Acme",16,"',
    ],
)
def test_injection_refused(evil: str) -> None:
    with pytest.raises(ArgumentError):
        Command.set("%KEYGEN", 16842753, 2, 0, evil)


def test_multiline_allows_lf_only() -> None:
    Command.set("%CMNG", 0, 1, 1, Multiline("a\nb\n"))
    with pytest.raises(ArgumentError):
        Command.set("%CMNG", 0, 1, 1, Multiline("a\r\nb"))
    with pytest.raises(ArgumentError):
        Command.set("%CMNG", 0, 1, 1, Multiline('a\n"b'))


@pytest.mark.parametrize("bad", [-1, True, 1.5, b"x", object()])
def test_bad_argument_types_refused(bad: object) -> None:
    with pytest.raises(ArgumentError):
        Command.set("+CFUN", bad)  # type: ignore[arg-type]


def test_bad_names_and_ops_refused() -> None:
    with pytest.raises(ArgumentError):
        Command.set("+CFUN\r", 1)
    with pytest.raises(ArgumentError):
        Command(name="+CFUN", op=Op.READ, args=(1,))


def test_overlong_command_refused() -> None:
    Command.set("%CMNG", 0, 1, 1, "A" * (MAX_COMMAND_BYTES - 30))
    with pytest.raises(ArgumentError, match="at most"):
        Command.set("%CMNG", 0, 1, 1, "A" * MAX_COMMAND_BYTES)


def test_one_command_at_a_time() -> None:
    host = HostConnection()
    host.send(Command.read("+CFUN"))
    with pytest.raises(LocalProtocolError, match="waiting for the answer"):
        host.send(Command.read("+CFUN"))
    host.abandon()
    assert host.state is HostState.ERROR
    with pytest.raises(LocalProtocolError, match="reset it"):
        host.send(Command.read("+CFUN"))
    host.reset()
    assert host.state is HostState.IDLE
    host.send(Command.read("+CFUN"))


def test_error_is_terminal_until_reset_and_reset_forgets_the_late_answer() -> None:
    host = HostConnection()
    host.send(CFUN)
    host.abandon()
    host.receive_data(b"+CFUN: 1\r\nOK\r\n+CF")  # the late answer, and a partial line
    assert host.state is HostState.ERROR
    host.reset()
    host.send(CGMM)
    host.receive_data(b"UN: 4\r\nOK\r\n")
    # The tail of the late line is no longer glued to the next answer's first bytes.
    assert drain(host) == [InformationLine(text="UN: 4"), Ok()]


def test_an_answer_over_its_line_bound_is_an_error() -> None:
    host = HostConnection(max_answer_lines=3)
    host.send(Command.set("%CMNG", 1))
    host.receive_data(b"%CMNG: 1,0,\"AA\"\r\n" * 3)
    assert len(drain(host)) == 3
    host.receive_data(b"%CMNG: 1,0,\"AA\"\r\n")
    with pytest.raises(AnswerTooLong, match="over 3 lines"):
        host.next_event()
    assert host.state is HostState.ERROR
    # A device that goes on streaming: at most the bound of stray lines is kept.
    host.receive_data(b"%CMNG: 1,0,\"AA\"\r\n" * 100)
    assert len(drain(host)) == 3 and host.state is HostState.ERROR


def test_an_answer_over_its_byte_bound_is_an_error() -> None:
    host = HostConnection(max_answer_bytes=100)
    host.send(CGMM)
    host.receive_data(b"x" * 60 + b"\r\n")
    assert drain(host) == [InformationLine(text="x" * 60)]
    host.receive_data(b"y" * 60 + b"\r\n")
    with pytest.raises(AnswerTooLong, match="100 bytes"):
        host.next_event()


# --- host side: bytes to events ---------------------------------------------------------------

CFUN = Command.read("+CFUN")
KEYGEN = Command.set("%KEYGEN", 11, 2, 0)
CGMM = Command.action("+CGMM")

DECODE_TABLE = [
    ("ok", CFUN, b"OK\r\n", [Ok()]),
    ("info then ok", CFUN, b"+CFUN: 4\r\nOK\r\n", [InformationLine(text="+CFUN: 4"), Ok()]),
    ("error", CFUN, b"ERROR\r\n", [Error()]),
    ("cme 518", KEYGEN, b"+CME ERROR: 518\r\n", [CmeErrorLine(code=CmeCode.ACTIVE_STATE)]),
    ("cme unknown code", KEYGEN, b"+CME ERROR: 999\r\n", [CmeErrorLine(code=999)]),
    ("cms", CFUN, b"+CMS ERROR: 500\r\n", [CmsErrorLine(code=500)]),
    ("leading blank line", CFUN, b"\r\n+CFUN: 1\r\n\r\nOK\r\n",
     [InformationLine(text="+CFUN: 1"), Ok()]),
    ("LF only", CFUN, b"+CFUN: 1\nOK\n", [InformationLine(text="+CFUN: 1"), Ok()]),
    ("CR only", CFUN, b"+CFUN: 1\rOK\r", [InformationLine(text="+CFUN: 1"), Ok()]),
    ("urc before", CFUN, b'+CEREG: 1,"002F","0012BEEF",7\r\n+CFUN: 1\r\nOK\r\n',
     [Urc(text='+CEREG: 1,"002F","0012BEEF",7'), InformationLine(text="+CFUN: 1"), Ok()]),
    ("urc between info lines", Command.set("%CMNG", 1),
     b"%CMNG: 1,0\r\n%XSIM: 1\r\n%CMNG: 2,0\r\nOK\r\n",
     [InformationLine(text="%CMNG: 1,0"), Urc(text="%XSIM: 1"),
      InformationLine(text="%CMNG: 2,0"), Ok()]),
    ("urc after final", CFUN, b"+CFUN: 1\r\nOK\r\n%XPOFWARN\r\n",
     [InformationLine(text="+CFUN: 1"), Ok(), Urc(text="%XPOFWARN")]),
    ("bare text answer with urc", CGMM, b"%CESQ: 54,2,16,2\r\nnRF9160-SICA\r\nOK\r\n",
     [Urc(text="%CESQ: 54,2,16,2"), InformationLine(text="nRF9160-SICA"), Ok()]),
    ("OK inside base64 is data", KEYGEN, b'%KEYGEN: "OKOK.OK"\r\nOK\r\n',
     [InformationLine(text='%KEYGEN: "OKOK.OK"'), Ok()]),
    ("a line that starts with OK is data", CGMM, b"OKAY-9160\r\nOK\r\n",
     [InformationLine(text="OKAY-9160"), Ok()]),
    ("lines after final are stray", CFUN, b"OK\r\n+CFUN: 1\r\nOK\r\n",
     [Ok(), Urc(text="+CFUN: 1"), StrayLine(text="OK")]),
]


@pytest.mark.parametrize(("name", "command", "wire", "events"), DECODE_TABLE,
                         ids=[row[0] for row in DECODE_TABLE])
def test_decode_table(name: str, command: Command, wire: bytes, events: list[object]) -> None:
    host = HostConnection()
    host.send(command)
    host.receive_data(wire)
    assert drain(host) == events
    # Byte at a time gives the same.
    host = HostConnection()
    host.send(command)
    for i in range(len(wire)):
        host.receive_data(wire[i : i + 1])
    assert drain(host) == events


def test_lines_while_idle() -> None:
    host = HostConnection()
    host.receive_data(b"%XSIM: 1\r\nOK\r\nhello\r\n")
    assert drain(host) == [Urc(text="%XSIM: 1"), StrayLine(text="OK"), StrayLine(text="hello")]


def test_abandoned_command_late_answer_is_stray() -> None:
    host = HostConnection()
    host.send(CFUN)
    host.abandon()
    host.receive_data(b"+CFUN: 1\r\nOK\r\n")
    assert drain(host) == [Urc(text="+CFUN: 1"), StrayLine(text="OK")]


def test_line_too_long_is_an_error_and_recovers() -> None:
    host = HostConnection(max_line=64)
    host.send(KEYGEN)
    host.receive_data(b"%KEYGEN: " + b"A" * 200 + b"\r\nOK\r\n")
    with pytest.raises(LineTooLong):
        host.next_event()
    assert drain(host) == [Ok()]
    assert host.buffered_bytes == 0


def test_non_utf8_is_replaced_not_raised() -> None:
    host = HostConnection()
    host.send(CGMM)
    host.receive_data(b"nRF\xff\xfe\r\nOK\r\n")
    events = drain(host)
    assert events[0] == InformationLine(text="nRF\ufffd\ufffd")
    assert events[1] == Ok()


# --- modem side ---------------------------------------------------------------------------------

MODEM_TABLE = [
    ("CR", b"AT+CFUN?\r", ["AT+CFUN?"]),
    ("CRLF", b"AT+CFUN?\r\n", ["AT+CFUN?"]),
    ("LF", b"AT+CFUN?\n", ["AT+CFUN?"]),
    ("NUL", b"AT+CFUN?\x00", ["AT+CFUN?"]),
    ("two in one chunk", b"AT+CFUN=4\rAT+CFUN?\r", ["AT+CFUN=4", "AT+CFUN?"]),
    ("terminators inside quotes belong to the argument",
     b'AT%CMNG=0,1,0,"-----BEGIN\r\nAAA\n-----END"\r',
     ['AT%CMNG=0,1,0,"-----BEGIN\r\nAAA\n-----END"']),
    ("blank lines skipped", b"\r\n\r\nAT\r\n", ["AT"]),
]


@pytest.mark.parametrize(("name", "wire", "lines"), MODEM_TABLE, ids=[r[0] for r in MODEM_TABLE])
def test_modem_decode_table(name: str, wire: bytes, lines: list[str]) -> None:
    modem = ModemConnection()
    modem.receive_data(wire)
    assert drain(modem) == [CommandLine(text=line) for line in lines]
    modem = ModemConnection()
    for i in range(len(wire)):
        modem.receive_data(wire[i : i + 1])
    assert drain(modem) == [CommandLine(text=line) for line in lines]


def test_modem_overlong_command() -> None:
    modem = ModemConnection()
    modem.receive_data(b"AT%CMNG=0,1,0,\"" + b"A" * 5000 + b"\"\rAT\r")
    with pytest.raises(LineTooLong):
        modem.next_event()
    assert drain(modem) == [CommandLine(text="AT")]


def test_modem_encode() -> None:
    assert ModemConnection.response(["+CFUN: 4"], Ok()) == b"+CFUN: 4\r\nOK\r\n"
    assert ModemConnection.response([], CmeErrorLine(code=519)) == b"+CME ERROR: 519\r\n"
    assert ModemConnection.response([], Error()) == b"ERROR\r\n"
    assert ModemConnection.frame([]) == b""
    # a lone surrogate is the raw byte a modem printed that is not UTF-8
    assert ModemConnection.frame(["mfw_\udcff", "OK"]) == b"mfw_\xff\r\nOK\r\n"


PARSE_TABLE = [
    ("AT", Command.action()),
    ("at+cfun?", Command.read("+CFUN")),
    ("AT+CFUN=?", Command(name="+CFUN", op=Op.TEST)),
    ("AT%KEYGEN=11,2,0,,\"101010000\"", Command.set("%KEYGEN", 11, 2, 0, None, "101010000")),
    ("AT%KEYGEN=33,8", Command.set("%KEYGEN", 33, 8)),
    ("AT%CMNG=1", Command.set("%CMNG", 1)),
]


@pytest.mark.parametrize(("line", "command"), PARSE_TABLE)
def test_parse_table(line: str, command: Command) -> None:
    parsed = parse_command(line)
    assert (parsed.name, parsed.op, parsed.args) == (command.name, command.op, command.args)


@pytest.mark.parametrize("line", ["", "XX", "AT+CFUN=abc", 'AT%KEYGEN=1,"open', "AT+CFUN=1\"x\"",
                                  "AT+CFUN!"])
def test_parse_rejects(line: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_command(line)


def test_parse_keeps_raw_strings() -> None:
    parsed = parse_command('AT%CMNG=0,1,1,"a\r\nb"')
    assert parsed.args == (0, 1, 1, "a\r\nb")
    assert parsed.arg(3) == "a\r\nb"
    assert parsed.arg(9) is None


# --- round trips through both sides -------------------------------------------------------------

safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
                           blacklist_characters='"'),
    max_size=40,
)
args = st.lists(st.one_of(st.integers(0, 2**40), safe_text, st.none()), max_size=6)
names = st.from_regex(r"[+%][A-Z][A-Z0-9]{0,8}", fullmatch=True)


@given(name=names, arguments=args)
def test_command_round_trip_host_to_modem(name: str, arguments: list[int | str | None]) -> None:
    command = Command.set(name, *arguments)
    modem = ModemConnection()
    modem.receive_data(HostConnection().send(command))
    events = drain(modem)
    assert len(events) == 1
    assert isinstance(events[0], CommandLine)
    parsed = parse_command(events[0].text)
    assert (parsed.name, parsed.op, parsed.args) == (command.name, command.op, command.args)


info_text = st.from_regex(r"[A-Za-z0-9%+:,\" .=_-]{1,60}", fullmatch=True).filter(
    lambda s: s.strip() != "" and not s.startswith(("OK", "ERROR", "+CME", "+CMS", "+", "%"))
)
urc_text = st.sampled_from(['+CEREG: 1,"002F","0012BEEF",7', "%XSIM: 1", "%CESQ: 54,2,16,2",
                            "%XPOFWARN", "+CSCON: 0"])
final = st.sampled_from([Ok(), Error(), CmeErrorLine(code=CmeCode.ALREADY_EXISTS),
                         CmeErrorLine(code=4242), CmsErrorLine(code=300)])


@st.composite
def exchanges(draw: st.DrawFn) -> list[tuple[list[object], bytes]]:
    """A session: per command, the events it should produce and the bytes the modem sends,
    with URCs before, between and after the response lines."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        events: list[object] = []
        for _ in range(draw(st.integers(0, 4))):
            if draw(st.booleans()):
                events.append(Urc(text=draw(urc_text)))
            else:
                events.append(InformationLine(text=draw(info_text)))
        events.append(draw(final))
        for _ in range(draw(st.integers(0, 2))):
            events.append(Urc(text=draw(urc_text)))
        wire = b""
        for event in events:
            if isinstance(event, Urc | InformationLine):
                wire += event.text.encode() + draw(st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n"]))
            else:
                wire += ModemConnection.response([], event)  # type: ignore[arg-type]
        out.append((events, wire))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@settings(max_examples=300)
@given(session=exchanges(), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_events_never_depend_on_chunking(
    session: list[tuple[list[object], bytes]], cuts: list[int]
) -> None:
    host = HostConnection()
    for expected, wire in session:
        host.send(CGMM)
        got: list[object] = []
        for piece in split_at(wire, cuts):
            host.receive_data(piece)
            got.extend(drain(host))
        assert got == expected
        assert host.state is HostState.IDLE


@settings(max_examples=300)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 10_000), max_size=20),
       pending=st.booleans())
def test_arbitrary_bytes_only_codec_errors_and_bounded(
    data: bytes, cuts: list[int], pending: bool
) -> None:
    host = HostConnection(max_line=128)
    modem = ModemConnection(max_line=128)
    if pending:
        host.send(KEYGEN)
    for piece in split_at(data, cuts):
        host.receive_data(piece)
        modem.receive_data(piece)
        assert host.buffered_bytes <= 128
        drain_with_errors(host)
        drain_with_errors(modem)
        for line in drain_with_errors(modem):
            if isinstance(line, CommandLine):
                with contextlib.suppress(RemoteProtocolError):
                    parse_command(line.text)


@given(data=st.binary(min_size=1, max_size=2000), cuts=st.lists(st.integers(0, 5000), max_size=20))
def test_arbitrary_bytes_same_events_any_chunking(data: bytes, cuts: list[int]) -> None:
    whole = HostConnection(max_line=100)
    whole.send(KEYGEN)
    whole.receive_data(data)
    chunked = HostConnection(max_line=100)
    chunked.send(KEYGEN)
    got: list[object] = []
    for piece in split_at(data, cuts):
        chunked.receive_data(piece)
        got.extend(drain_with_errors(chunked))
    assert got == drain_with_errors(whole)
