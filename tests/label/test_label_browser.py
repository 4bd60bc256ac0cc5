"""`tlearn label` as a process, driven in headless Chromium: 30 images labelled by key presses, the
server SIGKILLed, restarted, and the table and the page's next image checked. The server listens
on a free 127.0.0.1 port it picks itself (--port 0) and is gone when the test ends."""
from __future__ import annotations

import csv
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tlearn.data import read_table

from conftest import TINY_MODEL, ServerProcess, make_folder

SETTLE_SECONDS = 120  # an answer, or a restarted page's first look, with the probe refitting beside it
CLASSES = ("cat", "dog", "fox")


class LabelServer(ServerProcess):
    """`tlearn label ... --port 0` in a subprocess; its address read from what it prints."""

    def __init__(self, pool: Path, table: Path, cache: Path):
        super().__init__([sys.executable, "-m", "tlearn", "label", "--pool", str(pool), "--labels", str(table),
                          "--classes", ",".join(CLASSES), "--port", "0", "--refit-every", "10", "--model",
                          TINY_MODEL, "--weights", "none", "--cache-dir", str(cache)])
        self.output: list[str] = []  # read on, so a full pipe never blocks the server
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=lambda s=stream: self.output.extend(s), daemon=True).start()


@pytest.fixture
def servers(server_processes):
    return lambda *args: server_processes(LabelServer(*args))


def test_label_30_by_keys_kill_restart_and_resume(tmp_path, servers):
    from infer.test_deploy import _browser, _chromium  # the report's browser helpers

    chromium, driver = _chromium()
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pool = make_folder(tmp_path / "pool", classes=CLASSES, per_class=12)
    table, cache = tmp_path / "labels.csv", tmp_path / "cache"
    started = []
    first = servers(pool, table, cache)
    started.append(first)
    browser = _browser(chromium, driver)

    def settled(answered: int) -> str:
        """The page's image once `answered` answers are in and no key waits: its path."""
        try:
            WebDriverWait(browser, SETTLE_SECONDS).until(lambda b: b.execute_script(
                "return document.body.dataset.busy === '0' && document.body.dataset.answered === arguments[0]",
                str(answered)))
        except TimeoutException:
            page = browser.execute_script("return [JSON.stringify(document.body.dataset), "
                                          "document.getElementById('error').textContent]")
            raise AssertionError(f"the page did not settle at {answered} answers: {page}; the servers said: "
                                 + "".join(line for server in started for line in server.output)) from None
        return browser.find_element(By.TAG_NAME, "body").get_attribute("data-current")

    try:
        browser.get(first.url + "/")
        body = browser.find_element(By.TAG_NAME, "body")
        given = []
        for answered in range(30):
            path = settled(answered)
            assert path and path not in given
            given.append(path)
            body.send_keys(str(CLASSES.index(path.split("/")[0]) + 1))  # digit keys: classes in --classes order
        expected_next = settled(30)
        assert browser.find_element(By.ID, "error").text == ""
        assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        first.kill()
        assert first.port_closed()

        with table.open(newline="") as handle:
            written = list(csv.DictReader(handle))
        assert [row["path"] for row in written] == given  # every answer, in order, once
        assert all(row["label"] == row["path"].split("/")[0] for row in written)
        assert len(read_table(table).rows) == 30  # valid as train reads it

        second = servers(pool, table, cache)
        started.append(second)
        browser.get(second.url + "/")
        resumed = settled(30)
        assert resumed == expected_next == httpx.get(f"{second.url}/api/state").json()["image"]["path"]
        assert "30 of 36 images answered" in browser.find_element(By.ID, "counts").text
        # the restarted server refits in the background; the page looks again until it is done
        WebDriverWait(browser, 120).until(lambda b: "%" in b.find_element(By.ID, "estimate").text)
        assert browser.find_element(By.ID, "item").text.startswith("the probe's guess: ")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#curve circle")) == 1
        browser.save_screenshot(str(tmp_path / "label-page.png"))
    finally:
        browser.quit()
