"""What the gateway knows of the cluster, refreshed on a short period, and the events it sees.

:class:`ClusterView` reads, every ``period`` seconds, the live nodes (the
name service's watched cache: a dict read), each node's ``Status`` (atoms,
invocations answered, fenced) and each storesite's ``ListAtoms`` (every
atom's location record), and compares them with the previous reading. The
differences are the console's events (docs/DESIGN.md §13):

| event | seen as |
| --- | --- |
| ``create`` | a GUID no storesite listed before |
| ``migrate`` | an atom's node changed and the old node is still a live member |
| ``recover`` | an atom's node changed and the old node (that incarnation) is gone |
| ``passivate`` / ``activate`` | an atom became dormant / active again |
| ``storesite move`` | another storesite lists the atom as its home |
| ``fence`` / ``unfence`` | a node reports it may not serve / serves again |
| ``join`` / ``leave`` | a node registered / its registration ended |

Diffing a cheap reading is robust where hooking every protocol would not be:
an event is never lost to a dropped notification, and a gateway started late
sees the cluster as it is. Changes within one period merge: an atom created
and moved between two readings shows as created where it then is. Its cost
is one ``ListAtoms`` per storesite per period, so the console suits
clusters of thousands of atoms, not millions.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hermesx.client import Client
from hermesx.core.errors import HermesError, NameNotFoundError
from hermesx.rpc.proto import hermesx_pb2 as pb
from hermesx.rpc.storesite_client import StoresiteClient

__all__ = ["AtomRow", "ClusterView", "NodeRow", "Reading", "diff_readings", "policy_of"]

log = logging.getLogger(__name__)

# Events kept for a console that connects later.
EVENTS_KEPT = 200


@dataclass(frozen=True, slots=True)
class AtomRow:
    guid: str
    name: str | None
    node: str | None  # None when dormant
    age: int
    dormant: bool
    storesite: str
    policy: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        shown = ("guid", "name", "node", "age", "storesite", "policy")
        data = {key: getattr(self, key) for key in shown}
        data["state"] = "dormant" if self.dormant else "active"
        return data


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    address: str
    tags: tuple[str, ...]
    incarnation: str
    answered: bool
    fenced: bool
    atoms: int | None
    invocations: int | None
    calls_per_s: float | None

    def as_dict(self) -> dict[str, Any]:
        state = "fenced" if self.fenced else "live" if self.answered else "silent"
        return {
            "name": self.name,
            "address": self.address,
            "tags": list(self.tags),
            "incarnation": self.incarnation,
            "state": state,
            "atoms": self.atoms,
            "calls_per_s": self.calls_per_s,
        }


@dataclass
class Reading:
    """One look at the cluster."""

    at: float = 0.0
    nodes: dict[str, NodeRow] = field(default_factory=dict)
    atoms: dict[str, AtomRow] = field(default_factory=dict)


def policy_of(meta: pb.AtomMeta) -> dict[str, Any]:
    """An atom's policies as JSON (docs/DESIGN.md §6, §8)."""
    ck = meta.checkpoint
    if ck.mode == pb.CheckpointPolicy.ON_REQUEST:
        checkpoint = "on-request"
    elif ck.mode == pb.CheckpointPolicy.PERIODIC:
        checkpoint = f"every:{ck.every_calls}" if ck.every_calls else f"every:{ck.every_seconds:g}s"
    else:
        checkpoint = "every-call"
    return {
        "checkpoint": checkpoint,
        "reentrant": meta.reentrant,
        "tags": list(meta.tags),
        "idle_passivate_seconds": meta.idle_passivate_seconds,
        "placement": meta.placement or "none",
        "reply_window_entries": meta.reply_window_entries or 1024,
        "reply_window_seconds": meta.reply_window_seconds or None,
    }


