"""An atom's log lines wherever it ran, for any client: the CLI, the gateway (docs/DESIGN.md §12).

:func:`atom_logs` asks the atom's storesite for the lines it keeps (sent
after checkpoints, passivations and moves) and where the atom is, then the
node it is active on for the newest, and merges both by ``(age, n)``. It
never activates a dormant atom.
"""

from __future__ import annotations

from dataclasses import dataclass

from hermesx.client.api import Client
from hermesx.core.errors import HermesError
from hermesx.observe.atomlog import LogLine, decode_lines, merge_lines
from hermesx.rpc.storesite_client import StoresiteClient

__all__ = ["AtomLogs", "atom_logs"]


@dataclass(frozen=True, slots=True)
class AtomLogs:
    """An atom's lines, oldest first, and where it is: ``node@age``, ``dormant``, or
    ``node@age (not answering)`` when only the storesite's lines could be read."""

    guid: str
    where: str
    lines: list[LogLine]


def atom_logs(client: Client, target: str) -> AtomLogs:
    """The log lines of atom ``target`` (a name or GUID) from its storesite and its node."""
    invoker = client.invoker
    guid = invoker.naming.guid_of(target)
    sid, address = invoker.storesite_address(guid)
    storesite = StoresiteClient(address, sid=sid, channels=invoker.channels)
    stored, tad, dormant = storesite.get_logs(guid)
    lines = decode_lines(stored)
    if dormant or tad is None:
        return AtomLogs(guid, "dormant", lines)
    try:
        newest = invoker.nodes.atom_logs(invoker.node(tad.node), guid)
    except HermesError:
        # The node is gone or does not answer: the storesite's lines are what there is.
        return AtomLogs(guid, f"{tad.node}@{tad.age} (not answering)", lines)
    return AtomLogs(guid, f"{tad.node}@{tad.age}", merge_lines(lines, decode_lines(newest)))
