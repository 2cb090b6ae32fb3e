"""Attack: a request id reused for a call whose long arguments differ only in the middle.

docs/DESIGN.md §4 "Exactly once": a request whose id is in the reply table for
another call is refused (``configuration``), never answered with the other
call's outcome. The digest once hashed only the head and tail of arguments
over 64 KiB, so a caller reusing an id for a large call that differed only in
its middle (a document edited in the middle, a blob with a changed page) got
the first call's outcome as its own, silently, and its own call never ran.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from wat.runtime_helpers import GUID_A, wat

from hermesx.core import codec
from hermesx.core.errors import ConfigurationError
from hermesx.core.replies import RequestIds, call_digest
from hermesx.core.snapshot import ReplyRecord
from hermesx.runtime.engine import Runtime
from hermesx.runtime.host import StandaloneHost


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime()
    yield rt
    rt.close()


def _long(middle: int) -> bytes:
    data = bytearray(80_000)
    data[40_000] = middle
    return bytes(data)


def test_long_arguments_differing_only_in_the_middle_are_another_call(runtime: Runtime) -> None:
    atom = runtime.create(runtime.load(wat("testatom")), GUID_A, StandaloneHost())
    rid = RequestIds().next()
    atom.invoke("incr", codec.pack(1))
    assert codec.unpack(atom.invoke("get", _long(1), request_id=rid)) == 1
    atom.invoke("incr", codec.pack(1))
    # The same call again: its first outcome.
    assert codec.unpack(atom.invoke("get", _long(1), request_id=rid)) == 1
    # Another call under that id (its arguments differ in one byte mid-way): refused,
    # not answered with the first call's stale outcome.
    with pytest.raises(ConfigurationError, match="another call"):
        atom.invoke("get", _long(2), request_id=rid)
    assert call_digest("m", _long(1)) != call_digest("m", _long(2))


def _head_and_tail_digest(method: str, args: bytes) -> bytes:
    """The digest versions before session 6 kept of a call with arguments over 64 KiB."""
    name = method.encode()
    digest = hashlib.blake2b(len(name).to_bytes(4, "big"), digest_size=16)
    digest.update(name + len(args).to_bytes(8, "big") + args[:32768] + args[-32768:])
    return digest.digest()


def test_a_record_an_older_version_wrote_still_answers_its_retry(runtime: Runtime) -> None:
    """A retry across a rolling upgrade: refusing it would say "not run" of a call that ran."""
    atom = runtime.create(runtime.load(wat("testatom")), GUID_A, StandaloneHost())
    rid = RequestIds().next()
    old = ReplyRecord(rid, "", codec.pack(7), 0, _head_and_tail_digest("get", _long(1)))
    atom.replies.restore(atom.replies.window, (old,), (), 0)
    assert codec.unpack(atom.invoke("get", _long(1), request_id=rid)) == 7
    with pytest.raises(ConfigurationError, match="another call"):
        atom.invoke("get", _long(1)[:-1] + b"\x01", request_id=rid)
