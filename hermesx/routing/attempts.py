"""The attempts of one call and how each ends (docs/DESIGN.md §4).

:class:`Attempts` is the part of the :class:`~hermesx.routing.invoker.Invoker`
that decides where each attempt of a call enters (the stash's TAD, ``--via``,
or the storesite once the chain broke), what a reply teaches (the newest
TAD; MOVED goes on along the chain, a retryable error from the storesite),
and retries a broken chain within the call's attempts and deadline.
:class:`Call` is what one call carries from attempt to attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential

from hermesx.core.errors import (
    CallTimeoutError,
    CheckpointDamagedError,
    HermesError,
    NameNotFoundError,
    NotAuthorizedError,
    UnreachableError,
    error_from_wire,
)
from hermesx.core.identity import TAD
from hermesx.core.types import Hop
from hermesx.routing.peers import Peers, StoresiteAbsentError
from hermesx.rpc.convert import tad_from_pb

__all__ = ["RETRYABLE_KINDS", "Attempts", "Broken", "Call"]

T = TypeVar("T")

# Error kinds a node answers with when it cannot serve the atom but another
# place may: the caller then asks the storesite and tries again.
RETRYABLE_KINDS = frozenset({"unreachable", "timeout"})
# How long a call waits for an absent storesite to come back (a restart).
STORESITE_GRACE_S = 5.0


class Broken(Exception):
    """This attempt hit a broken chain; the next one starts from the storesite."""


class Call:
    """One call, from attempt to attempt (a plain class: one is made per call, and a
    dataclass's ``__init__`` with a default factory costs more)."""

    __slots__ = (
        "deadline",
        "guid",
        "last_error",
        "need_locate",
        "sends",
        "storesite_absent_since",
        "tad",
        "trace",
        "tried",
        "via",
        "want_trace",
    )

    def __init__(
        self,
        guid: str,
        deadline: float,
        tad: TAD | None,
        via: str | None,
        trace: list[Hop],
        want_trace: bool,
    ) -> None:
        self.guid, self.deadline, self.tad, self.via = guid, deadline, tad, via
        self.trace, self.want_trace = trace, want_trace
        self.last_error = ""
        self.tried: list[TAD] = []
        self.need_locate = False
        self.storesite_absent_since: float | None = None
        self.sends = 0  # transmissions of the request

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, node: str, event: str, detail: str = "", tad: TAD | None = None) -> None:
        if self.want_trace:
            self.trace.append(Hop(node, event, tad, detail))


class Attempts(Peers):
    """Where a call's attempts enter, what their replies teach, and the retries."""

    self_node: str | None
    attempts: int

    def _settle(self, call: Call, node: str, reply: Any) -> TAD | None:
        """Learn the newest TAD from a reply (returned); MOVED and retryable errors go on
        from elsewhere."""
        newest = call.tried[0] if call.tried else None
        sent = reply.tad
        # The common reply repeats the TAD the call's first attempt went to (the stash's,
        # or the storesite's, which the stash took): no new TAD, no stash write. After a
        # MOVED the reply's TAD is news for the stash even when it is the one the call
        # went to last.
        if newest is None or sent.age != newest.age or sent.node != newest.node:
            newest = tad_from_pb(sent)
            if newest is not None:
                self.stash.update(call.guid, newest)
        which = reply.WhichOneof("outcome")
        if which is None:
            return newest
        if which == "moved":
            self._follow_moved(call, tad_from_pb(reply.moved), node)
            raise Broken()
        if which == "error":
            err = error_from_wire(reply.error.kind, reply.error.message)
            if reply.error.kind in RETRYABLE_KINDS:
                self.forget_route(node)  # perhaps another node at its old address
                self._broken(call, node, str(err))
            raise err
        return newest

    # ------------------------------------------------------------ routing

    def _entry_node(self, call: Call) -> str:
        if call.via is not None:
            node, call.via = call.via, None
            if node != self.self_node and node not in self.naming.nodes():
                raise NameNotFoundError(
                    f"node {node!r} (--via) is not a live member of the cluster"
                )
            call.note(node, "enter", "via")
            return node
        if call.need_locate or call.tad is None:
            call.need_locate = False
            try:
                call.tad = self.locate(call.guid, timeout=max(min(call.remaining(), 10.0), 0.01))
            except (NameNotFoundError, NotAuthorizedError, CheckpointDamagedError):
                raise  # no retry mends these: the atom is not there, damaged, or we may not ask
            except StoresiteAbsentError as exc:
                # A storesite may be restarting; one that stays away is not coming.
                if call.storesite_absent_since is None:
                    call.storesite_absent_since = time.monotonic()
                elif time.monotonic() - call.storesite_absent_since > STORESITE_GRACE_S:
                    raise
                call.last_error = str(exc)
                raise Broken() from exc
            except HermesError as exc:
                call.last_error = str(exc)
                call.note("storesite", "storesite", f"locate failed: {exc}")
                raise Broken() from exc
            call.note("storesite", "storesite", f"located at {call.tad}", call.tad)
        call.tried.append(call.tad)
        return call.tad.node

    def _follow_moved(self, call: Call, moved: TAD | None, node: str) -> None:
        call.note(node, "moved", f"retry from {moved}", moved)
        if moved is None or (call.tad is not None and moved.age <= call.tad.age):
            # No progress along the chain: the storesite knows better.
            call.need_locate = True
            call.last_error = f"forwarding from {node} made no progress"
            return
        call.tad = moved

    def _broken(self, call: Call, node: str, why: str) -> NoReturn:
        call.last_error = why
        call.need_locate = True
        call.note(node, "broken", why)
        raise Broken()

    def _retrying(
        self,
        call: Call,
        attempt: Callable[[], T],
        target: str,
        *,
        first: Callable[[], T] | None = None,
    ) -> T:
        """Run ``attempt`` (or ``first`` the first time) until one is not broken."""
        try:
            # The common case, without the retry machinery's cost.
            return attempt() if first is None else first()
        except Broken:
            pass
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(max(call.remaining(), 0.0)),
            wait=wait_exponential(multiplier=0.02, max=0.5),
            retry=retry_if_exception_type(Broken),
            reraise=True,
        )
        try:
            for trying in retrying:
                with trying:
                    return attempt()
        except Broken:
            pass
        last = call.tried[-1] if call.tried else None
        reason = f": {call.last_error}" if call.last_error else ""
        if call.remaining() <= 0:
            raise CallTimeoutError(
                f"atom {target} ({call.guid}): no reply within the call deadline; "
                f"last TAD tried {last}{reason}"
            )
        raise UnreachableError(
            f"atom {target} ({call.guid}): unreachable; last TAD tried {last}{reason}"
        )
