"""The SDK's msgpack reader and writer (atoms/hx_msgpack.h), seen through example atoms.

Arguments come from outside the atom, so any bytes must end in a result or a
clean MethodError, never a trap; what the writer produces must decode in
Python to the same values, in the smallest encoding like Python's msgpack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hermesx.core.errors import MethodError
from hermesx.core.identity import GUID
from hermesx.runtime.atom import Atom
from hermesx.runtime.build import SDK_DIR, build_atom
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost

pack = msgpack.packb
unpack = msgpack.unpackb

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    rt = Runtime(deadline_ms=1000, memory_limit_bytes=16 * 2**20)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="module")
def make(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Atom]:
    out: Path = tmp_path_factory.mktemp("atoms")

    def create(name: str, init: bytes = b"") -> Atom:
        wasm = build_atom(SDK_DIR / f"{name}.c", out / f"{name}.wasm").read_bytes()
        module = runtime.load(wasm)
        return runtime.create(module, str(GUID.new("local")), StandaloneHost(), init)

    return create


@pytest.fixture(scope="module")
def echo(make: Callable[..., Atom]) -> Atom:
    return make("echo")


@pytest.fixture(scope="module")
def kvstore(make: Callable[..., Atom]) -> Atom:
    return make("kvstore")


@pytest.fixture(scope="module")
def counter(make: Callable[..., Atom]) -> Atom:
    return make("counter")


@FUZZ
@given(value=values)
def test_values_round_trip_through_echo(echo: Atom, value: object) -> None:
    raw = pack(value)
    assert echo.invoke("echo", raw) == raw


@FUZZ
@given(key=st.text(min_size=1, max_size=300), value=values)
def test_kvstore_keeps_any_value_byte_for_byte(kvstore: Atom, key: str, value: object) -> None:
    assert unpack(kvstore.invoke("put", pack([key, value]))) is None
    assert kvstore.invoke("get", pack(key)) == pack(value)
    assert unpack(kvstore.invoke("delete", pack(key))) is True


@FUZZ
@given(data=st.binary(max_size=64))
def test_arbitrary_argument_bytes_never_trap(
    counter: Atom, kvstore: Atom, echo: Atom, data: bytes
) -> None:
    for atom, method in [
        (counter, "incr"),
        (kvstore, "put"),
        (kvstore, "get"),
        (kvstore, "delete"),
        (echo, "log"),
    ]:
        # A clean error is fine; any other exception (a trap) fails the test.
        with contextlib.suppress(MethodError):
            atom.invoke(method, data)
    assert isinstance(unpack(counter.invoke("get", b"")), int)


@FUZZ
@given(value=values, cut=st.integers(min_value=1, max_value=200))
def test_truncated_arguments_are_method_errors(kvstore: Atom, value: object, cut: int) -> None:
    raw = pack(["key", value])
    truncated = raw[: max(0, len(raw) - cut)]
    with pytest.raises(MethodError, match="put:"):
        kvstore.invoke("put", truncated)


def test_hostile_nesting_is_rejected_not_recursed(kvstore: Atom) -> None:
    # 100k nested one-element arrays: a recursive skip would blow the 64 KiB stack.
    deep = b"\x92\xa1k" + b"\x91" * 100_000 + b"\xc0"
    assert unpack(kvstore.invoke("put", deep)) is None
    assert kvstore.invoke("get", pack("k")) == b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(MethodError):
        kvstore.invoke("put", b"\x92\xa1k" + b"\xdd\xff\xff\xff\xff")


@pytest.mark.parametrize(
    "value",
    [
        0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1,
        -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
    ],
)  # fmt: skip
def test_ints_use_the_smallest_encoding(make: Callable[..., Atom], value: int) -> None:
    counter = make("counter", pack(value))
    assert counter.invoke("get", b"") == pack(value)


@pytest.mark.parametrize("length", [0, 31, 32, 255, 256, 65535, 65536])
def test_strings_of_every_header_width(kvstore: Atom, length: int) -> None:
    key = "k" * length if length else "x"
    kvstore.invoke("put", pack([key, length]))
    try:
        assert key in unpack(kvstore.invoke("keys", b""))
    finally:
        kvstore.invoke("delete", pack(key))


def test_arrays_past_the_fixarray_limit(make: Callable[..., Atom]) -> None:
    store = make("kvstore")
    names = [f"key{i:03d}" for i in range(20)]
    for name in names:
        store.invoke("put", pack([name, None]))
    raw = store.invoke("keys", b"")
    assert raw[0] == 0xDC  # array 16
    assert unpack(raw) == names


def test_map_and_str_in_a_reply(echo: Atom) -> None:
    info = unpack(echo.invoke("info", b""))
    assert set(info) == {"guid", "node"}
    assert info["guid"] == echo.guid
