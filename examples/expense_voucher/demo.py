"""The expense-voucher demo: mobile objects travelling an organisation (docs/DESIGN.md §3-6, §8).

An expense voucher is an atom whose data (lines, total, state, history) and
code travel between the sites of a company: it is filled in by an employee
in ``boston``, moves itself to a manager in ``paris`` for approval, to
accounting in ``reading`` to be paid, and to the ``archive``. Every party is
an atom of its own, found by scoped alias (``role=manager``, ``dept=sales``);
approval, payment and archiving are local steps that refuse to run unless the
voucher has come to the party's node.

:func:`run` starts its own local cluster of real processes, runs five
vouchers through the organisation concurrently, kills the ``reading`` node
with SIGKILL while vouchers wait there, checks that the storesite recovers
every one of them with nothing lost, finishes the flow and stops everything
it started. :func:`run_demo` is what ``hermesx demo expense-voucher`` calls;
``python examples/expense_voucher/demo.py [--json]`` does the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hermesx import Client, HermesError, Hop, InvokeOutcome
from hermesx.core import codec
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.runtime.build import SDK_DIR, build_atom

__all__ = [
    "ATOMS_DIR",
    "BUILD_DIR",
    "SITES",
    "DemoReport",
    "Event",
    "KillReport",
    "Recovery",
    "VoucherRow",
    "build_atoms",
    "main",
    "run",
    "run_demo",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DEMO_DIR = Path(__file__).resolve().parent
ATOMS_DIR = DEMO_DIR / "atoms"
BUILD_DIR = DEMO_DIR / "build"

# Sites are nodes named like places; the tags say what each site is for.
SITES = (
    NodeSpec("boston", ("hq", "employees")),
    NodeSpec("paris", ("europe", "managers")),
    NodeSpec("reading", ("finance", "accounting")),
    NodeSpec("archive", ("records",)),
)
KILLED_SITE = "reading"

# Short sessions make a killed node confirmed dead (and its atoms recovered)
# within a few seconds (a SIGKILLed client's ZooKeeper session ends after
# about the session timeout).
SESSION_TIMEOUT_S = 2.0
# Bounds on waiting for the other threads and for a voucher to arrive.
PHASE_TIMEOUT_S = 90.0
ARRIVAL_POLLS = 400
ARRIVAL_POLL_S = 0.025


# ---------------------------------------------------------------- the cast


@dataclass(frozen=True, slots=True)
class Party:
    atom: str  # atom name, what clients invoke
    module: str
    person: str
    site: str
    aliases: tuple[str, ...]
    init: dict[str, Any] = field(default_factory=dict)


PARTIES = (
    Party("emp-alice", "employee", "Alice Walker", "boston", ("role=employee", "dept=sales")),
    Party("emp-bob", "employee", "Bob Chen", "boston", ("role=employee", "dept=engineering")),
    Party(
        "mgr-sales",
        "manager",
        "Maria Rossi",
        "paris",
        ("role=manager", "dept=sales"),
        {"limit": 100_000},
    ),
    Party(
        "mgr-engineering",
        "manager",
        "Jean Dupont",
        "paris",
        ("role=manager", "dept=engineering"),
        {"limit": 250_000},
    ),
    Party("accounting", "accounting", "Priya Shah", "reading", ("role=accounting",)),
    Party("archive", "archive", "Records Office", "archive", ("role=archive",)),
)


@dataclass(frozen=True, slots=True)
class Line:
    date: str
    description: str
    amount: int  # cents
    currency: str = "USD"

    def as_args(self) -> dict[str, Any]:
        return {
            "date": self.date,
            "description": self.description,
            "amount": self.amount,
            "currency": self.currency,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """One voucher's story: who files it, its lines, and what happens to it."""

    id: str
    employee: str  # party atom
    dept: str
    lines: tuple[Line, ...]
    # After a rejection: (line index, corrected line), then resubmit. None
    # means the employee accepts the rejection and keeps the voucher.
    fix: tuple[int, Line] | None = None
    expected_state: str = "archived"
    # Paid as soon as it reaches accounting, before the accounting site is
    # killed (the others wait there for the next payment run).
    paid_on_arrival: bool = False

    @property
    def atom(self) -> str:
        return f"voucher-{self.id.lower()}"


