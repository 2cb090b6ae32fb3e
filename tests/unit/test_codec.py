"""JSON <-> msgpack helpers used by the command line."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermesx.core.codec import json_to_msgpack, msgpack_to_python, pack, unpack
from hermesx.core.errors import ConfigurationError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text()
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_json_values_round_trip(value: object) -> None:
    assert msgpack_to_python(json_to_msgpack(json.dumps(value))) == value


def test_bad_json_names_the_input() -> None:
    with pytest.raises(ConfigurationError, match=r"'\{nope' are not valid JSON"):
        json_to_msgpack("{nope")


def test_empty_argument_is_nil() -> None:
    assert json_to_msgpack("") == b"\xc0"


def test_binary_results_become_printable() -> None:
    data = msgpack.packb(
        {"text": b"hello", "raw": b"\xff\x00", 1: [b"a"], "ext": msgpack.ExtType(5, b"\x01")},
        use_bin_type=True,
    )
    value = msgpack_to_python(data)
    assert value == {
        "text": "hello",
        "raw": {"$base64": "/wA="},
        "1": ["a"],
        "ext": {"$ext": 5, "$base64": "AQ=="},
    }
    json.dumps(value)


def test_pack_unpack_keep_bytes_and_text_apart() -> None:
    assert unpack(pack([b"x", "x"])) == [b"x", "x"]
    with pytest.raises(ConfigurationError, match="msgpack"):
        unpack(b"\xc1")
    with pytest.raises(ConfigurationError, match="object"):
        pack(object())
