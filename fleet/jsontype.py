"""The name JSON gives to the type of a decoded value (``null``, ``boolean``, ``integer``,
``number``, ``string``, ``object``, ``array``), for the messages of every shape check: the
manifest's and the USB identity's the journal and the manifest share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["json_type"]


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
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