PLANS = (
    Plan(
        "V-1001",
        "emp-alice",
        "sales",
        (Line("2024-03-04", "Taxi to the client", 4_500), Line("2024-03-04", "Hotel", 28_900)),
        paid_on_arrival=True,
    ),
    Plan(
        "V-1002",
        "emp-bob",
        "engineering",
        (
            Line("2024-03-11", "Flight to the design review", 148_000),
            Line("2024-03-12", "Meals", 9_640),
        ),
    ),
    Plan(
        "V-1003",
        "emp-alice",
        "sales",
        (Line("2024-03-18", "Trade-fair stand", 195_000), Line("2024-03-18", "Parking", 1_800)),
        fix=(0, Line("2024-03-18", "Trade-fair stand (shared with partner)", 85_000)),
    ),
    Plan(
        "V-1004",
        "emp-bob",
        "engineering",
        (Line("2024-03-20", "Team dinner", 31_275),),
        paid_on_arrival=True,
    ),
    Plan(
        "V-1005",
        "emp-bob",
        "engineering",
        (Line("2024-03-22", "Laptop", 319_900),),
        expected_state="rejected",
    ),
)


def _manager_of(dept: str) -> str:
    return f"mgr-{dept}"


def money(cents: int, currency: str = "USD") -> str:
    return f"{cents / 100:,.2f} {currency}"


# ---------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class Event:
    """One step of the timeline: what happened, to which voucher, where."""

    t: float  # seconds since the flow started
    voucher: str
    step: str
    atom: str  # the atom invoked
    where: str  # its TAD after the call, node@age ("" when not invoked)
    hops: tuple[str, ...]  # the path the call took, from its trace
    detail: str


@dataclass(frozen=True, slots=True)
class Recovery:
    """An atom of the killed node, found again after the storesite recovered it."""

    atom: str
    to_node: str
    age: int
    after_s: float  # from the SIGKILL to the first answer from its new node
    steps_before: int
    steps_after: int
    history_entries: int
    total_before: int
    total_after: int
    state_before: str
    state_after: str

    @property
    def intact(self) -> bool:
        return (
            self.steps_before == self.steps_after == self.history_entries
            and self.total_before == self.total_after
            and self.state_before == self.state_after
        )


@dataclass(frozen=True, slots=True)
class KillReport:
    node: str
    pid: int
    signal: str
    session_timeout_s: float
    at_s: float
    vouchers_there: tuple[str, ...]
    ledger_before_cents: int
    ledger_after_cents: int
    recovered: tuple[Recovery, ...]

    @property
    def intact(self) -> bool:
        return self.ledger_before_cents == self.ledger_after_cents and all(
            r.intact for r in self.recovered
        )


@dataclass(frozen=True, slots=True)
class VoucherRow:
    id: str
    atom: str
    employee: str
    dept: str
    state: str
    expected_state: str
    total_cents: int
    currency: str
    steps: int
    history_entries: int
    node: str
    age: int
    nodes_visited: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DemoReport:
    cluster: str
    sites: tuple[str, ...]
    setup_s: float
    flow_s: float
    timeline: tuple[Event, ...]
    kill: KillReport
    vouchers: tuple[VoucherRow, ...]
    ledger_total_cents: int
    ledger_count: int
    archived: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kill"]["intact"] = self.kill.intact
        for rec, obj in zip(data["kill"]["recovered"], self.kill.recovered, strict=True):
            rec["intact"] = obj.intact
        return data


# ---------------------------------------------------------------- building


