"""The expense-voucher demo end to end, and the voucher's own guards (examples/expense_voucher).

The demo runs on the session's ZooKeeper with real node and storesite
processes, kills the ``reading`` node with SIGKILL mid-flow, and must finish
with every voucher in its expected state, every total and history intact.
The other tests drive the voucher atom directly: local-only steps refuse to
run away from the voucher, and bad input is a clear MethodError that leaves
the voucher working.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from hermesx.client import Client
from hermesx.core.errors import MethodError
from hermesx.local.cluster import LocalCluster, NodeSpec
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration

DEMO = pathlib.Path(__file__).resolve().parents[2] / "examples" / "expense_voucher" / "demo.py"


def _load_demo() -> ModuleType:
    name = "hermesx_demo_expense_voucher"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def _expected_total(plan: Any) -> int:
    amounts = [line.amount for line in plan.lines]
    if plan.fix is not None:
        index, line = plan.fix
        amounts[index] = line.amount
    return sum(amounts)


# ---------------------------------------------------------------- the demo


@pytest.mark.timeout(240)
def test_demo_finishes_every_voucher_with_nothing_lost_across_the_node_kill(
    zk_server: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERMESX_HOME", str(tmp_path))
    events: list[Any] = []
    report = demo.run(zk_server.connect_string, on_event=events.append)

    rows = {row.id: row for row in report.vouchers}
    assert set(rows) == {plan.id for plan in demo.PLANS}
    for plan in demo.PLANS:
        row = rows[plan.id]
        assert row.state == plan.expected_state, row
        assert row.total_cents == _expected_total(plan), row
        # History is complete: the count the voucher keeps matches its entries.
        assert row.steps == row.history_entries, row
    assert rows["V-1005"].state == "rejected" and rows["V-1005"].node == "boston"
    # The corrected voucher went back to its employee and to the manager again.
    assert rows["V-1003"].nodes_visited[:4] == ("boston", "paris", "boston", "paris")

    paid = [plan for plan in demo.PLANS if plan.expected_state == "archived"]
    assert report.ledger_total_cents == sum(_expected_total(p) for p in paid)
    assert report.ledger_count == len(paid)
    assert sorted(report.archived) == sorted(p.id for p in paid)
    assert all("reading" in rows[p.id].nodes_visited for p in paid)

    kill = report.kill
    assert kill.node == "reading" and kill.signal == "SIGKILL"
    assert sorted(kill.vouchers_there) == sorted(p.id for p in paid)
    assert kill.ledger_before_cents > 0
    assert kill.ledger_after_cents == kill.ledger_before_cents
    assert len(kill.recovered) == len(paid)
    for rec in kill.recovered:
        assert rec.to_node != "reading", rec
        assert rec.intact, rec
        assert rec.history_entries == rec.steps_before > 0
    # Vouchers waiting for payment were in a different state from those paid
    # before the kill: both kinds came back as they were.
    assert {rec.state_after for rec in kill.recovered} == {"approved", "disbursed"}

    steps = [e.step for e in report.timeline]
    assert steps.index("kill") < steps.index("recovered")
    assert [e.step for e in events] == steps
    # Every call after the kill that reached the dead node found its way on.
    first_after = next(e for e in report.timeline if e.step == "recovered")
    assert any(h.startswith("storesite") for h in first_after.hops)
    assert first_after.where and not first_after.where.startswith("reading@")


# ---------------------------------------------------------------- the voucher's guards


@pytest.fixture(scope="module")
def sites(cluster_factory: Any) -> LocalCluster:
    cluster: LocalCluster = cluster_factory([NodeSpec("boston"), NodeSpec("paris")])
    return cluster


@pytest.fixture(scope="module")
def modules() -> dict[str, pathlib.Path]:
    built: dict[str, pathlib.Path] = demo.build_atoms()
    return built


@pytest.fixture
def client(sites: LocalCluster) -> Iterator[Client]:
    with Client(sites.zk, sites.name) as c:
        yield c


_numbers = iter(range(1, 10_000))


def _voucher(client: Client, modules: dict[str, pathlib.Path], dept: str) -> tuple[str, str]:
    """A new draft voucher on boston: (atom name, id)."""
    n = next(_numbers)
    vid, name = f"T-{n}", f"voucher-t{n}"
    client.create(
        modules["voucher"],
        name=name,
        on="boston",
        init={"id": vid, "employee": "Tess", "dept": dept, "currency": "USD"},
    )
    return name, vid


LINE = {"date": "2024-05-02", "description": "Train", "amount": 12_000, "currency": "USD"}


def _wait_on(client: Client, name: str, node: str) -> None:
    wait_until(lambda: client.atom(name).where() == node, 10.0, f"{name} to arrive on {node}")


def test_approval_refuses_to_run_unless_the_voucher_came_to_the_manager(
    client: Client, modules: dict[str, pathlib.Path]
) -> None:
    client.create(
        modules["manager"],
        name="mgr-local",
        on="paris",
        aliases=["role=manager", "dept=local"],
        init={"name": "Maria", "limit": 100_000},
    )
    client.create(
        modules["employee"],
        name="emp-tess",
        on="boston",
        aliases=["role=employee", "dept=local"],
        init={"name": "Tess"},
    )
    voucher, vid = _voucher(client, modules, "local")
    client.atom(voucher).add_line(LINE)
    assert client.atom("emp-tess").submit(voucher) == "submitted"

    with pytest.raises(
        MethodError,
        match=f"approve must run where the voucher is: voucher {vid} "
        "is on boston, Maria is on paris",
    ):
        client.atom("mgr-local").review(voucher)
    # Nor can anyone claim to be elsewhere from outside.
    with pytest.raises(MethodError, match="must run where the voucher is"):
        client.atom(voucher).approve({"node": "paris", "actor": "Mallory"})
    got = client.atom(voucher).get()
    assert got["state"] == "submitted" and got["node"] == "boston"

    route = client.atom(voucher).route("manager")
    assert route == {"from": "boston", "to": "paris", "party": "Maria", "moving": True}
    _wait_on(client, voucher, "paris")
    assert client.atom("mgr-local").review(voucher) == {"decision": "approved", "reason": ""}
    history = client.atom(voucher).history()
    assert [h["step"] for h in history] == ["create", "add_line", "submit", "route", "approve"]
    assert [h["node"] for h in history][-1] == "paris"
    assert history[-1]["actor"] == "Maria" and history[-1]["state"] == "approved"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({**LINE, "amount": -500}, "amount must be between 1 and 100000000 cents, got -500"),
        ({**LINE, "amount": "12.00"}, "amount must be an integer number of cents"),
        ({**LINE, "date": "May 2nd"}, "date must be a str YYYY-MM-DD, got May 2nd"),
        ({k: v for k, v in LINE.items() if k != "date"}, "date must be a str YYYY-MM-DD"),
        ({**LINE, "description": ""}, "description must be a str of 1-96 bytes"),
        ({**LINE, "currency": "EUR"}, "line currency EUR differs from the voucher's USD"),
        ({**LINE, "tip": 5}, "unknown field tip"),
        (["2024-05-02", "Train", 12_000, "USD"], "expected a map of date, description"),
    ],
)
def test_bad_line_is_a_clear_method_error_and_the_voucher_keeps_working(
    client: Client, modules: dict[str, pathlib.Path], line: Any, message: str
) -> None:
    voucher, _ = _voucher(client, modules, "local")
    assert client.atom(voucher).add_line(LINE) == {"line": 0, "total": 12_000}
    with pytest.raises(MethodError, match=f"add_line: {message}"):
        client.atom(voucher).add_line(line)
    # Nothing of the bad line stuck; the voucher takes the next good one.
    assert client.atom(voucher).add_line({**LINE, "amount": 3_050}) == {
        "line": 1,
        "total": 15_050,
    }
    got = client.atom(voucher).get()
    assert [ln["amount"] for ln in got["lines"]] == [12_000, 3_050]
    assert got["state"] == "draft"
    assert [h["step"] for h in client.atom(voucher).history()] == [
        "create",
        "add_line",
        "add_line",
    ]


def test_steps_out_of_order_are_refused_with_the_voucher_state(
    client: Client, modules: dict[str, pathlib.Path]
) -> None:
    voucher, vid = _voucher(client, modules, "local")
    here = {"node": "boston", "actor": "Tess"}
    with pytest.raises(MethodError, match="submit: the voucher has no lines"):
        client.atom(voucher).submit(here)
    with pytest.raises(
        MethodError, match=f"disburse: voucher {vid} is draft; this step needs it approved"
    ):
        client.atom(voucher).disburse(here)
    with pytest.raises(MethodError, match="fix_line: index must be a line number from 0 to -1"):
        client.atom(voucher).fix_line({"index": 0, **LINE})
    client.atom(voucher).add_line(LINE)
    assert client.atom(voucher).submit(here) == "submitted"
    with pytest.raises(
        MethodError,
        match=r"add_line: voucher T-\d+ is submitted; this step needs it draft or rejected",
    ):
        client.atom(voucher).add_line(LINE)
    with pytest.raises(MethodError, match="reject: a reason is required"):
        client.atom(voucher).reject(here)
    assert client.atom(voucher).get()["state"] == "submitted"
