"""Unit tests' shared set-up: each test starts without another test's process-wide
record of wait cycles broken (docs/DESIGN.md §3). A real call's record goes when the
call comes back; one left by a test that asks ``_check_wait_cycle`` directly (no call
to come back) would otherwise hide, for a moment, a cycle a later test builds between
the same atoms."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hermesx.runtime import scheduling


@pytest.fixture(autouse=True)
def _no_cycles_broken_before() -> Iterator[None]:
    scheduling._CYCLES_BROKEN.clear()
    yield