def build_atoms(out_dir: Path = BUILD_DIR) -> dict[str, Path]:
    """Build the demo's atoms that are missing or older than their sources: name -> .wasm."""
    headers = [*SDK_DIR.glob("*.h"), *ATOMS_DIR.glob("*.h")]
    newest_header = max((p.stat().st_mtime for p in headers), default=0.0)
    modules: dict[str, Path] = {}
    for src in sorted(ATOMS_DIR.glob("*.c")):
        out = out_dir / f"{src.stem}.wasm"
        if not out.exists() or out.stat().st_mtime < max(src.stat().st_mtime, newest_header):
            build_atom(src, out, include_dirs=[ATOMS_DIR])
        modules[src.stem] = out
    return modules


# ---------------------------------------------------------------- the flow


class _Abort(Exception):
    """Another thread failed: stop this one quietly (its error is reported)."""


class _Flow:
    """Shared state of one demo run: the timeline, the rendezvous before the kill."""

    def __init__(self, cluster: LocalCluster, on_event: Callable[[Event], None]) -> None:
        self.cluster = cluster
        self.on_event = on_event
        self.started = time.monotonic()
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.at_accounting: list[str] = []
        self.go_on = threading.Event()
        self.failed = threading.Event()
        self.errors: list[BaseException] = []

    def now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def record(
        self,
        voucher: str,
        step: str,
        detail: str,
        atom: str = "",
        outcome: InvokeOutcome | None = None,
    ) -> Event:
        where = ""
        hops: tuple[str, ...] = ()
        if outcome is not None:
            tad = outcome.tad
            where = f"{tad.node}@{tad.age}" if tad is not None else ""
            hops = tuple(_hop(h) for h in outcome.trace)
        event = Event(self.now(), voucher, step, atom, where, hops, detail)
        with self.lock:
            self.events.append(event)
            self.on_event(event)
        return event

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)
            self.failed.set()
            self.arrived.notify_all()
        self.go_on.set()

    def check(self) -> None:
        if self.failed.is_set():
            raise _Abort()


def _hop(hop: Hop) -> str:
    if hop.event == "storesite":
        return f"storesite:{hop.detail}" if hop.detail else "storesite"
    tad = f"({hop.tad})" if hop.event in ("forward", "moved") else ""
    return f"{hop.node}:{hop.event}{tad}"


def _call(client: Client, atom: str, method: str, arg: Any = None) -> tuple[Any, InvokeOutcome]:
    """Invoke by name with a trace: (unpacked result, InvokeOutcome)."""
    outcome = client.invoke(atom, method, codec.pack(arg), trace=True)
    return codec.unpack(outcome.result), outcome


def _travel(flow: _Flow, client: Client, plan: Plan, role: str) -> str:
    """Ask the voucher to route itself to ``role``; wait until it is there. Returns the node."""
    flow.check()
    route, outcome = _call(client, plan.atom, "route", role)
    flow.record(
        plan.id,
        f"route {role}",
        f"{route['from']} -> {route['to']} ({route['party']})"
        if route["moving"]
        else f"already on {route['to']} with {route['party']}",
        plan.atom,
        outcome,
    )
    if not route["moving"]:
        return str(route["to"])
    # The node moves the atom right after the call that asked for it; the
    # first call that finds it at the destination shows the forwarding path.
    for _ in range(ARRIVAL_POLLS):
        flow.check()
        where, outcome = _call(client, plan.atom, "where")
        if where == route["to"]:
            flow.record(plan.id, "arrive", f"now on {where}", plan.atom, outcome)
            return str(where)
        time.sleep(ARRIVAL_POLL_S)
    raise HermesError(f"voucher {plan.id} did not arrive on {route['to']} after its route")


def _review(flow: _Flow, client: Client, plan: Plan) -> bool:
    manager = _manager_of(plan.dept)
    review, outcome = _call(client, manager, "review", plan.atom)
    approved = review["decision"] == "approved"
    detail = "approved" if approved else f"rejected: {review['reason']}"
    flow.record(plan.id, "review", detail, manager, outcome)
    return bool(approved)


