"""What waits in an atom's mailbox and queue (docs/DESIGN.md §3).

The mailbox holds interrupts (``send`` to the atom), results of asynchronous
invokes, and :class:`Job` items: calls to reentrant and daemon atoms, and
snapshots of daemon atoms, that the atom's own thread runs at a blocking point.
A :class:`Turn` is a plain caller's place in the atom's FIFO queue. The mailbox
lives in the host and travels in every snapshot, so it is bounded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from hermesx.core.errors import HermesError

__all__ = [
    "DONE",
    "MAX_MAIL_BYTES",
    "MAX_MAIL_ITEMS",
    "PENDING",
    "TAKEN",
    "FutureDone",
    "Interrupt",
    "Job",
    "Mail",
    "Turn",
    "send_method",
]

# Messages waiting in an atom's mailbox (sends to it), at most.
MAX_MAIL_ITEMS = 4096
MAX_MAIL_BYTES = 16 * 2**20
# States of a Job.
PENDING, TAKEN, DONE = 0, 1, 2


def send_method(code: int) -> str:
    """What a message's record in the reply table is digested as (docs/DESIGN.md §4):
    not a name an atom exports, so an invocation reusing a message's id is refused."""
    return f"\x00send {code}"


@dataclass(frozen=True, slots=True)
class Interrupt:
    code: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class FutureDone:
    future_id: int
    status: int
    payload: bytes


class Turn:
    """A plain caller's place in an atom's FIFO queue."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


@dataclass(slots=True, eq=False)  # eq=False: the mailbox removes a job by identity
class Job:
    """Work handed to the atom's own thread at a blocking point.

    Used for invocations of reentrant and daemon atoms while they are busy,
    and for snapshots of daemon atoms (their thread never leaves ``hx_main``).
    """

    method: str
    args: bytes
    request_id: str
    chain: tuple[str, ...]
    deadline: float | None
    snapshot: bool = False
    open_chain: frozenset[str] = frozenset()
    state: int = PENDING
    result: bytes = b""
    generation: int = 0
    error: HermesError | None = None


Mail = Interrupt | FutureDone | Job
