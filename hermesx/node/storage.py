"""The node's calls to its atoms' storesites, following an atom's home when it moved.

See docs/DESIGN.md §6.

Every write a node makes for an atom (checkpoints, passivation, the steps of a
move) and every module it fetches goes to the atom's *home* storesite through
a typed :class:`~hermesx.rpc.storesite_client.StoresiteClient`. A home can
move to another storesite meanwhile: the old one then refuses with
:class:`HomeMovedError`, and :meth:`AtomStoresites.call` looks up the new home
and makes the call again, building its request afresh (a large state is sent
as a stream of pieces, which one attempt consumes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from hermesx.core.errors import HermesError, HomeMovedError
from hermesx.core.identity import GUID, TAD
from hermesx.core.snapshot import snapshot_checksum
from hermesx.observe.atomlog import BOOK, LogLine, encode_lines
from hermesx.routing.invoker import Invoker
from hermesx.routing.naming import Member, Naming
from hermesx.rpc.node_client import call_address
from hermesx.rpc.storesite_batch import CALL_KINDS, CHECKPOINT_BATCH
from hermesx.rpc.storesite_client import CheckedSnapshot, DeltaAck, StoresiteClient

__all__ = ["AtomStoresites", "transfer_timeout"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def transfer_timeout(size: int) -> float:
    """Seconds to allow for sending a state of ``size`` bytes to a storesite: a
    64 MiB state (an atom at the default cap) written durably on a busy disk
    takes several seconds."""
    return 10.0 + size / (4 * 2**20)


class AtomStoresites:
    """Typed clients of the cluster's storesites, one per storesite, and the atoms' homes."""

    def __init__(self, naming: Naming, invoker: Invoker) -> None:
        self._naming = naming
        self._invoker = invoker
        self._channels = invoker.channels
        self._clients: dict[tuple[str, str, str | None, bool], StoresiteClient] = {}
        self._lock = threading.Lock()

    def client(self, sid: str, address: str, member: Member | None = None) -> StoresiteClient:
        """The client of storesite ``sid`` at ``address`` (kept for later calls), with the
        call channel its record (``member``, else read) advertises and whether that
        channel takes several checkpoints in one request (docs/DESIGN.md §4.1)."""
        if member is None:
            member = self._naming.storesites().get(sid)
        calls = call_address(member) if member is not None else None
        kinds = member.data.get(CALL_KINDS) if member is not None else None
        batch = isinstance(kinds, list) and CHECKPOINT_BATCH in kinds
        key = (sid, address, calls, batch)
        client = self._clients.get(key)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = StoresiteClient(
                    address, sid=sid, channels=self._channels, call=calls, batch=batch
                )
            return client

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def call(self, guid: str, call: Callable[[StoresiteClient], T], timeout: float = 10.0) -> T:
        """``call`` on the atom's home storesite, whose client has the time left as its
        timeout; made again at the new home when the home moved meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            # One read of the storesite's record per call (docs/PERFORMANCE.md "Durable calls").
            sid, member = self._invoker.storesite_member(guid)
            site = self.client(sid, member.address, member)
            site = site.with_timeout(max(deadline - time.monotonic(), 0.1))
            try:
                return call(site)
            except HomeMovedError:
                if not self._await_new_home(guid, sid, deadline):
                    raise
                log.info("atom %s: its home moved from storesite %s; following it", guid, sid)

    def _await_new_home(self, guid: str, old: str, deadline: float) -> bool:
        """Wait (bounded) until the name service names a home other than ``old``.

        The old home records the move in the name service before it refuses
        the atom's records, so the new home is there already; only our
        cached view may lag by a watch notification.
        """
        while True:
            home = self._naming.home(guid) or GUID.parse(guid).home
            if home != old:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    # ------------------------------------------------------------ typed calls

    def get_module(self, guid: str, module_hash: str) -> bytes:
        return self.call(guid, lambda site: site.get_module(module_hash))

    def put_checkpoint(
        self, guid: str, tad: TAD, snapshot: bytes, seq: int, *, generation: int, periodic: bool
    ) -> int:
        """A whole-state checkpoint; returns its checksum."""
        state = CheckedSnapshot(snapshot, snapshot_checksum(snapshot), generation)
        self.call(
            guid,
            lambda site: site.send_checkpoint(guid, tad, state, seq, periodic=periodic),
            transfer_timeout(len(snapshot)),
        )
        return state.checksum

    def put_delta(
        self,
        guid: str,
        tad: TAD,
        delta: bytes,
        seq: int,
        base: tuple[int, int],
        *,
        generation: int,
        periodic: bool,
    ) -> DeltaAck:
        """An incremental checkpoint on ``base`` = ``(seq, checksum)`` (docs/DESIGN.md §6)."""
        state = CheckedSnapshot(delta, snapshot_checksum(delta), generation)
        return self.call(
            guid,
            lambda site: site.send_delta(guid, tad, state, seq, base, periodic=periodic),
            transfer_timeout(len(delta)),
        )

    def passivated(self, guid: str, tad: TAD, snapshot: bytes, *, generation: int) -> None:
        state = CheckedSnapshot(snapshot, snapshot_checksum(snapshot), generation)
        self.call(
            guid,
            lambda site: site.send_passivated(guid, tad, state),
            transfer_timeout(len(snapshot)),
        )

    def prepare(self, guid: str, source: TAD, destination: str) -> int:
        return self.call(guid, lambda site: site.prepare(guid, source, destination))

    def stage(self, guid: str, tad: TAD, state: CheckedSnapshot) -> None:
        self.call(guid, lambda site: site.stage(guid, tad, state), 60.0)

    def commit(self, guid: str, tad: TAD, incarnation: str) -> None:
        self.call(guid, lambda site: site.commit(guid, tad, b"", incarnation=incarnation))

    def abort(self, guid: str, age: int, timeout: float) -> None:
        self.call(guid, lambda site: site.abort(guid, age), timeout)

    def location(self, guid: str, timeout: float) -> TAD:
        """Where the atom's storesite records it (it recovers one whose node is gone)."""
        return self.call(guid, lambda site: site.locate(guid, timeout=timeout), timeout).tad

    def ship_logs(self, guid: str, lines: list[LogLine] | None = None) -> None:
        """Send the atom's storesite the log lines it has not seen (docs/DESIGN.md §12).

        Best effort: lines the storesite did not take are sent with the next.
        """
        lines = BOOK.unshipped(guid) if lines is None else lines
        if not lines:
            return
        try:
            self.call(guid, lambda site: site.put_logs(guid, encode_lines(lines)))
        except HermesError as exc:
            log.warning("atom %s: log lines not kept at its storesite: %s", guid, exc)
            return
        BOOK.shipped(guid, lines)