def _voucher_flow(flow: _Flow, plan: Plan, wasm: Path) -> None:
    cluster = flow.cluster
    with Client(cluster.zk, cluster.name) as client:
        flow.check()
        client.create(
            wasm,
            name=plan.atom,
            on="boston",
            init={
                "id": plan.id,
                "employee": _person(plan.employee),
                "dept": plan.dept,
                "currency": "USD",
            },
        )
        flow.record(plan.id, "create", f"by {_person(plan.employee)} ({plan.dept})", plan.atom)
        for line in plan.lines:
            added, outcome = _call(client, plan.atom, "add_line", line.as_args())
            flow.record(
                plan.id,
                "add_line",
                f"{line.description} {money(line.amount)}; total {money(added['total'])}",
                plan.atom,
                outcome,
            )
        state, outcome = _call(client, plan.employee, "submit", plan.atom)
        flow.record(
            plan.id, "submit", f"{state} by {_person(plan.employee)}", plan.employee, outcome
        )
        _travel(flow, client, plan, "manager")
        if not _review(flow, client, plan):
            _travel(flow, client, plan, "employee")
            if plan.fix is None:
                return  # the employee keeps the rejected voucher
            index, line = plan.fix
            fixed, outcome = _call(
                client, plan.atom, "fix_line", {"index": index, **line.as_args()}
            )
            flow.record(
                plan.id,
                "fix_line",
                f"line {index} -> {line.description} {money(line.amount)}; "
                f"total {money(fixed['total'])}",
                plan.atom,
                outcome,
            )
            state, outcome = _call(client, plan.employee, "submit", plan.atom)
            flow.record(plan.id, "resubmit", f"{state} again", plan.employee, outcome)
            _travel(flow, client, plan, "manager")
            if not _review(flow, client, plan):
                raise HermesError(f"voucher {plan.id} was rejected again after its correction")
        _travel(flow, client, plan, "accounting")
        if plan.paid_on_arrival:
            _disburse(flow, client, plan)
        with flow.arrived:
            flow.at_accounting.append(plan.id)
            flow.arrived.notify_all()
        # Wait here while the accounting site is killed and recovered.
        if not flow.go_on.wait(PHASE_TIMEOUT_S):
            raise HermesError(f"voucher {plan.id}: the recovery phase did not end")
        flow.check()
        if not plan.paid_on_arrival:
            # Recovery may have put the voucher and accounting on different
            # nodes: the voucher follows accounting wherever it is now.
            where, _ = _call(client, plan.atom, "where")
            site, _ = _call(client, "accounting", "site")
            if where != site["node"]:
                _travel(flow, client, plan, "accounting")
            _disburse(flow, client, plan)
        _travel(flow, client, plan, "archive")
        count, outcome = _call(client, "archive", "store", plan.atom)
        flow.record(plan.id, "archive", f"filed ({count} in the archive)", "archive", outcome)


def _disburse(flow: _Flow, client: Client, plan: Plan) -> None:
    paid, outcome = _call(client, "accounting", "disburse", plan.atom)
    flow.record(
        plan.id,
        "disburse",
        f"paid {money(paid['paid'])}; ledger {money(paid['ledger'])}",
        "accounting",
        outcome,
    )


def _person(atom: str) -> str:
    return next(p.person for p in PARTIES if p.atom == atom)


def _run_thread(flow: _Flow, plan: Plan, wasm: Path) -> None:
    try:
        _voucher_flow(flow, plan, wasm)
    except _Abort:
        pass
    except BaseException as exc:  # reported by the main thread
        log.debug("voucher %s failed", plan.id, exc_info=True)
        flow.fail(exc)