class ClusterView:
    """The latest reading of the cluster and the events between readings."""

    def __init__(self, client: Client, *, period: float = 0.5) -> None:
        self.client = client
        self.period = period
        self._lock = threading.Lock()
        # One reading at a time: each is compared with the one before it.
        self._refreshing = threading.Lock()
        self._started = 0.0  # when the latest reading began (monotonic)
        self._reading = Reading()
        self._first = True
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self._seq = itertools.count(1)
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="gateway-view")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ reading

    @property
    def reading(self) -> Reading:
        with self._lock:
            return self._reading

    def events_since(self, seq: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._events if e["seq"] > seq]

    def refresh(self) -> list[dict[str, Any]]:
        """Read the cluster again; returns the events since the previous reading."""
        with self._refreshing:
            self._started = time.monotonic()
            return self._refresh()

    def read_fresh(self) -> Reading:
        """A reading begun after this call was made (many callers at once share one)."""
        asked = time.monotonic()
        with self._refreshing:
            if self._started < asked:
                self._started = time.monotonic()
                self._refresh()
        return self.reading

    def _refresh(self) -> list[dict[str, Any]]:
        before = self.reading
        now = time.time()
        members = self.client.nodes()
        statuses = dict(zip(members, self._pool.map(self._status, members.values()), strict=True))
        nodes: dict[str, NodeRow] = {}
        for name, member in sorted(members.items()):
            status = statuses[name]
            old = before.nodes.get(name)
            rate: float | None = None
            if status is not None and old is not None and old.invocations is not None:
                elapsed = now - before.at
                if elapsed > 0 and old.incarnation == member.incarnation:
                    rate = max(0, status.invocations - old.invocations) / elapsed
            nodes[name] = NodeRow(
                name=name,
                address=member.address,
                tags=member.tags,
                incarnation=member.incarnation,
                answered=status is not None,
                fenced=bool(status and status.fenced),
                atoms=status.active_atoms if status else None,
                invocations=status.invocations if status else None,
                calls_per_s=round(rate, 1) if rate is not None else None,
            )
        atoms = self._list_atoms(before)
        reading = Reading(now, nodes, atoms)
        events = [] if self._first else diff_readings(before, reading)
        with self._lock:
            self._reading = reading
            self._first = False
            for event in events:
                event["seq"] = next(self._seq)
                self._events.append(event)
        return events

    def _status(self, member: Any) -> pb.NodeStatus | None:
        try:
            return self.client.node_client.status(member, timeout=1.0)
        except HermesError:
            return None

    def _list_atoms(self, before: Reading) -> dict[str, AtomRow]:
        names = {guid: name for name, guid in self.client.names().items()}
        sites = self.client.naming.storesites()
        listed = dict(zip(sites, self._pool.map(self._list_one, sites.items()), strict=True))
        atoms: dict[str, AtomRow] = {}
        for sid, records in sorted(listed.items()):
            if records is None:
                # A storesite that did not answer: keep what it listed last.
                atoms.update({g: a for g, a in before.atoms.items() if a.storesite == sid})
                continue
            for rec in records:
                atoms[rec.guid] = AtomRow(
                    guid=rec.guid,
                    name=names.get(rec.guid) or rec.meta.name or None,
                    node=None if rec.dormant else rec.tad.node,
                    age=rec.tad.age,
                    dormant=rec.dormant,
                    storesite=sid,
                    policy=policy_of(rec.meta),
                )
        return atoms

    def _list_one(self, item: tuple[str, Any]) -> list[Any] | None:
        sid, member = item
        try:
            site = StoresiteClient(
                member.address, sid=sid, timeout=2.0, channels=self.client.channels
            )
            return site.list_atoms()
        except HermesError as exc:
            log.info("storesite %s did not list its atoms: %s", sid, exc)
            return None

    # ------------------------------------------------------------ one atom

    def atom(self, target: str) -> AtomRow:
        """The row of one atom (by name or GUID), from a reading begun now."""
        guid = self.client.guid_of(target)
        row = self.read_fresh().atoms.get(guid)
        if row is None:
            raise NameNotFoundError(f"no storesite lists atom {target!r} ({guid})")
        return row

    def aliases_of(self, guid: str) -> list[str]:
        """``SCOPE=ALIAS`` of every alias the atom carries."""
        found: list[str] = []
        for scope in self.client.naming.scopes():
            for alias, guids in self.client.naming.aliases(scope).items():
                if guid in guids:
                    found.append(f"{scope}={alias}")
        return sorted(found)

    def chain(self, target: str) -> dict[str, Any]:
        """The atom's TAD chain: what every live node's stash holds for it, and its record."""
        row = self.atom(target)
        members = self.client.nodes()

        def holding(member: Any) -> dict[str, Any]:
            entry: dict[str, Any] = {"node": member.name}
            try:
                held = self.client.node_client.locate(member, row.guid, timeout=2.0)
            except HermesError as exc:
                entry["error"] = exc.kind
                return entry
            entry["active_here"] = held.active_here
            entry["tad"] = {"node": held.tad.node, "age": held.tad.age} if held.tad else None
            return entry

        stashes = list(self._pool.map(holding, [members[n] for n in sorted(members)]))
        return {
            "guid": row.guid,
            "name": row.name,
            "location": {"node": row.node, "age": row.age, "storesite": row.storesite},
            "state": "dormant" if row.dormant else "active",
            "stashes": stashes,
        }


