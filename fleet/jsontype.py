"""The name JSON gives to the type of a decoded value (``null``, ``boolean``, ``integer``,
``number``, ``string``, ``object``, ``array``), for the messages of every shape check: the
manifest's and the USB identity's the journal and the manifest share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["json_type"]


#: The types ``json.loads`` makes, looked up first: a manifest's shape check asks about 30
#: times per device.
_DECODED = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
            dict: "object", list: "array"}


def json_type(value: Any) -> str:
    name = _DECODED.get(type(value))
    if name is not None:
        return name
    # Any other type: a subclass of those (an IntEnum, a StrEnum) or another container (a
    # Mapping, a tuple). None and bool have no subclasses, so the table answered them.
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__