def _kill_and_recover(flow: _Flow, client: Client, waiting: Sequence[Plan]) -> KillReport:
    """SIGKILL the accounting site while vouchers wait there; check what comes back."""
    cluster = flow.cluster
    before: dict[str, dict[str, Any]] = {p.atom: client.atom(p.atom).get() for p in waiting}
    ledger_before = client.atom("accounting").ledger()
    pid = cluster.procs[f"node-{KILLED_SITE}"]
    ids = tuple(p.id for p in waiting)
    cluster.kill(f"node-{KILLED_SITE}", signal.SIGKILL)
    killed_at = time.monotonic()
    at_s = flow.now()
    flow.record(
        "-",
        "kill",
        f"SIGKILL node {KILLED_SITE} (pid {pid}) holding accounting and {', '.join(ids)}",
    )
    # The first call is retried by the client until the storesite, once the
    # node's session has expired, has recovered accounting on a live node.
    ledger_after, outcome = _call(client, "accounting", "ledger")
    flow.record(
        "-",
        "recovered",
        f"accounting answers again after {time.monotonic() - killed_at:.1f} s; "
        f"ledger {money(ledger_after['total'])}",
        "accounting",
        outcome,
    )
    recovered: list[Recovery] = []
    for plan in waiting:
        got, outcome = _call(client, plan.atom, "get")
        after_s = round(time.monotonic() - killed_at, 3)
        history, _ = _call(client, plan.atom, "history")
        was = before[plan.atom]
        rec = Recovery(
            atom=plan.atom,
            to_node=outcome.tad.node if outcome.tad else "",
            age=outcome.tad.age if outcome.tad else 0,
            after_s=after_s,
            steps_before=int(was["steps"]),
            steps_after=int(got["steps"]),
            history_entries=len(history),
            total_before=int(was["total"]),
            total_after=int(got["total"]),
            state_before=str(was["state"]),
            state_after=str(got["state"]),
        )
        recovered.append(rec)
        flow.record(
            plan.id,
            "recovered",
            f"{rec.history_entries} history steps, {money(rec.total_after)}, {rec.state_after}"
            + (" - nothing lost" if rec.intact else " - STATE DIFFERS FROM BEFORE THE KILL"),
            plan.atom,
            outcome,
        )
    return KillReport(
        node=KILLED_SITE,
        pid=pid,
        signal="SIGKILL",
        session_timeout_s=cluster.session_timeout,
        at_s=at_s,
        vouchers_there=ids,
        ledger_before_cents=int(ledger_before["total"]),
        ledger_after_cents=int(ledger_after["total"]),
        recovered=tuple(recovered),
    )


def _visited(events: Sequence[Event], atom: str) -> tuple[str, ...]:
    """The nodes a voucher was seen on, in order, from the TADs of calls to it."""
    nodes: list[str] = []
    for event in events:
        if event.atom == atom and event.where:
            node = event.where.partition("@")[0]
            if not nodes or nodes[-1] != node:
                nodes.append(node)
    return tuple(nodes)


def _final_rows(client: Client, events: Sequence[Event]) -> list[VoucherRow]:
    rows = []
    for plan in PLANS:
        got = client.atom(plan.atom).get()
        history = client.atom(plan.atom).history()
        where = client.locate(plan.atom)
        visited = _visited(events, plan.atom)
        rows.append(
            VoucherRow(
                id=plan.id,
                atom=plan.atom,
                employee=str(got["employee"]),
                dept=str(got["dept"]),
                state=str(got["state"]),
                expected_state=plan.expected_state,
                total_cents=int(got["total"]),
                currency=str(got["currency"]),
                steps=int(got["steps"]),
                history_entries=len(history),
                node=where.node,
                age=where.age,
                nodes_visited=visited,
            )
        )
    return rows


