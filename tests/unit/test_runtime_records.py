"""The reply record a call with a request id leaves (docs/DESIGN.md §4).

The runtime makes one on every such call through ``new_reply_record``, which
fills the frozen record's slots directly; these tests hold that what it makes
is an ordinary ReplyRecord in every way a checkpoint, a move or a retry uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from wat.runtime_helpers import GUID_A, example

from hermesx.core import codec
from hermesx.core.errors import ConfigurationError, MethodError
from hermesx.core.replies import call_digest
from hermesx.core.snapshot import ReplyRecord, new_reply_record, record_fields, record_from
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime()
    yield rt
    rt.close()


def test_a_record_made_fast_is_a_record_like_any_other() -> None:
    made = new_reply_record("hx1.0123456789abcdef.7.1000", "", b"\x01", 5, b"d" * 16)
    plain = ReplyRecord("hx1.0123456789abcdef.7.1000", "", b"\x01", 5, b"d" * 16)
    assert type(made) is ReplyRecord
    assert made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    assert record_from(record_fields(made)) == plain
    assert dataclasses.replace(made, recorded_ms=9).recorded_ms == 9
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.payload = b"other"  # type: ignore[misc]


def test_a_call_with_a_request_id_records_its_outcome_and_call(runtime: Runtime) -> None:
    counter = runtime.create(runtime.load(example("counter")), GUID_A, StandaloneHost())
    first = counter.invoke("incr", codec.pack(2), request_id="r1")
    (record,) = counter.replies.records()
    assert record == ReplyRecord("r1", "", first, 0, call_digest("incr", codec.pack(2)))
    # The retry gets the same outcome without running; another call under the id is refused.
    assert counter.invoke("incr", codec.pack(2), request_id="r1") == first
    with pytest.raises(ConfigurationError, match="first sent for another call"):
        counter.invoke("incr", codec.pack(3), request_id="r1")
    assert codec.unpack(counter.invoke("get", b"")) == codec.unpack(first)
    # An error is recorded too, and replayed as the same error.
    with pytest.raises(MethodError) as failed:
        counter.invoke("nope", b"", request_id="r2")
    kept = counter.replies.records()[-1]
    assert kept.error_kind == failed.value.kind and kept.payload == str(failed.value).encode()
    with pytest.raises(MethodError, match="unknown method"):
        counter.invoke("nope", b"", request_id="r2")
