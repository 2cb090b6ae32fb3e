"""A caller whose reply another thread reads for it (docs/DESIGN.md §4.1).

After a second without calls a connection's own thread reads it; a caller
then asks for the reading back. If that thread takes the reading again to
read for every call waiting, the caller's reply may arrive while the caller
still waits for the reading: it must return with it, not wait for every
other call on the connection. Forwarding nodes meet this when the reply of
one call depends on another caller's return (a call bouncing between two
nodes while its atom moves).
"""

from __future__ import annotations

import threading
import time

from hermesx.rpc.callclient import IDLE_READ_S, CallPool
from hermesx.rpc.callserver import Call, CallServer
from hermesx.testing.wait import wait_until


def test_a_reply_read_by_the_connections_thread_reaches_a_caller_waiting_for_the_reading() -> None:
    served = CallServer("token server", workers=4, tls=None)
    first_returned = threading.Event()

    def quick(call: Call) -> bytes:
        time.sleep(float(call.body or b"0"))
        return b"quick"

    def after_first(call: Call) -> bytes:
        # Its reply waits for the first caller to have returned, as a forwarded
        # call's reply waits for the caller it depends on.
        return b"in time" if first_returned.wait(3.0) else b"late"

    served.register("quick", quick, "Supervisor/Invoke")
    served.register("after", after_first, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    pool = CallPool()
    connection = pool.connection(address)
    try:
        for _ in range(3):
            first_returned.clear()
            assert connection.call("quick", b"", 5.0) == b"quick"
            time.sleep(IDLE_READ_S + 0.3)  # the connection's own thread reads it now
            outcome: dict[str, bytes] = {}

            def first(outcome: dict[str, bytes] = outcome) -> None:
                # Still running on the node when the second call comes.
                outcome["first"] = connection.call("quick", b"0.3", 10.0)
                first_returned.set()

            caller = threading.Thread(target=first)
            caller.start()
            time.sleep(0.02)
            second = connection.call("after", b"", 10.0)
            caller.join(15.0)
            assert outcome.get("first") == b"quick"
            assert second == b"in time", "the first caller returned only after the second's reply"
    finally:
        pool.close()
        served.stop()


class _Token:
    """A connection's reading token that, once ``armed``, has the connection's own thread
    run ``before_release`` as it lets the reading go; ``refused`` is set when another
    thread then finds the token held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.armed = False
        self.before_release = lambda: None
        self.refused = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if not got and not blocking:
            self.refused.set()
        return got

    def release(self) -> None:
        if self.armed and threading.current_thread().name.startswith("call-link"):
            self.armed = False
            self.before_release()
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def test_a_call_made_as_the_connections_thread_stops_reading_gets_its_reply() -> None:
    # The connection's own thread reads for the calls in flight until none is left. A call
    # made after its last look, which finds the reading still taken, waits for its reply
    # with nobody reading for it: the thread must read again for it, not leave it to its
    # deadline.
    served = CallServer("token server", workers=4, tls=None)

    def quick(call: Call) -> bytes:
        time.sleep(float(call.body or b"0"))
        return b"quick"

    served.register("quick", quick, "Supervisor/Invoke")
    address = served.start("127.0.0.1:0")
    pool = CallPool()
    connection = pool.connection(address)
    token = connection._token = _Token()  # type: ignore[assignment]
    late: dict[str, object] = {}

    def late_call() -> None:
        try:
            late["reply"] = connection.call("quick", b"", 5.0)
        except Exception as exc:
            late["reply"] = exc

    caller = threading.Thread(target=late_call)

    def meanwhile() -> None:
        token.refused.clear()
        caller.start()
        assert token.refused.wait(5.0), "the late call did not look for the reading"

    token.before_release = meanwhile
    try:
        token.armed = True
        # The first caller reads its own reply and leaves the second's to the connection's
        # thread, which lets the reading go once that came.
        replies: dict[bytes, bytes] = {}

        def call_with(body: bytes) -> None:
            replies[body] = connection.call("quick", body, 5.0)

        first, second = (threading.Thread(target=call_with, args=(b,)) for b in (b"0.1", b"0.4"))
        first.start()
        wait_until(lambda: token._lock.locked(), 5.0, "the first caller to read")
        second.start()
        first.join(10.0)
        second.join(10.0)
        assert replies == {b"0.1": b"quick", b"0.4": b"quick"}
        wait_until(lambda: caller.ident is not None, 5.0, "the late call to be made")
        caller.join(10.0)
        assert not token.armed, "the connection's thread never read for a call"
        assert late.get("reply") == b"quick"
    finally:
        pool.close()
        served.stop()
