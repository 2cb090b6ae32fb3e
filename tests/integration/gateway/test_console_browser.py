"""The web console in a real headless Chromium, as an operator uses it (docs/DESIGN.md §13).

The page lists atoms and nodes; a move made from the CLI shows on the page
within 2 s without a reload; a move made with the page's control changes
what `hermesx locate` prints; a node killed with kill -9 shows as gone and
its atoms show on their new nodes once recovered.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from conftest import Gateway, hermesx_json
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from hermesx.client import Client
from hermesx.testing.wait import wait_until

pytestmark = pytest.mark.integration


def _cell(browser: Any, selector: str) -> str | None:
    """The text of the element ``selector`` now (None when the page has none yet)."""
    try:
        return str(browser.find_element(By.CSS_SELECTOR, selector).text)
    except WebDriverException:  # not there yet, or re-drawn under us
        return None


def _atom_node(browser: Any, name: str) -> str | None:
    return _cell(browser, f'#atoms tr[data-name="{name}"] td.node')


def _node_state(browser: Any, node: str) -> str | None:
    return _cell(browser, f'#nodes tr[data-node="{node}"] td.state')


def test_the_console_follows_the_cluster_live(
    recovering_gateway: Gateway, browser: Any, atoms: dict[str, pathlib.Path], unique_name: str
) -> None:
    gateway = recovering_gateway
    cluster = gateway.cluster
    one, two = f"{unique_name}a", f"{unique_name}b"
    with Client(cluster.zk, cluster.name) as client:
        client.create(atoms["counter"], name=one, on="n1")
        client.create(atoms["counter"], name=two, on="n1")
        browser.get(gateway.url)

        # Atoms and nodes are listed.
        wait_until(lambda: _atom_node(browser, one) == "n1", 15, "the page to list the atom")
        assert _atom_node(browser, two) == "n1"
        for node in ("n1", "n2", "n3"):
            wait_until(lambda n=node: _node_state(browser, n) == "live", 10, f"{node} live")

        # A move made from the CLI shows within 2 s, without a reload.
        page = browser.execute_script("return window.performance.timeOrigin")
        hermesx_json(cluster, "migrate", one, "n2")
        wait_until(lambda: _atom_node(browser, one) == "n2", 2.0, "the CLI's move on the page")
        assert browser.execute_script("return window.performance.timeOrigin") == page
        kinds = browser.find_elements(By.CSS_SELECTOR, "#events li[data-kind=migrate]")
        assert any(one in k.text for k in kinds)

        # A move made with the page's control: `hermesx locate` prints the new node.
        browser.find_element(By.CSS_SELECTOR, f'#atoms tr[data-name="{one}"]').click()
        wait_until(
            lambda: _cell(browser, '#chain .stash[data-node="n2"]'), 10, "the TAD chain drawn"
        )
        Select(browser.find_element(By.ID, "migrate-node")).select_by_value("n3")
        browser.find_element(By.ID, "migrate").click()
        wait_until(
            lambda: hermesx_json(cluster, "locate", one)["node"] == "n3",
            15,
            "locate to print the page's move",
        )
        wait_until(lambda: _atom_node(browser, one) == "n3", 5, "the page's move on the page")
        # The chain now runs n1 -> n2 -> n3: the stashes the page draws say so.
        wait_until(
            lambda: "holds it" in (_cell(browser, '#chain .stash[data-node="n3"]') or ""),
            5,
            "n3 drawn holding the atom",
        )
        assert "n3" in (_cell(browser, '#chain .stash[data-node="n2"]') or "")

        # kill -9 of the node hosting the other atom: gone, and the atom shows elsewhere.
        cluster.kill("node-n1")
        wait_until(lambda: _node_state(browser, "n1") == "gone", 20, "n1 shown gone")
        client.atom(two).get()  # a call finds it wherever it was recovered
        wait_until(lambda: _atom_node(browser, two) in ("n2", "n3"), 20, "the atom shown recovered")
        recovered = browser.find_elements(By.CSS_SELECTOR, "#events li[data-kind=recover]")
        assert any(two in r.text for r in recovered)
