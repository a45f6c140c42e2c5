"""The canonical bytes of a manifest are RFC 8785's (``rfc8785.dumps``), whichever way they are
computed: any plain JSON data, any string (controls, quotes, backslashes, non-ASCII, astral
characters, lone surrogates), ASCII and non-ASCII keys."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import ManifestError
from fleet.manifest import canonical_bytes

_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
_KEYS = st.one_of(st.text(st.characters(max_codepoint=127), max_size=6), _TEXT)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children,
                                                                      max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_canonical_bytes_are_rfc8785s(signed: dict[str, Any]) -> None:
    try:
        expected = rfc8785.dumps(signed)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        with pytest.raises(ManifestError):
            canonical_bytes(signed)
        return
    assert canonical_bytes(signed) == expected


def test_the_escapes_and_orders_that_differ_elsewhere() -> None:
    signed = {"b": "\x00\x1f\x7f\"\\/\u2028\U0001f600é", "a": [1, -0, True, None],
              "\ue000": 1, "\U0001f600": 2}
    assert canonical_bytes(signed) == rfc8785.dumps(signed)
    assert canonical_bytes({"k": "\t\n"}) == b'{"k":"\\t\\n"}'


def test_a_circular_document_is_refused_not_a_hang() -> None:
    signed: dict[str, Any] = {"a": []}
    signed["a"].append(signed)
    with pytest.raises(ManifestError):
        canonical_bytes(signed)
