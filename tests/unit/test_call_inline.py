"""Requests run on their connection's own thread (docs/DESIGN.md §4.1).

A kind registered ``inline`` runs on the thread that read it when no other
request of its connection does: no hand-off to a worker. What a caller
would notice if that went wrong: a slow call holding up the quick calls
that other threads send on the same connection, a call lost when another
thread takes over the reading, or a handler's error ending the connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from hermesx.core.errors import ConfigurationError
from hermesx.rpc.callclient import CallConnection, CallPool
from hermesx.rpc.callserver import (
    WATCH_LINGER_S,
    Call,
    CallServer,
    WorkerPool,
    _SlowWatch,
    yield_reader,
)
from hermesx.rpc.link import Link
from hermesx.testing.wait import wait_until


@pytest.fixture
def address() -> Iterator[str]:
    served = CallServer("inline server", workers=4, tls=None)

    def echo(call: Call) -> bytes:
        how, _, text = call.body.partition(b":")
        if how == b"fail":
            raise ConfigurationError("refused by the handler")
        if how.startswith(b"yield"):
            yield_reader()
            how = how[len(b"yield") :]
        if how.startswith(b"shared"):
            yield_reader(shared_only=True)
            how = how[len(b"shared") :]
        time.sleep(float(how))
        return text + threading.current_thread().name.encode()

    served.register("echo", echo, "Supervisor/Invoke", inline=True)
    yield served.start("127.0.0.1:0")
    served.stop()


@pytest.fixture
def rescues(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every second reader a CallServer starts for a request run inline."""
    started: list[object] = []
    rescue = CallServer.rescue

    def counted(self: CallServer, connection: object) -> None:
        started.append(connection)
        rescue(self, connection)  # type: ignore[arg-type]

    monkeypatch.setattr(CallServer, "rescue", counted)
    return started


def _slow_call_beside_quick_ones(address: str, slow: bytes) -> tuple[bytes, list[float]]:
    pool = CallPool()
    connection = pool.connection(address)
    try:
        assert connection.call("echo", b"0:warm ", 5.0).startswith(b"warm call-link")
        outcome: dict[str, bytes] = {}
        thread = threading.Thread(
            target=lambda: outcome.setdefault("slow", connection.call("echo", slow, 10.0))
        )
        thread.start()
        time.sleep(0.2)  # the slow call runs on the connection's own thread now
        took = []
        for _ in range(5):
            started = time.monotonic()
            assert connection.call("echo", b"0:quick ", 5.0).startswith(b"quick ")
            took.append(time.monotonic() - started)
        thread.join(10.0)
        return outcome["slow"], took
    finally:
        pool.close()


def test_a_quick_call_is_served_on_the_connections_own_thread(address: str) -> None:
    pool = CallPool()
    try:
        reply = pool.connection(address).call("echo", b"0:hello ", 5.0)
    finally:
        pool.close()
    assert reply.startswith(b"hello call-link")


def test_a_slow_call_does_not_hold_up_the_quick_calls_behind_it(address: str) -> None:
    slow, took = _slow_call_beside_quick_ones(address, b"2.0:slow ")
    assert slow.startswith(b"slow call-link")
    # The quick calls ran beside it, not after it (2 s).
    assert max(took) < 1.5, took


def test_a_handler_that_says_it_will_wait_lets_the_quick_calls_pass(address: str) -> None:
    slow, took = _slow_call_beside_quick_ones(address, b"yield2.0:slow ")
    assert slow.startswith(b"slow ")
    assert max(took) < 1.5, took


def test_a_handler_waiting_only_on_a_shared_connection_lets_the_quick_calls_pass(
    address: str,
) -> None:
    # Alone on its connection it has no second reader; the quick calls sent beside it
    # still pass (the watch of slow requests reads for it), not after its 2 s.
    slow, took = _slow_call_beside_quick_ones(address, b"shared2.0:slow ")
    assert slow.startswith(b"slow call-link")
    assert max(took) < 1.5, took


