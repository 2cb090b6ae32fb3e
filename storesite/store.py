"""The storesite's durable state in LMDB (docs/DESIGN.md §5 participant side, §6).

One :class:`AtomStore` per process owns one LMDB environment in a data
directory (:mod:`storesite.environment`: the lock, the whole-file check,
opening and upgrading). It keeps:

- modules: hex sha256 → module bytes (:mod:`storesite.modules`);
- atoms: GUID → :class:`~storesite.records.AtomState` (meta, location TAD
  and the node incarnation it names, dormant flag, the next age to hand out,
  a pending move, the latest checkpoint's age and seq, the storesite the
  atom's home moved to);
- checkpoints: the latest and the three before it, each with its TAD, seq,
  checksum and generation (:mod:`storesite.checkpoints`).

Every method is one LMDB transaction, durable when it returns, so the state
machine (register, checkpoint, prepare / commit / abort, passivate, activate,
recover, adopt, forget) never shows a half-done step. A checkpoint's is a
nested transaction of a group commit (:mod:`storesite.committer`): the
checkpoints that arrive together share one commit and one sync, and each is
answered only after it; a delta is composed onto the latest checkpoint first
(:mod:`storesite.deltas`). This module holds an
atom's life at its home: registration, checkpoints, passivation, activation
and recovery; the steps of a move (of the atom between nodes, of its home
between storesites) are :attr:`AtomStore.moves` (:mod:`storesite.moves`).
Operations that talk to other processes (activation, recovery, moving home)
live in :mod:`storesite.service`, which serializes them per GUID.

Ages: a checkpoint is newer than another when its ``(age, seq)`` is greater.
``seq`` counts within one age: a node that receives an atom (move, activation,
recovery) starts counting again from 1, and the checkpoint the storesite
writes itself at that age (commit, activation) has seq 0. A checkpoint older
than the one held is never stored over it.

Damage (docs/DESIGN.md §6): every checkpoint carries the CRC-32 of its snapshot
(:func:`hermesx.core.snapshot.snapshot_checksum`), checked when it arrives and
every time it is read back. A damaged checkpoint is never handed out. The
newest good one kept is used instead only when it holds every call that was
acknowledged as durable: each checkpoint records the atom's generation (calls
completed) and the atom record the generation of the latest checkpoint
written, which every earlier caller was told is durable. Otherwise the read
fails with a StorageError naming the atom and the damage.
"""

from __future__ import annotations

import functools
import logging
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Concatenate, ParamSpec, TypeVar

import lmdb

from hermesx.core.delta import StateDelta, shape_after
from hermesx.core.errors import MigrationError, StorageError
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import AtomState as State
from hermesx.core.snapshot import snapshot_shape
from hermesx.rpc.proto import hermesx_pb2 as pb
from storesite.chain import Link, Record
from storesite.chains import ChainMemory
from storesite.checkpoints import CheckpointWindow
from storesite.committer import GroupCommitter
from storesite.environment import DEFAULT_MAP_SIZE, StoreEnvironment
from storesite.logs import LogStore
from storesite.modules import ModuleStore
from storesite.moves import MoveRecords
from storesite.records import (
    UNSTATED,
    AtomState,
    AtomTable,
    Checkpoint,
    Provenance,
    StoreStatus,
    parse_state,
)

__all__ = ["DEFAULT_MAX_CHECKPOINT_BYTES", "AtomStore"]

log = logging.getLogger(__name__)

