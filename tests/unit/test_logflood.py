"""The throttle of warnings a peer can make a process write (hermesx/observe/logflood.py)."""

from __future__ import annotations

import logging

from hermesx.observe.logflood import Throttle


def _record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("t", level, __file__, 1, msg, ("peer",), None)


def test_a_flood_of_one_warning_is_cut_and_the_next_window_says_how_many_went_unwritten() -> None:
    now = [0.0]
    throttle = Throttle(lines=3, seconds=10.0, clock=lambda: now[0])
    passed = [throttle.filter(_record("closed %s")) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert throttle.filter(_record("another %s"))  # each format has its own count
    assert throttle.filter(_record("issued %s", logging.INFO))  # not a warning: never cut
    now[0] = 10.0
    record = _record("closed %s")
    assert throttle.filter(record)
    assert record.getMessage() == "closed peer [7 more like it not written]"
    record = _record("closed %s")
    assert throttle.filter(record) and record.getMessage() == "closed peer"
