"""A checkpoint an atom asks for inside a call is part of that call's durability (DESIGN §6).

A durable KV shard (docs/DESIGN.md §11) runs with the on-request policy and
asks for a checkpoint in each call that changes it: if that checkpoint is
not stored, the call must not be acknowledged.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from hermesx.core.errors import StorageError
from hermesx.node.checkpoints import Checkpointing
from hermesx.rpc.proto import hermesx_pb2 as pb


class _Storesites:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.stored: list[int] = []

    def put_checkpoint(self, guid: str, tad: Any, snapshot: bytes, seq: int, **_: Any) -> None:
        if self.fail:
            raise StorageError("storesite s1 is unreachable")
        self.stored.append(seq)

    def ship_logs(self, guid: str) -> None:
        pass


def _active(requested: bool) -> Any:
    atom = SimpleNamespace(generation=1, snapshot_with_generation=lambda: (b"state", 1))
    return SimpleNamespace(
        guid="s1:00",
        tad=None,
        changes=None,  # an untracked atom: whole-state checkpoints
        atom=atom,
        meta=pb.AtomMeta(checkpoint=pb.CheckpointPolicy(mode=pb.CheckpointPolicy.ON_REQUEST)),
        checkpoint_request=requested,
        checkpointed_generation=0,
        checkpoint_lock=threading.Lock(),
        checkpoint_seq=0,
        last_checkpoint=0.0,
    )


def _checkpointing(storesites: _Storesites) -> Checkpointing:
    ctx = SimpleNamespace(storesites=storesites, pause=lambda _step: None)
    return Checkpointing(ctx, aborts=set())  # type: ignore[arg-type]


def test_a_requested_checkpoint_is_stored_before_the_reply() -> None:
    storesites = _Storesites(fail=False)
    reply = pb.InvokeReply(result=b"\xc0")
    _checkpointing(storesites).after_call(_active(requested=True), reply)
    assert storesites.stored == [1]
    assert reply.WhichOneof("outcome") == "result"


def test_a_requested_checkpoint_that_fails_fails_the_call() -> None:
    reply = pb.InvokeReply(result=b"\xc0")
    _checkpointing(_Storesites(fail=True)).after_call(_active(requested=True), reply)
    assert reply.WhichOneof("outcome") == "error"
    assert "call ran but checkpoint failed" in reply.error.message


def test_a_call_that_asked_for_nothing_is_not_checkpointed() -> None:
    storesites = _Storesites(fail=True)
    reply = pb.InvokeReply(result=b"\xc0")
    _checkpointing(storesites).after_call(_active(requested=False), reply)
    assert reply.WhichOneof("outcome") == "result"