# Room for an atom at a node's 64 MiB memory cap plus its KV and its reply
# table (8 MiB), well under the wire's 256 MiB message limit.
DEFAULT_MAX_CHECKPOINT_BYTES = 192 * 2**20


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _submitted(
    write: Callable[Concatenate[AtomStore, str, _P], Callable[[lmdb.Transaction], _T]],
) -> Callable[Concatenate[AtomStore, str, _P], _T]:
    """A method that submits the write ``write`` makes and returns its result once durable."""

    def submit(store: AtomStore, guid: str, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return store.committer.submit(guid, write(store, guid, *args, **kwargs))

    return functools.wraps(write)(submit)


class AtomStore:
    """Durable records of the atoms homed at one storesite.

    The store in ``data_dir`` must exist, be whole and belong to storesite
    ``sid`` (see :class:`~storesite.environment.StoreEnvironment`; ``init``
    creates a missing one and sets a damaged one aside). ``modules`` holds
    module bytes by hash, ``moves`` the steps of moves.
    """

    def __init__(
        self,
        sid: str,
        data_dir: pathlib.Path,
        *,
        init: bool = False,
        max_checkpoint_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
        map_size: int = DEFAULT_MAP_SIZE,
    ) -> None:
        self.sid = sid
        self.data_dir = data_dir
        self.max_checkpoint_bytes = max_checkpoint_bytes
        self._env = StoreEnvironment(sid, data_dir, init=init, map_size=map_size)
        self._table = AtomTable(self._env, max_checkpoint_bytes)
        self._window = CheckpointWindow(self._table)
        self.modules = ModuleStore(self._env)
        self.logs = LogStore(self._env)
        # A home that moves away or back drops the chain kept for it (storesite.chains).
        self.moves = MoveRecords(self._table, self._window, lambda guid: self.chains.forget(guid))
        self.committer = GroupCommitter(self._env)
        self.deltas_written = 0
        # Chains kept in memory for their cuts (storesite.chains).
        self.chains = ChainMemory()

    def close(self) -> None:
        self.committer.close()
        self._env.close()

    def __enter__(self) -> AtomStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- atoms

    def register_atom(
        self, guid: str, meta: pb.AtomMeta, tad: TAD, snapshot: bytes, check: Provenance = UNSTATED
    ) -> AtomState:
        """Record a new atom homed here at ``tad`` with its first checkpoint.

        ``check.incarnation`` is that of ``tad.node`` holding it.
        """
        home = GUID.parse(guid).home
        if home != self.sid:
            raise StorageError(f"atom {guid} is homed at storesite {home}, not at {self.sid}")
        checksum = self._table.arriving(
            guid, snapshot, check, f"first checkpoint of atom {guid} from {tad}"
        )
        state = AtomState.first(guid, meta, tad, incarnation=check.incarnation)
        with self._table.write(guid) as txn:
            if self._table.exists(txn, guid) is not None:
                raise StorageError(f"atom {guid} is already registered at storesite {self.sid}")
            state = self._window.store(
                txn, state, tad, 0, snapshot, checksum, check.stored_generation
            )
        log.info("registered atom %s at %s", guid, tad)
        return state

    def get(self, guid: str) -> AtomState:
        """The record of ``guid`` (also for atoms whose home moved away)."""
        GUID.parse(guid)
        with self._env.env.begin() as txn:
            return self._table.find(txn, guid)

    def atoms(self) -> Iterator[AtomState]:
        """Every readable record, forwarded ones included, in GUID order.

        A damaged record is logged, naming its GUID, and left out.
        """
        records: list[AtomState] = []
        with self._env.env.begin(db=self._env.atoms) as txn:
            for key, value in txn.cursor():
                guid = bytes(key).decode(errors="replace")
                try:
                    records.append(parse_state(self.sid, guid, bytes(value)))
                except StorageError as exc:
                    log.error("%s", exc)
        yield from records

    def forget(self, guid: str) -> None:
        """Delete every record of ``guid`` (a create that failed half-way)."""
        with self._table.write(guid) as txn:
            self._window.delete_all(txn, guid)
            self._table.delete(txn, guid)
            self.logs.delete(txn, guid)
        self.chains.forget(guid)
        log.info("forgot atom %s", guid)

    def status(self) -> StoreStatus:
        env = self._env
        with env.env.begin() as txn:
            atoms = txn.stat(env.atoms)["entries"]
            modules = txn.stat(env.modules)["entries"]
            checkpoints = txn.stat(env.checkpoints)["entries"]
        return StoreStatus(
            atoms=atoms,
            modules=modules,
            checkpoints=checkpoints,
            checkpoints_written=self.committer.written,
            deltas_written=self.deltas_written,
            group_commits=self.committer.commits,
        )

    # ----------------------------------------------------------- checkpoints

    def put_checkpoint(
        self, guid: str, tad: TAD, seq: int, snapshot: bytes, check: Provenance = UNSTATED
    ) -> bool:
        """Store a checkpoint sent by the node running the atom.

        Returns False (and stores nothing) when an equal or newer checkpoint
        of that age is already stored: checkpoints may arrive out of order,
        and the newer one already holds everything the older one does.
        A checkpoint from an older location is refused: that node no longer
        holds the atom and must not overwrite the newer location's state.
        One that arrived damaged (its checksum does not match) is refused.
        A periodic checkpoint (``check.periodic``) promised nobody that its
        calls are durable: it leaves the atom's acknowledged generation as it was.
        """
        checksum = self._table.arriving(
            guid, snapshot, check, f"checkpoint of atom {guid} from {tad} seq {seq}"
        )
        return self.store_checkpoint(guid, tad, seq, snapshot, checksum, check)

    def checkpoint_write(
        self,
        guid: str,
        tad: TAD,
        seq: int,
        snapshot: bytes,
        checksum: int,
        check: Provenance,
        *,
        base_no: int | None = None,
        link: Link | None = None,
    ) -> Callable[[lmdb.Transaction], bool]:
        """The write of :meth:`put_checkpoint` of a snapshot already checked, for the next
        group commit (docs/DESIGN.md §6; :meth:`store_checkpoint` submits it); with
        ``base_no``, only while the latest checkpoint is still slot ``base_no`` (a delta's
        base). With ``link``,
        ``snapshot`` is a delta on that slot, stored as a delta record
        (storesite.chain) whose CRC-32 is ``checksum``."""

        def write(txn: lmdb.Transaction) -> bool:
            state = self.checkpoint_target(txn, guid, tad)
            if base_no is not None and state.checkpoint_no != base_no:
                raise StorageError(
                    f"checkpoint delta of atom {guid} from {tad} seq {seq}: its base is no "
                    "longer the latest checkpoint"
                )
            return self._window.put_newer(txn, state, check, tad, seq, snapshot, checksum, link)

        return write

    def delta_write(
        self,
        guid: str,
        tad: TAD,
        seq: int,
        data: bytes,
        delta: StateDelta,
        checksum: int,
        check: Provenance,
        base: tuple[int, int],
    ) -> Callable[[lmdb.Transaction], tuple[bool, int] | Record | str]:
        """The write of a delta record of ``data`` (decoded: ``delta``, CRC-32 ``checksum``)
        on the base ``(seq, name)`` of ``tad``'s age, for the next group commit
        (:meth:`store_delta` submits it), its base
        checked in that same transaction (one read of the atom's record, docs/DESIGN.md
        §6). Returns whether it was stored (False: not newer) and the latest checkpoint's
        name then; or, writing nothing, why the base was refused, or the base's record
        when its chain is due a whole snapshot (the caller composes one)."""

        def write(txn: lmdb.Transaction) -> tuple[bool, int] | Record | str:
            state = self.checkpoint_target(txn, guid, tad)
            base_record = self._window.delta_base(txn, state, tad, *base)
            if isinstance(base_record, str):
                return base_record
            link = base_record.link
            if link is not None and link.due_whole():
                return base_record
            shape = link.shape if link is not None else snapshot_shape(base_record.data)
            try:
                after = shape_after(shape, delta)
            except StorageError as exc:
                # The latest record's shape is not what the node's base was (its link,
                # which no CRC covers, is damaged): the whole state settles it.
                return f"it does not fit the latest checkpoint: {exc}"
            link = base_record.next_link(data, len(delta.chunks), after)
            if self._window.put_newer(txn, state, check, tad, seq, data, checksum, link):
                return True, link.name
            return False, base_record.name

        return write

    # The writes above, each submitted alone to the next group commit; the result once
    # durable. A caller with several submits them together (committer.submit_all).
    store_checkpoint = _submitted(checkpoint_write)
    store_delta = _submitted(delta_write)

    def arriving(self, guid: str, data: bytes, check: Provenance, what: str) -> int:
        """The checksum of state bytes that arrive: refused when too big or damaged."""
        return self._table.arriving(guid, data, check, what)

    def check_size(self, guid: str, snapshot: bytes) -> None:
        self._table.check_size(guid, snapshot)

    def composed(self, guid: str, number: int) -> State:
        """The state checkpoint ``number`` of ``guid`` holds (CheckpointDamagedError if
        its chain is damaged)."""
        with self._env.env.begin() as txn:
            return self._window.state(txn, guid, number)[1]

    def checkpoint_target(self, txn: lmdb.Transaction, guid: str, tad: TAD) -> AtomState:
        """The record a checkpoint from ``tad`` may be written to: refused (MigrationError)
        unless ``tad`` is the atom's location and no move is pending."""
        state = self._table.current(txn, guid, tad, "checkpoint")
        if state.pending is not None:
            raise MigrationError(
                f"checkpoint of atom {guid} from {tad} refused: it is moving to "
                f"{state.pending.node}"
            )
        return state

    def latest_checkpoint(self, guid: str) -> Checkpoint:
        """The checkpoint to restore ``guid`` from: the latest, checked.

        If the latest is damaged, the newest good one kept, when it holds
        every call acknowledged as durable; otherwise a StorageError naming
        the atom and the damage (see the module docstring).
        """
        with self._env.env.begin() as txn:
            return self._window.restorable(txn, self._table.find(txn, guid))

    def checkpoint_history(self, guid: str) -> list[Checkpoint]:
        """Kept checkpoints of ``guid``, oldest first, checked (a damaged one raises)."""
        state = self.get(guid)
        with self._env.env.begin() as txn:
            return self._window.history(txn, state)

    def passivated(
        self, guid: str, tad: TAD, snapshot: bytes, check: Provenance = UNSTATED
    ) -> AtomState:
        """The node at ``tad`` dropped the atom after a final checkpoint: it is dormant."""
        checksum = self._table.arriving(
            guid, snapshot, check, f"final checkpoint of atom {guid} from {tad}"
        )
        with self._table.write(guid) as txn:
            state = self._table.current(txn, guid, tad, "passivation")
            if state.pending is not None:
                raise MigrationError(
                    f"atom {guid} is moving to {state.pending.node}; it cannot be passivated"
                )
            seq = state.checkpoint_seq + 1 if state.checkpoint_age == tad.age else 1
            state = replace(state, dormant=True)
            state = self._window.store(
                txn, state, tad, seq, snapshot, checksum, check.stored_generation
            )
        log.info("atom %s is dormant (last at %s)", guid, tad)
        return state

    # ------------------------------------------------ activation and recovery

    def reserve_age(self, guid: str) -> tuple[int, Checkpoint]:
        """Hand out the next age for an activation or recovery attempt.

        Durable before the node is asked, so a failed attempt's age is never
        reused. The checkpoint is checked as in :meth:`latest_checkpoint`;
        when none can be restored nothing changes and a StorageError says why.
        """
        with self._table.write(guid) as txn:
            state = self._table.live(txn, guid)
            checkpoint = self._window.restorable(txn, state)
            age = state.next_age
            self._table.put(txn, replace(state, next_age=age + 1))
        return age, checkpoint

    def activated(self, guid: str, tad: TAD, incarnation: str = "") -> AtomState:
        """The atom now runs at ``tad`` on node ``incarnation`` (after activation or recovery).

        Any pending move is gone.
        """
        with self._table.write(guid) as txn:
            state = self._table.live(txn, guid)
            if tad.age < state.location.age:
                raise MigrationError(
                    f"activation of atom {guid} at {tad} is older than its location "
                    f"{state.location}"
                )
            state = replace(
                state, location=tad, dormant=False, pending=None, incarnation=incarnation
            )
            self._table.put(txn, state)
        return state

    def set_incarnation(self, guid: str, tad: TAD, incarnation: str) -> AtomState:
        """Record which incarnation of ``tad.node`` holds the atom (a reconciled old record)."""
        with self._table.write(guid) as txn:
            state = self._table.current(txn, guid, tad, "reconciliation")
            state = replace(state, incarnation=incarnation)
            self._table.put(txn, state)
        return state

    def mark_dormant(self, guid: str) -> AtomState:
        """No node could take the atom: it waits, checkpointed, for the next Locate."""
        with self._table.write(guid) as txn:
            state = replace(self._table.live(txn, guid), dormant=True, pending=None)
            self._table.put(txn, state)
        return state