def test_a_lone_caller_gets_no_second_reader_a_shared_connection_does(
    address: str, rescues: list[object]
) -> None:
    pool = CallPool()
    connection = pool.connection(address)
    try:
        for i in range(20):  # one at a time: nothing else to read while each waits
            assert connection.call("echo", f"shared0:{i} ".encode(), 5.0).startswith(
                f"{i} call-link".encode()
            )
        assert rescues == []
        # Two threads at once: the connection is found shared, and its waits get a reader.
        threads = [
            threading.Thread(
                target=lambda: [connection.call("echo", b"shared0.005:x ", 5.0) for _ in range(20)]
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30.0)
        assert rescues
    finally:
        pool.close()


def test_many_threads_on_one_connection_all_get_their_own_replies(address: str) -> None:
    pool = CallPool()
    try:
        wrong = _echo_from_threads(
            pool.connection(address), 8, 50, lambda i, j: "0.002" if j % 10 == 0 else "0"
        )
    finally:
        pool.close()
    assert wrong == []


def _echo_from_threads(
    connection: CallConnection,
    threads: int,
    calls: int,
    how: Callable[[int, int], str],
    pause_every: int = 0,
) -> list[object]:
    """``calls`` echo calls from each of ``threads`` threads on ``connection`` (call j of
    thread i asks the handler for ``how(i, j)``); the errors and the wrong replies."""
    wrong: list[object] = []

    def caller(i: int) -> None:
        for j in range(calls):
            try:
                reply = connection.call("echo", f"{how(i, j)}:{i}.{j} ".encode(), 10.0)
            except Exception as exc:
                wrong.append(exc)
                continue
            if not reply.startswith(f"{i}.{j} ".encode()):
                wrong.append(reply)
            if pause_every and j % pause_every == 0:
                time.sleep(0.06)  # past SHARED_S: a lone caller again for a while

    started = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(60.0)
    return wrong


def test_a_handlers_error_answers_its_call_and_the_connection_goes_on(address: str) -> None:
    pool = CallPool()
    connection = pool.connection(address)
    try:
        with pytest.raises(ConfigurationError, match="refused by the handler"):
            connection.call("echo", b"fail:x", 5.0)
        assert connection.call("echo", b"0:after ", 5.0).startswith(b"after ")
    finally:
        pool.close()


def test_an_idle_callers_connection_notices_the_listener_closing_it() -> None:
    served = CallServer("closing server", workers=2, tls=None)
    served.register("echo", lambda call: call.body, "Supervisor/Invoke", inline=True)
    address = served.start("127.0.0.1:0")
    pool = CallPool()
    try:
        connection = pool.connection(address)
        assert connection.call("echo", b"one", 5.0) == b"one"
        served.stop()
        # Nobody calls: the connection's own thread reads it and sees it end.
        wait_until(lambda: connection.closed is not None, 10.0, "the connection to close")
    finally:
        pool.close()
        served.stop()


def test_calls_after_a_pause_take_the_reading_back_from_the_idle_connection(
    address: str,
) -> None:
    pool = CallPool()
    connection = pool.connection(address)
    try:
        for i in range(3):
            assert connection.call("echo", f"0:{i} ".encode(), 5.0).startswith(f"{i} ".encode())
            time.sleep(1.2)  # past IDLE_READ_S: the connection's thread reads it meanwhile
    finally:
        pool.close()


def test_a_request_run_inline_takes_a_workers_place() -> None:
    # With every place taken by a stuck call, the pool's own tasks (a node's Status
    # over gRPC) wait too: the node's watchdog sees a node whose calls are all stuck.
    pool = WorkerPool(1, thread_name_prefix="test-worker")
    served = CallServer("one-worker server", workers=pool, tls=None)
    release = threading.Event()

    def stuck(call: Call) -> bytes:
        release.wait(10.0)
        return threading.current_thread().name.encode()

    served.register("stuck", stuck, "Supervisor/Invoke", inline=True)
    address = served.start("127.0.0.1:0")
    callers = CallPool()
    try:
        outcome: dict[str, bytes] = {}
        caller = threading.Thread(
            target=lambda: outcome.setdefault(
                "reply", callers.connection(address).call("stuck", b"", 10.0)
            )
        )
        caller.start()
        time.sleep(0.3)
        task = pool.submit(time.monotonic)
        time.sleep(0.5)
        assert not task.done()  # no place: the stuck call holds the only one
        release.set()
        caller.join(10.0)
        assert outcome["reply"].startswith(b"call-link")
        assert task.result(10.0) > 0
    finally:
        release.set()
        callers.close()
        served.stop()
        pool.shutdown(wait=False)


class _LingersOutMeanwhile(_SlowWatch):
    """A watch of slow requests that ends its lingering (WATCH_LINGER_S without a request
    run inline) just as a request run inline, once ``armed``, looks whether it is idle:
    its last look (which finds that request not slow yet) and its going idle fall
    between that look and the request's mark of its start. (A request marked first
    keeps it from going idle: the look is held for less than the linger.)"""

    def __init__(self, look: Callable[[float], None], stopping: threading.Event) -> None:
        self.held = threading.Event()  # while set, its looks find nothing (see above)
        self.armed = False
        super().__init__(lambda now: None if self.held.is_set() else look(now), stopping)

    @property
    def idle(self) -> bool:
        idle = self._idle
        if self.armed and threading.current_thread().name == "call-link":
            self.armed = False
            self.held.set()
            end = time.monotonic() + 0.7 * WATCH_LINGER_S
            try:
                while not self._idle and time.monotonic() < end:
                    time.sleep(0.005)
                if self._idle:
                    time.sleep(0.02)  # into its wait to be woken
            finally:
                self.held.clear()
        return idle

    @idle.setter
    def idle(self, value: bool) -> None:
        self._idle = value


def test_a_request_starting_as_the_watch_goes_idle_is_still_watched() -> None:
    # A durable call alone on its connection waits for its checkpoint without a second
    # reader: only the watch of slow requests lets the calls sent behind it pass. A
    # request that began as the watch went idle was never watched: the call behind it
    # waited until the checkpoint's end (a frozen storesite: the call's deadline).
    served = CallServer("watched server", workers=4, tls=None)
    watch = served._watch = _LingersOutMeanwhile(served._slow, served._stopping)
    release = threading.Event()

    def echo(call: Call) -> bytes:
        if call.body == b"checkpoint":
            yield_reader(shared_only=True)  # alone on its connection: no reader of its own
            release.wait(10.0)
        return call.body

    served.register("echo", echo, "Supervisor/Invoke", inline=True)
    pool = CallPool()
    connection = pool.connection(served.start("127.0.0.1:0"))
    durable = threading.Thread(
        target=lambda: outcome.setdefault("durable", connection.call("echo", b"checkpoint", 10.0))
    )
    outcome: dict[str, bytes] = {}
    try:
        assert connection.call("echo", b"warm", 5.0) == b"warm"  # the watch runs
        # Half its linger on: the durable call's look is held into the watch's going idle.
        warm = watch.last
        wait_until(lambda: time.monotonic() - warm > WATCH_LINGER_S / 2, 5.0, "half a linger")
        watch.armed = True
        durable.start()
        wait_until(lambda: not watch.armed, 5.0, "the durable call to run")
        assert connection.call("echo", b"behind", 5.0) == b"behind"
        assert durable.is_alive()  # it passed the durable call, not after it
    finally:
        release.set()
        if durable.ident is not None:
            durable.join(10.0)
        pool.close()
        served.stop()
    assert outcome["durable"] == b"checkpoint"


def test_one_thread_at_a_time_reads_a_connection_whose_runs_hand_the_reading_on(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each run that waits has another thread read meanwhile (at once, or after a lone
    # caller's wait turns out slow, or not at all), and ends that reader when it ends: two
    # threads reading one link at once would cut its frames (and its TLS session) apart.
    inside: dict[int, int] = {}  # readers in each link now (the caller's and the listener's)
    overlaps = [0]
    receive = Link._receive

    counting = threading.Lock()

    def counted(link: Link) -> bool | None:
        key = id(link)
        with counting:
            inside[key] = inside.get(key, 0) + 1
            overlaps[0] += inside[key] > 1
        try:
            time.sleep(0.0005)  # (a wider window for another reader to show)
            return receive(link)
        finally:
            with counting:
                inside[key] -= 1

    monkeypatch.setattr(Link, "_receive", counted)
    pool = CallPool()
    hows = ("yield0.002", "shared0.012", "0", "shared0")
    try:
        wrong = _echo_from_threads(
            pool.connection(address), 3, 40, lambda i, j: hows[(i + j) % 4], pause_every=8
        )
    finally:
        pool.close()
    assert wrong == []
    assert overlaps == [0]
