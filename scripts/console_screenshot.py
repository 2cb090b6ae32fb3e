"""Take docs/console.png: the web console of a small local cluster, with a TAD chain drawn.

Run: `.venv/bin/python scripts/console_screenshot.py [OUT.png]`. It starts a
private cluster with its gateway, moves an atom along three nodes, keeps a
few calls going, opens the console in Debian's headless Chromium and saves
what it shows.
"""

from __future__ import annotations

import pathlib
import sys
import threading
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from hermesx.client import Client
from hermesx.local.cluster import NodeSpec, private_cluster
from hermesx.runtime.build import build_examples
from hermesx.testing.wait import wait_until

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _text(browser: webdriver.Chrome, selector: str) -> str:
    found = browser.find_elements(By.CSS_SELECTOR, selector)
    return str(found[0].text) if found else ""


def main(out: pathlib.Path) -> None:
    wasm = {p.stem: p for p in build_examples(quiet=True)}
    nodes = [NodeSpec("n1", ("eu",)), NodeSpec("n2", ("eu",)), NodeSpec("n3", ("us",))]
    with private_cluster("shot", nodes, session_timeout=2.0) as cluster:
        url = cluster.start_gateway()
        stop = threading.Event()
        with Client(cluster.zk, cluster.name) as client:

            def load() -> None:
                while not stop.wait(0.02):
                    client.atom("visits").incr(1)

            options = webdriver.ChromeOptions()
            options.binary_location = "/usr/bin/chromium"
            for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
                options.add_argument(flag)
            options.add_argument("--ignore-certificate-errors")
            options.add_argument("--window-size=1400,900")
            browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:
                browser.get(url)
                wait_until(lambda: "live" in _text(browser, "#link"), 15, "the page connected")
                client.create(wasm["counter"], name="c1", on="n1", aliases=["team=counters"])
                client.create(wasm["kvstore"], name="orders", on="n2", checkpoint="every:10")
                client.create(wasm["counter"], name="visits", on="n3", tags=["us"])
                client.create(wasm["counter"], name="archive", on="n1")
                client.atom("c1").incr(5)
                time.sleep(0.8)
                client.passivate("archive")
                row = '#atoms tr[data-name="c1"]'
                wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, row), 15, "c1 listed")
                caller = threading.Thread(target=load, daemon=True)
                caller.start()
                client.migrate("c1", "n2")
                time.sleep(1.0)
                client.migrate("c1", "n3")
                time.sleep(1.0)
                browser.find_element(By.CSS_SELECTOR, row).click()
                wait_until(
                    lambda: "holds it" in _text(browser, '#chain .stash[data-node="n3"]'),
                    10,
                    "the chain drawn",
                )
                browser.find_element(By.ID, "invoke-method").send_keys("incr")
                browser.find_element(By.ID, "invoke-args").send_keys("1")
                browser.find_element(By.ID, "invoke").click()
                wait_until(
                    lambda: '"result":6' in _text(browser, "#answer"),
                    10,
                    "the page's call answered",
                )
                time.sleep(1.5)  # a few readings: calls/s shows
                browser.save_screenshot(str(out))
            finally:
                stop.set()
                browser.quit()
    print(f"saved {out}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "console.png")
