"""The serving lease: a node serves only shortly after a round trip proved its session."""

from __future__ import annotations

import threading
import time

from hermesx.node.lease import SessionLease


class FakeSession:
    def __init__(self) -> None:
        self.session: str | None = "s1"  # what the next round trip proves; None = no answer
        self.incarnation = "s1"
        self.trips = 0

    def round_trip(self, timeout: float) -> str | None:
        self.trips += 1
        return self.session


def _lease(fake: FakeSession, timeout: float = 0.3) -> SessionLease:
    return SessionLease(
        fake.round_trip, lambda: fake.incarnation, timeout, stopping=threading.Event()
    )


def test_a_round_trip_grants_two_thirds_of_the_session_timeout_then_it_runs_out() -> None:
    fake = FakeSession()
    lease = _lease(fake)
    assert lease.renew(1.0)
    assert 0.15 < lease.remaining() <= 0.2
    fake.session = None  # the server stops answering (paused, partitioned)
    time.sleep(0.25)  # past the lease
    assert not lease.valid()
    assert fake.trips == 2  # it tried one renewal before refusing


def test_an_expired_lease_is_renewed_at_once_when_the_session_answers() -> None:
    fake = FakeSession()
    lease = _lease(fake)
    assert lease.valid()  # never renewed yet: the check itself makes a round trip
    assert fake.trips == 1


def test_a_round_trip_on_another_session_renews_nothing() -> None:
    fake = FakeSession()
    lease = _lease(fake)
    fake.session = "s2"  # kazoo made a new session after the old one expired
    assert not lease.valid()
    fake.incarnation = ""  # the node learnt its session was lost
    fake.session = "s1"
    assert not lease.valid()
