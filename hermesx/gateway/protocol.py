"""uvicorn's h11 protocol with a deadline on a request's head (docs/DESIGN.md §13).

uvicorn bounds how long an idle kept-alive connection waits, but not how
long a request's head (its request line and headers) may take to arrive: a
client sending one byte a second would hold its connection for ever, and
enough of them every connection the gateway takes. Here a request's head
must arrive whole within the deadline after the connection opens or after
the previous response; otherwise the client gets 408 (``slow_body``) and the
connection is closed. A body that trickles is bounded by the application
(:func:`hermesx.gateway.guards.read_body`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["with_head_deadline"]


class _HeadDeadline(H11Protocol):
    head_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        # Bytes of a request's head came since the last response.
        self._head_begun = False

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._idle():
            self._head_begun = True
            if self._head_timer is None:
                self._arm()
        super().data_received(data)

    def on_response_complete(self) -> None:
        # The next head's time starts with its first byte (the keep-alive timeout bounds idling).
        self._disarm()
        self._head_begun = False
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._idle():
            return  # a request is being answered: its body has a deadline of its own
        if self._head_begun:
            detail = f"the request's head did not arrive within {self.head_timeout:g} s"
            body = json.dumps(
                {
                    "type": "https://hermesx.dev/problems/slow_body",
                    "title": "slow_body",
                    "status": 408,
                    "detail": detail,
                    "kind": "slow_body",
                }
            ).encode()
            head = (
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            ).encode()
            self.transport.write(head + body)
        self.transport.close()


def with_head_deadline(seconds: float) -> type[H11Protocol]:
    """The h11 protocol of uvicorn, with ``seconds`` for each request's head to arrive."""
    return type("HeadDeadlineProtocol", (_HeadDeadline,), {"head_timeout": seconds})
