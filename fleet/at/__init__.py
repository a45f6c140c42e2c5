"""Sans-IO AT codec: typed commands to bytes, bytes to typed events, for host and modem sides.

No await, no clock, no serial import here: the device session (host) and the simulator (modem)
drive the same code.
"""

from fleet.at.codec import (
    MAX_LINE_BYTES,
    HostConnection,
    HostState,
    ModemConnection,
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
    StrayLine,
    Urc,
)

__all__ = [
    "MAX_COMMAND_BYTES",
    "MAX_LINE_BYTES",
    "NEED_DATA",
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
    "ModemConnection",
    "Multiline",
    "NeedData",
    "Ok",
    "Op",
    "ParsedCommand",
    "StrayLine",
    "Urc",
    "check_string",
    "encode_final",
    "parse_command",
    "parse_final",
]
