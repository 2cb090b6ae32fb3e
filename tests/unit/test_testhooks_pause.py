"""A node's test-hook pause ends early when the test says so or the node stops.

See hermesx/node/testhooks.py.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from hermesx.core.errors import ConfigurationError
from hermesx.node import testhooks
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.testing.wait import wait_until

LONG_S = 600.0  # far past the test's own timeout: only an early end lets it pass


def _hooks(stopping: threading.Event) -> testhooks.TestHooks:
    config: Any = SimpleNamespace(name="n1")  # the pauses use nothing else of the node
    return testhooks.TestHooks(config, None, None, stopping=stopping)  # type: ignore[arg-type]


def _paused(hooks: testhooks.TestHooks, step: str) -> threading.Thread:
    hooks.set_pause(pb.TestHookRequest(pause_at=step, seconds=LONG_S))
    thread = threading.Thread(target=hooks.pause, args=(step,), daemon=True)
    thread.start()
    wait_until(lambda: step in hooks._released, 10.0, f"the pause at {step}")
    return thread


def test_a_pause_of_0_seconds_ends_the_pause_in_progress_at_that_step_only() -> None:
    hooks = _hooks(threading.Event())
    prepared = _paused(hooks, "prepared")
    committed = _paused(hooks, "committed")
    hooks.set_pause(pb.TestHookRequest(pause_at="prepared", seconds=0.0))
    prepared.join(30.0)
    assert not prepared.is_alive()
    assert committed.is_alive()
    hooks.set_pause(pb.TestHookRequest(pause_at="committed", seconds=0.0))
    committed.join(30.0)
    assert not committed.is_alive()
    # Nothing is left asked for: the next move passes the step at once.
    hooks.pause("prepared")
    assert hooks._released == {}


def test_a_stopping_node_ends_its_pause() -> None:
    stopping = threading.Event()
    thread = _paused(_hooks(stopping), "dropped")
    stopping.set()
    thread.join(30.0)
    assert not thread.is_alive()


def test_an_unknown_step_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="unknown pause step 'nowhere'"):
        _hooks(threading.Event()).set_pause(pb.TestHookRequest(pause_at="nowhere", seconds=0.0))
