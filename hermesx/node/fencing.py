"""Fencing: when a node may serve, and giving up when it cannot (docs/DESIGN.md §5, §6 "Fencing").

A node that may have been declared dead must not serve, or two copies of an
atom could run. :class:`Fencing` holds the node's registration in the name
service — its *incarnation*, named whenever the node takes an atom — and
stops serving while the session is in doubt: at once when the connection is
suspended, dropping every atom when the session is lost, and whenever the
:class:`~hermesx.node.lease.SessionLease` on the session ran out. A
:class:`~hermesx.node.liveness.ServeWatchdog` asks the node's own server for
its Status; a node that cannot answer gives up its session, so its atoms are
recovered elsewhere.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent import futures

from hermesx.core.errors import HermesError, NameTakenError, UnreachableError
from hermesx.node.catalog import Catalog
from hermesx.node.config import NodeConfig
from hermesx.node.lease import SessionLease
from hermesx.node.liveness import ServeWatchdog
from hermesx.observe import metrics
from hermesx.routing.naming import Naming
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.ranking import DRAINING
from hermesx.rpc.status import pb_error

__all__ = ["Fencing"]

log = logging.getLogger(__name__)


class Fencing:
    """The node's session in the name service and whether it may serve now."""

    def __init__(
        self,
        config: NodeConfig,
        naming: Naming,
        catalog: Catalog,
        *,
        stopping: threading.Event,
        background: futures.Executor,
        invocations: Callable[[], int],
        stop: Callable[[], None],
    ) -> None:
        self._config = config
        self._name = config.name
        self._naming = naming
        self._catalog = catalog
        self._stopping = stopping
        self._background = background
        self._invocations = invocations
        self._stop = stop
        # This registration's incarnation; "" while not registered (starting,
        # or after a lost session until we register again).
        self.incarnation = ""
        # Set while we may serve: our name-service session is not in doubt.
        self._serving = threading.Event()
        self._serving.set()
        # Serving also needs a recent answered name-service round trip: a node
        # resumed after a pause past its session timeout must not serve.
        self._lease = SessionLease(
            naming.round_trip,
            # (Read on every call served: a partial of getattr is no Python frame.)
            functools.partial(getattr, self, "incarnation"),
            config.session_timeout,
            stopping=stopping,
        )
        self._address = ""
        self._record: dict[str, str] = {}
        # Why the node stopped serving on its own, if it did (see give_up_session).
        self.gave_up: str | None = None
        # Out of service: registered so, placement skips it (docs/DESIGN.md §5 "Drain").
        self.draining = False

    def start(
        self, address: str, probe: Callable[[float], None], record: dict[str, str] | None = None
    ) -> None:
        """Register at ``address`` (with ``record``'s fields), hold the lease, and watch that
        ``probe`` (our own Status) answers; a node stuck past the limit gives up its session
        and stops."""
        self._address = address
        self._record = dict(record or {})
        self._naming.add_state_listener(self._on_session_state)
        self._register()
        self._lease.start()
        limit = self._config.unresponsive_limit_s or max(10.0, 3 * self._config.session_timeout)
        self._watchdog = ServeWatchdog(probe, limit, self.give_up_session, stopping=self._stopping)
        self._watchdog.start()

    # ------------------------------------------------------------ may we serve

    @property
    def fenced(self) -> bool:
        """True while we must not serve: the session is in doubt or our lease on it ran out."""
        return not self._serving.is_set() or not self._lease.valid()

    def serving(self) -> bool:
        """:meth:`may_serve` without its warning or its renewal: True while the session
        is not in doubt and our lease holds (a caller that finds False asks
        :meth:`may_serve`, which tries a renewal and says what it refused)."""
        return self._serving.is_set() and self._lease.remaining() > 0

    def may_serve(self, what: str) -> bool:
        """Whether ``what`` may run now: the session is not in doubt and our lease holds."""
        return self._serving.is_set() and self.lease_held(what)

    def lease_held(self, what: str) -> bool:
        if self._lease.valid():
            return True
        log.warning(
            "node %s: serving lease ran out (no name-service round trip answered lately); "
            "refused %s",
            self._name,
            what,
        )
        return False

    def check_lease(self, what: str) -> None:
        """Before an atom starts serving here: raise unless our lease on the session holds."""
        if not self.lease_held(what):
            raise UnreachableError(
                f"node {self._name} is fenced (its name-service session may have expired); {what}"
            )

    def unavailable(self) -> pb.Error:
        """The error a call gets while we are fenced."""
        return pb_error(
            UnreachableError(f"node {self._name} is fenced (its name-service session is in doubt)")
        )

    def taking_incarnation(self, what: str) -> str:
        """Our incarnation, to name when taking an atom; refuses while we are not registered."""
        # A suspension usually ends within a ZooKeeper failover: wait for it, briefly.
        if not self._serving.wait(self._config.session_timeout):
            raise UnreachableError(f"node {self._name} is fenced; {what}")
        incarnation = self.incarnation
        if not incarnation:
            raise UnreachableError(f"node {self._name} is not registered yet; {what}")
        return incarnation

    def still_incarnation(self, incarnation: str, what: str) -> None:
        """After taking an atom: our session must not have been lost meanwhile."""
        if self.incarnation != incarnation:
            raise UnreachableError(
                f"node {self._name} lost its name-service session "
                f"(incarnation {incarnation}); {what}"
            )

    # ------------------------------------------------------------ the session

    def _register(self) -> None:
        # A restarted node finds its previous registration alive until that
        # session expires (the old process may have been killed): wait it out.
        deadline = time.monotonic() + 2 * self._config.session_timeout + 5.0
        while True:
            try:
                data: dict[str, object] = {"pid": os.getpid()}
                if self.draining:
                    data[DRAINING] = True
                incarnation = self._naming.register_node(
                    self._name,
                    self._address,
                    self._config.tags,
                    {**data, **metrics.registration(), **self._record},
                )
                if incarnation != self.incarnation:
                    log.info("node %s registered as incarnation %s", self._name, incarnation)
                self.incarnation = incarnation
                return
            except NameTakenError:
                if time.monotonic() > deadline or self._stopping.is_set():
                    raise
                log.info("node %s: waiting for the previous registration to expire", self._name)
                time.sleep(0.25)

    def set_draining(self) -> None:
        """Take the node out of service: its registration says so, and stays so."""
        if self.draining:
            return
        self.draining = True
        # Our own session's entry: the name service updates its data in place.
        self._register()
        log.info("node %s is draining: it takes no new atoms", self._name)

    def _reregister(self) -> None:
        try:
            if not self.incarnation or self._name not in self._naming.nodes():
                self._register()
        except HermesError as exc:
            log.warning("node %s: could not register again: %s", self._name, exc)

    def _on_session_state(self, state: str) -> None:
        if state == "suspended":
            # We may be partitioned: stop serving now. Our atoms are dropped
            # only when the session is reported lost: without a quorum no
            # session expires, and then nobody recovers them elsewhere.
            self._serving.clear()
            log.warning("node %s: name-service connection suspended; not serving", self._name)
        elif state == "lost":
            # Atoms taken from now on would be recorded at a dead incarnation.
            self.incarnation = ""
            self._fence_drop("name-service session lost")
        elif state == "connected":
            if not self._serving.is_set():
                log.info("node %s: name-service session back; serving again", self._name)
            self._serving.set()
            self._background.submit(self._reregister)

    def give_up_session(self, why: str) -> None:
        """We cannot serve: let the cluster declare us dead so our atoms are recovered elsewhere.

        Holding the session would keep every atom here unreachable, and no
        storesite recovers an atom from a node whose session is alive.
        """
        log.error(
            "node %s gives up its name-service session and stops: %s "
            "(%d invocations in atoms, %d workers)",
            self._name,
            why,
            self._invocations(),
            self._config.workers,
        )
        self.gave_up = why
        self._fence_drop(why)
        self._stop()

    def _fence_drop(self, why: str) -> None:
        self._serving.clear()
        metrics.FENCES.inc()
        dropped = self._catalog.drop_all()
        if dropped:
            log.warning("node %s fenced (%s): dropped %d atoms", self._name, why, dropped)
