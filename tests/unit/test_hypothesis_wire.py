"""Property tests for what hermesx decodes from outside: status details, TADs, GUIDs, codecs.

Whatever a peer, a user or an atom hands over, decoding gives either the value
or a HermesError; never a raw exception from the layer underneath.
"""

from __future__ import annotations

import json

import grpc
import msgpack
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from hermesx.core import codec
from hermesx.core.errors import (
    CallTimeoutError,
    CommunicationError,
    ConfigurationError,
    HermesError,
    InvalidNameError,
    PayloadTooLargeError,
    UnreachableError,
    error_from_wire,
)
from hermesx.core.identity import GUID, TAD
from hermesx.rpc.convert import tad_from_pb
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.status import error_from_rpc


def _all_kinds() -> dict[str, type[HermesError]]:
    found: dict[str, type[HermesError]] = {}
    todo: list[type[HermesError]] = [HermesError]
    while todo:
        cls = todo.pop()
        # Internal refinements (e.g. a subclass for one retry rule) share
        # their parent's kind; the wire rebuilds the class that owns the kind.
        # Errors of applications built on hermesx (e.g. the KV store's aborted
        # transaction) are theirs, not kinds the wire knows.
        if "kind" in vars(cls) and cls.__module__ == HermesError.__module__:
            found[cls.kind] = cls
        todo.extend(cls.__subclasses__())
    return found


ALL_KINDS = _all_kinds()
kinds = st.sampled_from(sorted(ALL_KINDS)) | st.text(max_size=20)
status_codes = st.sampled_from(list(grpc.StatusCode)) | st.none()


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details


# -- errors across the wire --------------------------------------------------------


@given(kinds, st.text())
def test_error_from_wire_keeps_known_kinds_and_every_message(kind: str, message: str) -> None:
    err = error_from_wire(kind, message)
    assert isinstance(err, HermesError)
    assert str(err) == message
    assert type(err) is ALL_KINDS.get(kind, HermesError)


@given(status_codes, st.text() | st.none(), st.text(min_size=1, max_size=40))
def test_error_from_rpc_always_gives_a_hermes_error(
    code: grpc.StatusCode | None, details: str | None, peer: str
) -> None:
    err = error_from_rpc(_RpcError(code, details), peer)
    assert isinstance(err, HermesError)
    kind, sep, message = (details or "").partition(": ")
    rebuilt = ALL_KINDS.get(kind) if sep and " " not in kind and code is not None else None
    if rebuilt is not None and rebuilt is not HermesError:
        # A kind the peer sent survives with its message.
        assert type(err) is rebuilt and str(err) == message
    else:
        # A transport failure: the error says which peer.
        assert isinstance(err, CommunicationError | PayloadTooLargeError)
        assert peer in str(err)
        if code == grpc.StatusCode.UNAVAILABLE:
            assert isinstance(err, UnreachableError)
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            assert isinstance(err, CallTimeoutError)


@given(st.sampled_from(sorted(k for k in ALL_KINDS if k != "hermes")), st.text())
def test_every_kind_round_trips_through_status_details(kind: str, message: str) -> None:
    details = f"{kind}: {message}"
    err = error_from_rpc(_RpcError(grpc.StatusCode.UNKNOWN, details), "node n1")
    assert type(err) is ALL_KINDS[kind]
    assert str(err) == message


def test_an_rpc_error_without_code_or_details_still_names_the_peer() -> None:
    class Bare(grpc.RpcError):
        pass

    err = error_from_rpc(Bare(), "storesite s1 at 127.0.0.1:1")
    assert isinstance(err, CommunicationError)
    assert "storesite s1" in str(err)


# -- TADs from protobuf ---------------------------------------------------------------


@given(st.text(), st.integers(0, 2**64 - 1))
def test_tad_from_pb_gives_the_fields_or_none_when_empty(node: str, age: int) -> None:
    try:
        msg = pb.TAD(node=node, age=age)
    except ValueError:
        # Surrogates are not UTF-8: protobuf refuses them before they reach the wire.
        return
    tad = tad_from_pb(msg)
    if not node:
        assert tad is None
    else:
        assert tad == TAD(node, age)


@given(st.binary(max_size=64))
def test_garbage_bytes_never_become_a_tad_by_accident(data: bytes) -> None:
    try:
        msg = pb.TAD.FromString(data)
    except DecodeError:
        return
    tad = tad_from_pb(msg)
    # Whatever decoded is exactly what the fields hold; empty node means no TAD.
    assert (tad is None) == (msg.node == "")
    if tad is not None:
        assert (tad.node, tad.age) == (msg.node, msg.age)


# -- GUIDs ----------------------------------------------------------------------------

homes = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)
uids = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)


@given(homes, uids)
def test_guid_text_round_trips(home: str, uid: str) -> None:
    guid = GUID(home, uid)
    assert GUID.parse(str(guid)) == guid
    assert GUID.looks_like(str(guid))


@given(st.text())
@settings(max_examples=300)
def test_guid_parse_of_any_text_is_exact_or_a_clear_error(text: str) -> None:
    try:
        guid = GUID.parse(text)
    except InvalidNameError as exc:
        assert str(exc)
        return
    # Accepted text is exactly the GUID's text form: nothing trimmed, nothing folded.
    assert str(guid) == text
    assert GUID.looks_like(text)


@given(homes, uids, st.sampled_from([" ", "\n", ":", "x", "A", "0"]))
def test_guid_with_anything_appended_is_refused(home: str, uid: str, tail: str) -> None:
    with pytest.raises(InvalidNameError):
        GUID.parse(f"{home}:{uid}{tail}")


# -- codecs --------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=4),
            children,
            max_size=4,
        )
    ),
    max_leaves=25,
)


@given(msgpack_values)
def test_any_msgpack_result_prints_as_json(value: object) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    printable = codec.msgpack_to_python(data)
    # The CLI prints it: it must be JSON, and JSON read back must give the same thing.
    text = json.dumps(printable)
    assert json.loads(text) == printable


@given(st.binary(max_size=256))
@settings(max_examples=400)
def test_arbitrary_result_bytes_decode_or_fail_clearly(data: bytes) -> None:
    try:
        printable = codec.msgpack_to_python(data)
    except ConfigurationError as exc:
        assert "msgpack" in str(exc)
        return
    json.dumps(printable)


@given(msgpack_values)
def test_json_printed_results_round_trip_back_to_msgpack_when_plain(value: object) -> None:
    printable = codec.msgpack_to_python(msgpack.packb(value, use_bin_type=True))
    again = codec.msgpack_to_python(codec.json_to_msgpack(json.dumps(printable)))
    assert again == printable


@pytest.mark.parametrize("depth", [600, 3000])
def test_deeply_nested_results_are_a_clear_error(depth: int) -> None:
    data = b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]
    try:
        printable = codec.msgpack_to_python(data)
    except ConfigurationError as exc:
        # Deeper than msgpack's own stack is "not valid msgpack"; deeper than
        # Python's is "nests too deeply".
        assert "deep" in str(exc) or "msgpack" in str(exc)
    else:
        assert json.dumps(printable).count("[") == depth


@pytest.mark.parametrize("depth", [3000, 100_000])
def test_deeply_nested_json_arguments_are_a_clear_error(depth: int) -> None:
    text = "[" * depth + "]" * depth
    with pytest.raises(ConfigurationError, match=r"deep|msgpack"):
        codec.json_to_msgpack(text)
