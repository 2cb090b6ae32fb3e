"""The storesite's lock per atom (storesite/locks.py): exclusive, and forgotten once free."""

from __future__ import annotations

import threading

from storesite.locks import AtomLocks


def test_a_lock_is_forgotten_once_nobody_holds_or_awaits_it_and_stays_exclusive() -> None:
    locks = AtomLocks()
    for i in range(1000):  # made-up GUIDs, as anyone may ask about
        with locks.hold(f"guid-{i}"):
            pass
    assert len(locks) == 0
    inside, most = [0], [0]
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(200):
            with locks.hold("one"):
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most[0] == 1 and len(locks) == 0