def _flow(
    cluster: LocalCluster,
    modules: dict[str, Path],
    on_event: Callable[[Event], None],
    progress: Progress,
) -> tuple[list[Event], KillReport, list[VoucherRow], dict[str, Any], list[str]]:
    flow = _Flow(cluster, on_event)
    with Client(cluster.zk, cluster.name) as client:
        progress("creating the parties")
        for party in PARTIES:
            client.create(
                modules[party.module],
                name=party.atom,
                on=party.site,
                aliases=list(party.aliases),
                init={"name": party.person, **party.init},
            )
            flow.record("-", "party", f"{party.person}, {' '.join(party.aliases)}", party.atom)
        going = [p for p in PLANS if p.expected_state == "archived"]
        threads = [
            threading.Thread(
                target=_run_thread, args=(flow, plan, modules["voucher"]), name=plan.id
            )
            for plan in PLANS
        ]
        progress(f"running {len(PLANS)} vouchers concurrently")
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + PHASE_TIMEOUT_S
            with flow.arrived:
                while len(flow.at_accounting) < len(going) and not flow.failed.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise HermesError(
                            f"only {len(flow.at_accounting)} of {len(going)} vouchers reached "
                            f"accounting within {PHASE_TIMEOUT_S:.0f} s"
                        )
                    flow.arrived.wait(left)
            flow.check()
            progress(f"killing node {KILLED_SITE} with SIGKILL")
            kill = _kill_and_recover(flow, client, going)
            if not kill.intact:
                raise HermesError(f"state lost in the recovery from node {KILLED_SITE}: {kill}")
        except BaseException as exc:
            flow.fail(exc)
        finally:
            flow.go_on.set()
            for thread in threads:
                thread.join(PHASE_TIMEOUT_S)
        if flow.errors:
            first = flow.errors[0]
            if isinstance(first, _Abort):
                first = next((e for e in flow.errors if not isinstance(e, _Abort)), first)
            raise first
        progress("collecting the final state")
        rows = _final_rows(client, flow.events)
        ledger = client.atom("accounting").ledger()
        archived = client.atom("archive").ids()
    return flow.events, kill, rows, ledger, archived


def _check(report: DemoReport) -> None:
    """The demo's promises; a broken one is an error, not a quiet table."""
    for row in report.vouchers:
        if row.state != row.expected_state:
            raise HermesError(f"voucher {row.id} ended {row.state}, expected {row.expected_state}")
        if row.steps != row.history_entries:
            raise HermesError(
                f"voucher {row.id}: {row.steps} steps recorded, {row.history_entries} in history"
            )
    paid = sum(r.total_cents for r in report.vouchers if r.state == "archived")
    if report.ledger_total_cents != paid:
        raise HermesError(
            f"ledger {money(report.ledger_total_cents)} differs from the vouchers paid "
            f"{money(paid)}"
        )
    expected_archive = sorted(r.id for r in report.vouchers if r.state == "archived")
    if sorted(report.archived) != expected_archive:
        raise HermesError(f"archive holds {report.archived}, expected {expected_archive}")


@contextlib.contextmanager
def _home() -> Iterator[Path]:
    """$HERMESX_HOME, or a temporary one (removed afterwards unless the run failed)."""
    if os.environ.get("HERMESX_HOME"):
        yield Path(os.environ["HERMESX_HOME"])
        return
    home = Path(tempfile.mkdtemp(prefix="hermesx-demo-"))
    os.environ["HERMESX_HOME"] = str(home)
    ok = False
    try:
        yield home
        ok = True
    finally:
        os.environ.pop("HERMESX_HOME", None)
        if ok:
            shutil.rmtree(home, ignore_errors=True)


def run(
    zk: str | None = None,
    *,
    progress: Progress | None = None,
    on_event: Callable[[Event], None] | None = None,
    session_timeout: float = SESSION_TIMEOUT_S,
) -> DemoReport:
    """Run the whole demo on a fresh local cluster and return what happened.

    ``zk``: an existing ZooKeeper to use (connect string); None starts one.
    ``on_event`` sees each timeline event as it happens. Everything started
    here is stopped before returning. Raises HermesError when a step fails
    or a promise of the demo (states, totals, history, ledger) is broken.
    """
    say = progress or (lambda _msg: None)
    show = on_event or (lambda _event: None)
    started = time.monotonic()
    say("building the atoms")
    modules = build_atoms()
    name = f"voucher-demo-{uuid.uuid4().hex[:8]}"
    with _home() as home:
        cluster = LocalCluster(name, session_timeout=session_timeout)
        try:
            cluster.up(list(SITES), zk=zk, progress=say)
            setup_s = time.monotonic() - started
            flow_started = time.monotonic()
            events, kill, rows, ledger, archived = _flow(cluster, modules, show, say)
            flow_s = time.monotonic() - flow_started
        except HermesError as exc:
            raise type(exc)(f"{exc} (cluster logs in {cluster.dir})") from exc
        finally:
            with contextlib.suppress(OSError):  # a closed stderr: stop the cluster all the same
                say("stopping the cluster")
            cluster.down()
        log.debug("demo home %s done", home)
    report = DemoReport(
        cluster=name,
        sites=tuple(s.name for s in SITES),
        setup_s=round(setup_s, 3),
        flow_s=round(flow_s, 3),
        timeline=tuple(events),
        kill=kill,
        vouchers=tuple(rows),
        ledger_total_cents=int(ledger["total"]),
        ledger_count=int(ledger["count"]),
        archived=tuple(str(i) for i in archived),
    )
    _check(report)
    return report


