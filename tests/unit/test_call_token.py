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
