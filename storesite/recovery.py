"""Recovery: atoms of a node incarnation that ended start again elsewhere (docs/DESIGN.md §6).

When a node leaves the name service (its session expired — supervisors
fence themselves) or comes back as another incarnation, every non-dormant
atom recorded on the old incarnation is restarted from its latest
checkpoint on a live node with a higher age, in parallel on a bounded pool.
At start every record is checked against the live incarnations, since
nodes may have died or restarted while this storesite was down. An atom
whose incarnation is alive is never recovered; one whose holder cannot be
told now is looked at again every :data:`RECHECK_S`.

Only the atom's home recovers it: the storesite the name service names
(by default the GUID's). A record left here by a home move that stopped
half way — an adoption the mover never recorded, or an old home that died
before it forwarded — is not recovered, so it never makes a second copy;
while the home may still be moving here (:data:`HOME_SETTLE_S`) it is
looked at again, so an atom whose node died before its home flipped is
recovered by its new home (docs/DESIGN.md §6 "Moving home").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from hermesx.core.errors import HermesError, NameNotFoundError
from hermesx.core.identity import TAD
from hermesx.observe import metrics
from storesite.activation import Activator
from storesite.directory import Directory
from storesite.locks import AtomLocks
from storesite.placement import Member
from storesite.records import AtomState
from storesite.store import AtomStore

__all__ = ["HOME_SETTLE_S", "RECHECK_S", "Recovery", "gone"]

log = logging.getLogger(__name__)

# Seconds between looks at atoms whose holder could not be told.
RECHECK_S = 2.0

# Seconds an atom whose home is another storesite is still looked at here: a
# home move adopts here and then names this storesite (its adopt waits up to
# 30 s); after that, the next Locate here recovers it.
HOME_SETTLE_S = 120.0


class Recovery:
    """Watches membership and recovers the atoms of ended node incarnations."""

    def __init__(
        self,
        store: AtomStore,
        directory: Directory,
        locks: AtomLocks,
        activator: Activator,
        *,
        workers: int = 8,
    ) -> None:
        self.store = store
        self.directory = directory
        self._locks = locks
        self._activator = activator
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="recovery")
        self._members_guard = threading.Lock()
        # Node name -> (address, incarnation) as of the last membership change;
        # None before the first.
        self._members: dict[str, tuple[str, str]] | None = None
        # Atoms whose holder could not be told (ZooKeeper or the node did not
        # answer), or whose home is not settled here: looked at again every
        # RECHECK_S, with when the home was first found elsewhere.
        self._rechecks: dict[str, tuple[TAD, float | None]] = {}
        self._rechecker: threading.Thread | None = None
        self._closed = False

    @property
    def sid(self) -> str:
        return self.store.sid

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    def on_nodes(self, members: Mapping[str, Member]) -> None:
        """Name-service watch callback: the full set of live nodes after a change."""
        current = {name: (m.address, m.incarnation) for name, m in members.items()}
        with self._members_guard:
            previous = self._members
            self._members = current
        if self._closed:
            return
        if previous is None:
            # At start every record is checked against the live incarnations:
            # nodes may have died or restarted while this storesite was down.
            gone: set[str] | None = None
        else:
            gone = {
                name
                for name, listed in previous.items()
                if current.get(name) != listed  # left, or a new incarnation
            }
            if not gone:
                return
            log.warning(
                "nodes gone: %s",
                ", ".join(f"{n} (incarnation {previous[n][1] or '?'})" for n in sorted(gone)),
            )
        self.submit(self._recover_nodes, gone, current)

    def submit(self, task: Callable[..., None], *args: object) -> None:
        try:
            self._pool.submit(task, *args)
        except RuntimeError:
            # Shut down meanwhile: the next start recovers what is left.
            log.debug("storesite %s is closing; recovery task dropped", self.sid)

    def _recover_nodes(self, gone: set[str] | None, live: Mapping[str, tuple[str, str]]) -> None:
        """Look at every atom a gone incarnation may have held (every atom if ``gone`` is None)."""
        suspects = []
        for state in self.store.atoms():
            if state.forwarded_to or state.dormant:
                continue
            node = state.location.node
            if gone is not None and node not in gone:
                continue
            listed = live.get(node)
            if listed is not None and state.incarnation and listed[1] == state.incarnation:
                continue  # held by the incarnation listed now
            suspects.append(state)
        for state in suspects:
            if self._closed:
                return
            self.submit(self._recover_one, state.guid, state.location)

    def _recover_one(self, guid: str, dead: TAD, elsewhere_since: float | None = None) -> None:
        started = time.monotonic()
        with self._locks.hold(guid):
            try:
                state = self.store.get(guid)
            except NameNotFoundError:
                return
            if state.forwarded_to or state.dormant or state.location != dead:
                return  # moved, passivated or already recovered meanwhile
            try:
                if self._activator.holder(state) is not None:
                    return
            except HermesError as err:
                log.warning(
                    "atom %s: cannot tell whether node %s still holds it (%s); looking again",
                    guid,
                    dead.node,
                    err,
                )
                self._look_again(guid, dead, elsewhere_since)
                return
            if not self._is_home(guid, dead, elsewhere_since):
                return
            try:
                placed = self._activator.place(state, gone(state))
            except HermesError as err:
                log.warning("atom %s stays dormant after losing node %s: %s", guid, dead.node, err)
                metrics.RECOVERIES.labels("failed").inc()
                return
            self.look_again_if_gone(placed)
        metrics.RECOVERIES.labels("ok").inc()
        log.info(
            "recovered atom %s from %s onto %s in %.1f ms",
            guid,
            dead,
            placed.location,
            (time.monotonic() - started) * 1000,
        )

    def _is_home(self, guid: str, dead: TAD, elsewhere_since: float | None) -> bool:
        """Whether this storesite is ``guid``'s home; if not, look again while it may become it."""
        try:
            home = self.directory.home(guid)
        except HermesError as err:
            log.warning("atom %s: cannot read its home (%s); looking again", guid, err)
            self._look_again(guid, dead, elsewhere_since)
            return False
        if home == self.sid:
            return True
        now = time.monotonic()
        if elsewhere_since is None:
            log.warning(
                "atom %s: not recovered here, its home is storesite %s (a home move that "
                "stopped half way left this record)",
                guid,
                home,
            )
            elsewhere_since = now
        if now - elsewhere_since < HOME_SETTLE_S:
            self._look_again(guid, dead, elsewhere_since)
        return False

    def look_again_if_gone(self, state: AtomState) -> None:
        """After recording a holder: if its incarnation is not (or no longer) listed, look again.

        A membership change handled while the record was being written may
        have missed it; the recorded incarnation's end must not go unseen.
        """
        try:
            member = self.directory.nodes().get(state.location.node)
        except HermesError:
            member = None
        if member is None or member.incarnation != state.incarnation:
            self.submit(self._recover_one, state.guid, state.location)

    def _look_again(self, guid: str, tad: TAD, elsewhere_since: float | None = None) -> None:
        with self._members_guard:
            self._rechecks[guid] = (tad, elsewhere_since)
            if self._rechecker is None:
                self._rechecker = threading.Thread(
                    target=self._run_rechecks, name="recheck", daemon=True
                )
                self._rechecker.start()

    def _run_rechecks(self) -> None:
        while not self._closed:
            time.sleep(RECHECK_S)
            with self._members_guard:
                due, self._rechecks = self._rechecks, {}
            for guid, (tad, elsewhere_since) in due.items():
                self.submit(self._recover_one, guid, tad, elsewhere_since)


def gone(state: AtomState) -> str:
    """Why the atom's recorded holder no longer serves, for logs and errors."""
    node = state.location.node
    if state.incarnation:
        return f"incarnation {state.incarnation} of node {node} is gone"
    return f"node {node} does not hold it"
