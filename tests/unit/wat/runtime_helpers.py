"""Shared helpers for the runtime's unit tests: WAT atoms, example atoms, hosts."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable

import pytest
import wasmtime

from hermesx.runtime.host import CallContext, StandaloneHost

WAT_DIR = pathlib.Path(__file__).parent
EXAMPLES = pathlib.Path(__file__).parents[3] / "atoms" / "build"

GUID_A = "local:" + "a" * 32
GUID_B = "local:" + "b" * 32


def wat(name: str) -> bytes:
    return wasmtime.wat2wasm((WAT_DIR / f"{name}.wat").read_text())


def example(name: str) -> bytes:
    path = EXAMPLES / f"{name}.wasm"
    if not path.exists():
        pytest.skip(f"example atom {name} not built (python -m hermesx.runtime.build --examples)")
    return path.read_bytes()


class ScriptedHost(StandaloneHost):
    """A host whose outgoing invoke runs a test-supplied function."""

    def __init__(self, on_invoke: Callable[[CallContext, str, str, bytes], bytes] | None = None):
        super().__init__("test-node")
        self.on_invoke = on_invoke
        self.contexts: list[CallContext] = []
        self.sent: list[tuple[str, int, bytes]] = []
        self.lock = threading.Lock()

    def invoke(self, ctx: CallContext, target: str, method: str, args: bytes) -> bytes:
        with self.lock:
            self.contexts.append(ctx)
        if self.on_invoke is None:
            return super().invoke(ctx, target, method, args)
        return self.on_invoke(ctx, target, method, args)

    def send(self, ctx: CallContext, target: str, code: int, payload: bytes) -> None:
        with self.lock:
            self.sent.append((target, code, payload))
