"""An atom's policies, checked where they enter: persistence, idle passivation, tags.

See docs/DESIGN.md §6.

Both the client (before anything is sent) and the node (for callers in other
languages) check an atom's metadata with :func:`check_atom_meta`, so a value
that would silently mean "never" (``every:0s``, a negative or NaN idle time)
or "practically never" (an absurdly large one) is refused with one line.

An atom's *tags* are the ``tags`` of its metadata, given at create: every node
that hosts the atom must carry all of them. Placement by the storesite picks
only such nodes; :func:`missing_tags` is the check for the places where a
user or the atom itself names the node (``create --on``, ``migrate``,
``move_to``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from hermesx.core.errors import ConfigurationError
from hermesx.rpc.proto import hermesx_pb2 as pb

__all__ = [
    "MAX_CHECKPOINT_CALLS",
    "MAX_CHECKPOINT_SECONDS",
    "MAX_IDLE_PASSIVATE_SECONDS",
    "check_atom_meta",
    "missing_tags",
    "tags_refusal",
]

# Beyond these a periodic checkpoint or an idle timer would in practice never
# fire; such a value is almost always a typo (ms for s, an extra digit).
MAX_CHECKPOINT_CALLS = 1_000_000
MAX_CHECKPOINT_SECONDS = 7 * 24 * 3600.0
MAX_IDLE_PASSIVATE_SECONDS = 30 * 24 * 3600.0


def _check_seconds(what: str, value: float, limit: float, *, zero_ok: bool) -> None:
    if math.isnan(value) or math.isinf(value):
        raise ConfigurationError(f"{what} must be a finite number of seconds, not {value}")
    if value < 0 or (value == 0 and not zero_ok):
        least = "0 or more" if zero_ok else "more than 0"
        raise ConfigurationError(f"{what} must be {least} seconds, not {value:g}")
    if value > limit:
        raise ConfigurationError(f"{what} of {value:g} s is over the limit of {limit:g} s")


def check_atom_meta(meta: pb.AtomMeta) -> None:
    """Refuse policies that are out of range; ``idle_passivate_seconds`` 0 means off."""
    policy = meta.checkpoint
    if policy.mode not in pb.CheckpointPolicy.Mode.values():
        raise ConfigurationError(
            f"checkpoint policy mode {policy.mode} is not one of "
            f"{', '.join(pb.CheckpointPolicy.Mode.keys())}"
        )
    if policy.mode == pb.CheckpointPolicy.PERIODIC:
        if policy.every_calls and policy.every_seconds:
            raise ConfigurationError("checkpoint policy: give every:N or every:Ts, not both")
        if policy.every_calls:
            if policy.every_calls > MAX_CHECKPOINT_CALLS:
                raise ConfigurationError(
                    f"checkpoint policy every:{policy.every_calls} is over the limit of "
                    f"{MAX_CHECKPOINT_CALLS} calls"
                )
        elif not math.isnan(policy.every_seconds) and policy.every_seconds == 0:
            raise ConfigurationError(
                "checkpoint policy every:0 would never checkpoint: give a count of calls "
                "or seconds greater than 0 (or on-request)"
            )
        else:
            _check_seconds(
                "checkpoint period",
                policy.every_seconds,
                MAX_CHECKPOINT_SECONDS,
                zero_ok=False,
            )
    _check_seconds(
        "idle passivation time (--idle-passivate)",
        meta.idle_passivate_seconds,
        MAX_IDLE_PASSIVATE_SECONDS,
        zero_ok=True,
    )


def missing_tags(wanted: Iterable[str], carried: Iterable[str]) -> list[str]:
    """The tags in ``wanted`` that ``carried`` lacks, sorted."""
    return sorted(set(wanted) - set(carried))


def tags_refusal(guid: str, node: str, wanted: Iterable[str], carried: Iterable[str]) -> str:
    """Why ``node`` may not host the atom, or "" when it carries every tag the atom needs."""
    lacking = missing_tags(wanted, carried)
    if not lacking:
        return ""
    has = ",".join(sorted(set(carried))) or "none"
    atom = f"atom {guid}" if guid else "the atom"
    return f"node {node} lacks tag(s) {','.join(lacking)} that {atom} requires (node tags: {has})"
