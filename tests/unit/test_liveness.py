"""A node that cannot answer its own Status gives up (issue 11 item 1); one slow answer does not."""

from __future__ import annotations

import threading
import time

from hermesx.node.liveness import ServeWatchdog


def _watch(answers: list[bool], limit_s: float) -> tuple[list[str], threading.Event, float]:
    stuck: list[str] = []
    done = threading.Event()
    stopping = threading.Event()

    def probe(timeout: float) -> None:
        ok = answers.pop(0) if answers else False
        if not ok:
            raise TimeoutError("no worker answered")

    def on_stuck(why: str) -> None:
        stuck.append(why)
        done.set()

    started = time.monotonic()
    ServeWatchdog(probe, limit_s, on_stuck, stopping=stopping, interval_s=0.05).start()
    done.wait(5)
    stopping.set()
    return stuck, done, time.monotonic() - started


def test_a_node_silent_past_the_limit_gives_up_once_and_says_why() -> None:
    stuck, _, took = _watch([True, True], limit_s=0.5)
    assert len(stuck) == 1
    assert "every worker is stuck" in stuck[0] and "(limit 0.5 s)" in stuck[0]
    assert 0.5 <= took < 3


def test_answers_in_between_restart_the_count() -> None:
    # Failures that never last the limit in a row are load, not a stuck node.
    pattern = ([False] * 5 + [True]) * 6
    stuck, done, _ = _watch(pattern, limit_s=0.5)
    assert stuck and done.is_set()  # only after the pattern ran out (all failures)
    assert not pattern