def diff_readings(before: Reading, after: Reading) -> list[dict[str, Any]]:
    """The events between two readings of the cluster (the table of the module docstring)."""
    events: list[dict[str, Any]] = []
    at = after.at

    def add(kind: str, text: str, **extra: Any) -> None:
        events.append({"kind": kind, "text": text, "at": at, **extra})

    for name in sorted(after.nodes.keys() - before.nodes.keys()):
        add("join", f"node {name} joined", node=name)
    for name in sorted(before.nodes.keys() - after.nodes.keys()):
        add("leave", f"node {name} left the cluster", node=name)
    for name in sorted(after.nodes.keys() & before.nodes.keys()):
        old, new = before.nodes[name], after.nodes[name]
        if new.incarnation != old.incarnation:
            add("join", f"node {name} restarted (new incarnation)", node=name)
        elif new.fenced and not old.fenced:
            add("fence", f"node {name} is fenced: it may not serve", node=name)
        elif old.fenced and not new.fenced and new.answered:
            add("unfence", f"node {name} serves again", node=name)
    for guid, atom in after.atoms.items():
        label = atom.name or guid
        old_atom = before.atoms.get(guid)
        if old_atom is None:
            where = f"on {atom.node}" if atom.node else "dormant"
            add("create", f"{label} created {where}", guid=guid, node=atom.node)
            continue
        if atom.storesite != old_atom.storesite:
            add(
                "storesite move",
                f"{label} is homed at {atom.storesite} (was {old_atom.storesite})",
                guid=guid,
                storesite=atom.storesite,
            )
        if atom.dormant and not old_atom.dormant:
            add("passivate", f"{label} is dormant (was on {old_atom.node})", guid=guid)
        elif old_atom.dormant and not atom.dormant:
            add("activate", f"{label} activated on {atom.node}", guid=guid, node=atom.node)
        elif atom.node != old_atom.node and atom.node and old_atom.node:
            gone = old_atom.node not in after.nodes or (
                old_atom.node in before.nodes
                and after.nodes[old_atom.node].incarnation
                != before.nodes[old_atom.node].incarnation
            )
            kind = "recover" if gone else "migrate"
            verb = "recovered on" if gone else "moved to"
            add(
                kind,
                f"{label} {verb} {atom.node} (from {old_atom.node}, age {atom.age})",
                guid=guid,
                node=atom.node,
                source=old_atom.node,
            )
    return events