# ---------------------------------------------------------------- output


def _compress_hops(hops: Sequence[str]) -> str:
    """The path of a call, with repeated retries of one pair of hops shown once with a count."""
    parts: list[str] = []
    i = 0
    while i < len(hops):
        pair = tuple(hops[i : i + 2])
        n = 1
        while len(pair) == 2 and tuple(hops[i + 2 * n : i + 2 * n + 2]) == pair:
            n += 1
        if n > 1:
            parts.append(f"({' > '.join(pair)}) x{n}")
            i += 2 * n
        else:
            parts.append(hops[i])
            i += 1
    return " > ".join(parts)


def format_event(event: Event) -> str:
    where = f"{event.atom} {event.where}" if event.where else event.atom
    hops = f"  [{_compress_hops(event.hops)}]" if event.hops else ""
    return f"{event.t:6.2f}s  {event.voucher:6}  {event.step:16} {where:26} {event.detail}{hops}"


def format_table(report: DemoReport) -> str:
    header = ("VOUCHER", "EMPLOYEE", "STATE", "TOTAL", "STEPS", "ENDED ON", "ROUTE")
    rows = [
        (
            r.id,
            r.employee,
            r.state,
            money(r.total_cents, r.currency),
            str(r.steps),
            f"{r.node}@{r.age}",
            " > ".join(r.nodes_visited),
        )
        for r in report.vouchers
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    kill = report.kill
    lines += [
        "",
        f"ledger: {money(report.ledger_total_cents)} paid for {report.ledger_count} vouchers; "
        f"archive holds {', '.join(report.archived)}",
        f"kill: node {kill.node} (pid {kill.pid}) at +{kill.at_s:.2f}s, session timeout "
        f"{kill.session_timeout_s:g} s; recovered "
        + ", ".join(f"{r.atom} -> {r.to_node}@{r.age} in {r.after_s:.1f} s" for r in kill.recovered)
        + ("; nothing lost" if kill.intact else "; STATE LOST"),
        f"set-up {report.setup_s:.1f} s, flow {report.flow_s:.1f} s",
    ]
    return "\n".join(lines)


def run_demo(json_output: bool, progress: Callable[[str], None]) -> None:
    """``hermesx demo expense-voucher``: run the demo and print it (text or one JSON document)."""
    zk = os.environ.get("HERMESX_ZK") or None
    if json_output:
        report = run(zk, progress=progress)
        print(json.dumps(report.as_dict(), indent=2))
        return
    print(f"{'TIME':>7}  {'VCHR':6}  {'STEP':16} {'ATOM NODE@AGE':26} DETAIL  [PATH]", flush=True)

    def show(event: Event) -> None:
        print(format_event(event), flush=True)

    report = run(zk, progress=progress, on_event=show)
    print()
    print(format_table(report))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="demo.py", description="The hermesx expense-voucher demo."
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"… {message}", file=sys.stderr, flush=True)

    try:
        run_demo(args.json, progress)
    except HermesError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        if args.json:
            print(json.dumps({"error": message, "kind": exc.kind, "type": type(exc).__name__}))
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
