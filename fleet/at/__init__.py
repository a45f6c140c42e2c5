"""Sans-IO AT codec: typed commands to bytes, bytes to typed events, for host and modem sides.

No await, no clock, no serial import here: the device session (host) and the simulator (modem)
drive the same code.
"""

from fleet.at.codec import (
    MAX_LINE_BYTES,
    HostConnection,
    HostState,
    encode_final,
    parse_final,
)
from fleet.at.commands import (
    MAX_COMMAND_BYTES,
    Arg,
    Command,
    Multiline,
    Op,
    ParsedCommand,
    check_string,
    delete_credential,
    parse_command,
)
from fleet.at.events import (
    NEED_DATA,
    CmeErrorLine,
    CmsErrorLine,
    CommandLine,
    Error,
    Event,
    Final,
    HostEvent,
    InformationLine,
    NeedData,
    Ok,
    ShellRefusal,
    StrayLine,
    Urc,
)
from fleet.at.line import Interface, Terminator
from fleet.at.modem import ModemConnection
from fleet.at.shell import LEAVE_RAW, START_RAW, ShellCommand, ShellFraming

__all__ = [
    "LEAVE_RAW",
    "MAX_COMMAND_BYTES",
    "MAX_LINE_BYTES",
    "NEED_DATA",
    "START_RAW",
    "Arg",
    "CmeErrorLine",
    "CmsErrorLine",
    "Command",
    "CommandLine",
    "Error",
    "Event",
    "Final",
    "HostConnection",
    "HostEvent",
    "HostState",
    "InformationLine",
    "Interface",
    "ModemConnection",
    "Multiline",
    "NeedData",
    "Ok",
    "Op",
    "ParsedCommand",
    "ShellCommand",
    "ShellFraming",
    "ShellRefusal",
    "StrayLine",
    "Terminator",
    "Urc",
    "check_string",
    "delete_credential",
    "encode_final",
    "parse_command",
    "parse_final",
]
