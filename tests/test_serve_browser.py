"""The dashboard in a real headless Chromium (Debian's `chromium` + `chromium-driver`).

It opens the dashboard, starts a gated workflow from the page, clicks Approve on the
run's page and sees the run complete. Set ``ORCH_SERVE_SCREENSHOT=docs/serve-run.png`` to
keep the screenshot of the run page.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servekit import TOKENS, Served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's `chromium` and `chromium-driver` (.ci/run installs them with apt)",
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("browser")).start()
    try:
        yield served
    finally:
        served.stop()
    assert "Traceback" not in "".join(served.log), "".join(served.log)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(browser: Any) -> Any:
    """A 60 s wait that retries when the page re-rendered the element it was reading, or
    has not laid it out yet (not interactable)."""
    from selenium.common.exceptions import (
        ElementNotInteractableException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    settling = (StaleElementReferenceException, ElementNotInteractableException)
    return WebDriverWait(browser, 60, ignored_exceptions=settling)


def _click(browser: Any, by: str, what: str) -> None:
    """Click an element that live updates may replace at any moment (retried, bounded)."""
    _wait(browser).until(lambda d: d.find_element(by, what).click() or True)


def test_start_approve_and_watch_it_complete(srv: Served, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    wait = _wait(browser)
    browser.get(srv.url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKENS["alice"][1])
    browser.find_element(By.ID, "save-token").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "alice (operate)"))
    wait.until(lambda d: "gate" in [o.text for o in Select(d.find_element(By.ID, "wf")).options])
    Select(browser.find_element(By.ID, "wf")).select_by_visible_text("gate")
    browser.find_element(By.ID, "inputs").send_keys("query=CTE of ULE")
    browser.find_element(By.ID, "start-btn").click()
    wait.until(ec.url_contains("/runs/wf-"))
    run_id = browser.current_url.rsplit("/", 1)[-1]
    wait.until(ec.element_to_be_clickable((By.ID, "approve-review")))
    wait.until(
        lambda d: (
            "state-waiting_approval" in d.find_element(By.ID, "node-review").get_attribute("class")
        )
    )
    _click(browser, By.ID, "approve-review")
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-status") == "complete")
    wait.until(
        lambda d: "state-complete" in d.find_element(By.ID, "node-review").get_attribute("class")
    )
    assert not browser.find_element(By.ID, "cancel").is_displayed()  # nothing left to cancel
    for step in ("research", "review"):
        _click(browser, By.CSS_SELECTOR, f"details[data-step='{step}'] summary")
        wait.until(
            lambda d, step=step: d.find_element(
                By.CSS_SELECTOR, f"details[data-step='{step}']"
            ).get_attribute("open")
        )
    shot = tmp_path / "serve-run.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("ORCH_SERVE_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    with srv.client("alice") as c:
        doc = c.get(f"/v1/runs/{run_id}").json()
    assert doc["status"] == "complete"
    assert doc["steps"]["review"]["gate"]["by"] == "alice"
    assert doc["started_by"] == "alice"
    assert "CTE of ULE" in browser.page_source
    wait.until(lambda d: "gate: approved by alice" in d.find_element(By.ID, "step-review").text)


def test_answer_an_agents_question_from_the_page(srv: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    with srv.client("alice") as c:
        run_id = c.post("/v1/runs", json={"workflow": "ask"}).json()["runId"]
    wait = _wait(browser)
    browser.get(srv.url + "/")
    browser.execute_script("localStorage.setItem('orchToken', arguments[0])", TOKENS["bob"][1])
    browser.get(f"{srv.url}/runs/{run_id}")
    wait.until(lambda d: "Which temperature range?" in d.find_element(By.ID, "step-research").text)
    # what is typed survives live updates of the table
    wait.until(lambda d: d.find_element(By.ID, "answer-text-research").send_keys("0-50 °C") or True)
    wait.until(
        lambda d: d.find_element(By.ID, "answer-text-research").get_attribute("value") == "0-50 °C"
    )
    _click(browser, By.ID, "answer-research")
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-status") == "complete")
    with srv.client("alice") as c:
        doc = c.get(f"/v1/runs/{run_id}").json()
    assert doc["steps"]["research"]["question"]["by"] == "bob"
    assert doc["steps"]["research"]["question"]["answer"] == "0-50 °C"
