"""kill -9 of a storesite process amid group commits of delta records (docs/DESIGN.md §6).

A real process writes checkpoints of eight atoms from eight threads, as
deltas on each atom's latest (group committed, stored as delta records, cut
by a whole checkpoint every so often), and prints each acknowledgement only
after ``put_delta`` returned. It is killed with SIGKILL at a random moment,
several times over the same store; after each kill the store must open and
every atom's latest checkpoint, composed, must hold at least every
acknowledged generation — and be exactly some generation's state.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest

from hermesx.core.snapshot import CHUNK, decode_state
from storesite.store import AtomStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SID = "s1"
ATOMS = 8

WRITER = r"""
import pathlib, sys, threading
from hermesx.core.delta import StateDelta, encode_delta
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import CHUNK, AtomState, ReplyRecord, encode_state, snapshot_checksum
from hermesx.rpc.proto import hermesx_pb2 as pb
from storesite.deltas import put_delta
from storesite.records import Provenance
from storesite.store import AtomStore

data_dir, atoms = pathlib.Path(sys.argv[1]), int(sys.argv[2])
tad = TAD("n1", 1)
store = AtomStore("s1", data_dir, init=True)
out = threading.Lock()

def say(line):
    with out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

def state(guid, generation):
    return AtomState(module_hash="ab" * 32, guid=guid, memory_size=4 * CHUNK,
                     memory=((0, bytes([generation % 251 + 1]) * CHUNK),),
                     globals=(("g", "i32", generation),), generation=generation,
                     replies=(ReplyRecord(f"c/{generation}", "", b"r", 1),))

def run(guid, start):
    # The latest is whole at (1, start) after this: each writer restarts from a whole state.
    snapshot = encode_state(state(guid, start))
    name = snapshot_checksum(snapshot)
    store.put_checkpoint(guid, tad, start, snapshot, Provenance(checksum=name, generation=start))
    say(f"ack {guid} {start}")
    generation = start
    while True:
        generation += 1
        rest = AtomState(module_hash="ab" * 32, guid=guid, memory_size=0, memory=(),
                         globals=(("g", "i32", generation),), generation=generation)
        delta = encode_delta(StateDelta(
            memory_size=4 * CHUNK, chunks=((0, bytes([generation % 251 + 1]) * CHUNK),),
            kv_put=(), kv_delete=(), replies_dropped=1,
            replies_added=(ReplyRecord(f"c/{generation}", "", b"r", 1),), rest=rest))
        check = Provenance(checksum=snapshot_checksum(delta), generation=generation)
        outcome = put_delta(store, guid, tad, generation, delta, check, generation - 1, name)
        assert outcome.stored, outcome.refused
        name = outcome.checksum
        say(f"ack {guid} {generation}")

guids = [line.split() for line in sys.argv[3:]]
if not guids:
    for _ in range(atoms):
        guid = str(GUID.new("s1"))
        snap = encode_state(state(guid, 0))
        store.register_atom(guid, pb.AtomMeta(name=guid[-8:], module_hash="ab" * 32), tad, snap,
                            Provenance(checksum=snapshot_checksum(snap), generation=0))
        guids.append([guid, "0"])
for guid, start in guids:
    threading.Thread(target=run, args=(guid, int(start) + 1), daemon=True).start()
say("started")
threading.Event().wait()
"""


def _write_until_killed(data_dir: pathlib.Path, known: dict[str, int], acks: int) -> dict[str, int]:
    """Run the writer until it acknowledged about ``acks`` checkpoints plus a random few,
    kill -9 it; every generation it acknowledged, per atom."""
    args = [f"{guid} {generation}" for guid, generation in known.items()]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data_dir), str(ATOMS), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked: dict[str, int] = {}
    try:
        assert writer.stdout is not None
        target = acks + random.randrange(acks)
        count = 0
        deadline = time.monotonic() + 90
        for line in writer.stdout:
            if line.startswith("ack "):
                _, guid, generation = line.split()
                acked[guid] = max(acked.get(guid, 0), int(generation))
                count += 1
                if count >= target:
                    break
            assert time.monotonic() < deadline, "the writer is too slow"
        assert count >= target, writer.stderr.read() if writer.stderr else ""
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    # What it printed after the break may have been acknowledged too; never less.
    assert writer.stdout is not None
    for line in writer.stdout.read().splitlines():
        if line.startswith("ack "):
            _, guid, generation = line.split()
            acked[guid] = max(acked.get(guid, 0), int(generation))
    return acked


def test_a_killed_storesite_keeps_every_acknowledged_delta(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    known: dict[str, int] = {}
    for _ in range(4):
        acked = _write_until_killed(data_dir, known, acks=150)
        with AtomStore(SID, data_dir) as store:
            atoms = [s for s in store.atoms()]
            assert len(atoms) == ATOMS
            for record in atoms:
                latest = store.latest_checkpoint(record.guid)
                state = decode_state(latest.snapshot)
                # Exactly the state of its generation: nothing torn, nothing mixed.
                assert latest.generation == state.generation
                assert state.globals == (("g", "i32", state.generation),)
                assert dict(state.memory)[0] == bytes([state.generation % 251 + 1]) * CHUNK
                assert [r.request_id for r in state.replies] == [f"c/{state.generation}"]
                # Every acknowledged generation is there.
                assert state.generation >= acked.get(record.guid, 0), record.guid
                known[record.guid] = state.generation
