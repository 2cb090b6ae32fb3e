"""A call for an atom on its way to this node waits for it (docs/DESIGN.md §4 step 4)."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from hermesx.core.errors import CallTimeoutError, UnreachableError
from hermesx.core.identity import TAD
from hermesx.node import arrivals
from hermesx.node.arrivals import Arrivals
from hermesx.node.catalog import ActiveAtom, Catalog, StagedCopy
from hermesx.routing.stash import Stash
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.runtime.atom import Atom

GUID = "s1:00000000000000000000000000000001"


class _FakeAtom:
    def close(self) -> None:
        pass


def _setup(resolve: Any = None) -> tuple[Arrivals, Catalog, Stash]:
    stash = Stash()
    catalog = Catalog("n2", stash)
    return Arrivals("n2", catalog, stash, resolve or (lambda _g: False)), catalog, stash


def _stage(catalog: Catalog, tad: TAD) -> None:
    catalog.staged[GUID] = StagedCopy(tad, pb.AtomMeta(), cast(Atom, _FakeAtom()))


def _arrive(catalog: Catalog, tad: TAD) -> ActiveAtom:
    active = ActiveAtom(GUID, cast(Atom, _FakeAtom()), pb.AtomMeta(), tad)
    catalog.staged.pop(GUID, None)
    catalog.atoms[GUID] = active
    catalog.changed()
    return active


def test_a_staged_copy_or_the_tad_sent_along_newer_than_the_stash_is_expected() -> None:
    waits, catalog, stash = _setup()
    stash.update(GUID, TAD("n1", 2))
    assert waits.expected(GUID, None, stash.get(GUID)) is None
    # Sent along an older TAD, or one naming another node: go on by the stash.
    assert waits.expected(GUID, TAD("n2", 1), stash.get(GUID)) is None
    assert waits.expected(GUID, TAD("n3", 5), stash.get(GUID)) is None
    assert waits.expected(GUID, TAD("n2", 3), stash.get(GUID)) == TAD("n2", 3)
    _stage(catalog, TAD("n2", 4))
    assert waits.expected(GUID, None, stash.get(GUID)) == TAD("n2", 4)
    assert waits.expected(GUID, TAD("n2", 3), stash.get(GUID)) == TAD("n2", 4)
    # The stash knows newer: the copy staged here is behind.
    stash.update(GUID, TAD("n3", 5))
    assert waits.expected(GUID, TAD("n2", 4), stash.get(GUID)) is None


def test_the_call_waits_until_the_staged_copy_serves() -> None:
    waits, catalog, stash = _setup()
    stash.update(GUID, TAD("n1", 2))
    _stage(catalog, TAD("n2", 3))
    came: list[object] = []
    waiter = threading.Thread(
        target=lambda: came.append(waits.wait(GUID, TAD("n2", 3), TAD("n2", 3), 10.0))
    )
    waiter.start()
    time.sleep(0.05)
    assert not came  # still waiting
    active = _arrive(catalog, TAD("n2", 3))
    waiter.join(5)
    assert came == [active]


def test_a_dropped_staged_copy_sends_the_call_on_by_the_stash() -> None:
    waits, catalog, stash = _setup()
    stash.update(GUID, TAD("n1", 2))
    _stage(catalog, TAD("n2", 3))
    threading.Timer(0.05, catalog.discard_staged, (GUID,)).start()
    assert waits.wait(GUID, TAD("n2", 3), None, 10.0) is None


def test_sent_here_with_no_copy_here_is_a_broken_chain_not_a_bounce() -> None:
    waits, _, stash = _setup()
    stash.update(GUID, TAD("n1", 2))
    started = time.monotonic()
    outcome = waits.wait(GUID, TAD("n2", 3), TAD("n2", 3), 10.0)
    assert isinstance(outcome, UnreachableError)
    assert "n2@3" in str(outcome)
    assert time.monotonic() - started < 5.0  # the grace, not the call's time


def test_the_wait_ends_at_the_calls_time_and_asks_the_storesite_once() -> None:
    asked: list[str] = []

    def resolve(guid: str) -> bool:
        asked.append(guid)
        return False  # the move has not committed yet

    waits, catalog, stash = _setup(resolve)
    stash.update(GUID, TAD("n1", 2))
    _stage(catalog, TAD("n2", 3))
    outcome = waits.wait(GUID, TAD("n2", 3), None, arrivals.ASK_STORESITE_AFTER_S + 0.2)
    assert isinstance(outcome, CallTimeoutError)
    assert asked == [GUID]


def test_the_storesite_saying_the_move_committed_makes_the_copy_serve() -> None:
    waits, catalog, stash = _setup()

    def resolve(_guid: str) -> bool:
        _arrive(catalog, TAD("n2", 3))
        return True

    waits._resolve_staged = resolve
    stash.update(GUID, TAD("n1", 2))
    _stage(catalog, TAD("n2", 3))
    outcome = waits.wait(GUID, TAD("n2", 3), None, 10.0)
    assert isinstance(outcome, ActiveAtom) and outcome.tad == TAD("n2", 3)


def test_the_atom_came_and_left_already_the_call_goes_on() -> None:
    waits, catalog, stash = _setup()
    stash.update(GUID, TAD("n1", 2))
    _stage(catalog, TAD("n2", 3))
    catalog.staged.pop(GUID)
    stash.update(GUID, TAD("n3", 4))
    assert waits.wait(GUID, TAD("n2", 3), TAD("n2", 3), 10.0) is None
