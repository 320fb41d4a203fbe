"""Gates through `orchestrate serve`: a gate's timeout takes its default in the server, and
an approval carries a gate's typed input (API, `workflow approve --server`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import workflow
from tests.servekit import GATEWAY_TOKEN, TOKENS, Served


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("servegates")).start()
    try:
        yield served
    finally:
        served.stop()
    assert "Traceback" not in "".join(served.log), "".join(served.log)


def _start(c: httpx.Client, name: str, **inputs: str) -> str:
    r = c.post("/v1/runs", json={"workflow": name, "inputs": inputs})
    assert r.status_code == 201, r.text
    return str(r.json()["runId"])


def _wait(c: httpx.Client, run_id: str, until: str = "end") -> dict[str, Any]:
    r = c.get(f"/v1/runs/{run_id}/wait", params={"until": until, "timeout": 60})
    doc: dict[str, Any] = r.json()
    assert doc["done"], doc
    return doc


def test_the_server_applies_a_gate_timeout_default_and_continues(srv: Served) -> None:
    """Nobody decides: `review` goes ahead after 2 s (default approved), then `publish` is
    rejected after 1 s (default rejected), with no `workflow resume` and no API call."""
    with srv.client("alice") as alice:
        run_id = _start(alice, "timed-gate", query="CTE of ULE")
        parked = _wait(alice, run_id, "parked")
        assert parked["status"] == "waiting_approval"
        assert parked["steps"]["review"]["status"] == "waiting_approval"
        done = _wait(alice, run_id)
    assert done["status"] == "failed", done  # a rejected gate fails the run
    review, publish = done["steps"]["review"], done["steps"]["publish"]
    assert review["status"] == "complete"
    assert review["gate"]["decision"] == "approved" and review["gate"]["by"] == "timeout"
    assert publish["status"] == "rejected"
    assert publish["gate"]["by"] == "timeout"
    assert publish["gate"]["reason"] == "no decision within 1 s (the gate's default)"


def test_a_decision_before_the_timeout_wins(srv: Served) -> None:
    with srv.client("alice") as alice, srv.client("bob") as bob:
        run_id = _start(alice, "late-gate", query="decided early")
        _wait(alice, run_id, "parked")
        r = bob.post(f"/v1/runs/{run_id}/steps/review/reject", json={"reason": "not now"})
        assert r.status_code == 200, r.text
        done = _wait(alice, run_id)
    assert done["steps"]["review"]["gate"]["by"] == "bob"
    assert done["steps"]["review"]["status"] == "rejected"
    assert done["steps"]["publish"]["status"] == "skipped"


def test_a_run_parked_before_its_timeout_stays_parked(srv: Served) -> None:
    """The clock does not decide early: an hour-long gate still waits after its run was
    looked at, resumed by the server and waited on."""
    with srv.client("alice") as alice, srv.client("bob") as bob:
        run_id = _start(alice, "late-gate", query="not yet")
        _wait(alice, run_id, "parked")
        r = bob.post(f"/v1/runs/{run_id}/resume")
        assert r.status_code == 200, r.text
        r = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 1})
        assert r.json()["done"] is False
        doc = alice.get(f"/v1/runs/{run_id}").json()
        assert doc["status"] == "waiting_approval" and "gate" not in doc["steps"]["review"]
        assert alice.post(f"/v1/runs/{run_id}/cancel").status_code == 200


def test_approve_takes_the_gate_input_and_checks_it(srv: Served) -> None:
    with srv.client("alice") as alice, srv.client("bob") as bob:
        run_id = _start(alice, "typed-gate", query="CTE of Zerodur")
        _wait(alice, run_id, "parked")
        url = f"/v1/runs/{run_id}/steps/review/approve"
        r = bob.post(url, json={})
        assert r.status_code == 400, r.text
        assert "give it as `input` in the request body" in r.json()["detail"]
        assert '"enum": ["quick", "full"]' in r.json()["detail"]
        r = bob.post(url, json={"input": {"depth": "deep"}})
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert "needs an input matching its schema" in detail and "/depth" in detail
        r = bob.post(url, json={"input": "full"})
        assert r.status_code == 400 and "is not of type 'object'" in r.json()["detail"]
        assert alice.get(f"/v1/runs/{run_id}").json()["status"] == "waiting_approval"
        r = bob.post(url, json={"input": {"depth": "full"}, "reason": "go"})
        assert r.status_code == 200, r.text
        assert r.json()["decision"]["input"] == {"depth": "full"}
        done = _wait(alice, run_id)
    assert done["status"] == "complete", done
    assert done["steps"]["review"]["gate"]["input"] == {"depth": "full"}
    assert done["steps"]["report"]["task"] == "a full report"


def test_workflow_approve_server_sends_the_input(srv: Served) -> None:
    with srv.client("alice") as alice:
        run_id = _start(alice, "typed-gate", query="CTE of Invar")
        _wait(alice, run_id, "parked")
    runner = CliRunner(env={"ORCH_TEST_GW_TOKEN": GATEWAY_TOKEN, "BOB": TOKENS["bob"][1]})
    base = ["approve", run_id, "review", "--server", srv.url, "--server-token-env", "BOB"]
    bad = runner.invoke(workflow, [*base, "--input", '{"depth": "deep"}'])
    assert bad.exit_code == 2, bad.output
    assert "needs an input matching its schema" in bad.stderr and "Traceback" not in bad.output
    res = runner.invoke(workflow, [*base, "--input", '{"depth": "quick"}'])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"approved `review`; the server continues run {run_id}."
    with srv.client("alice") as alice:
        done = _wait(alice, run_id)
    assert done["status"] == "complete", done
    assert done["steps"]["review"]["gate"]["input"] == {"depth": "quick"}
    assert done["steps"]["report"]["task"] == "a quick report"


def test_a_restarted_server_keeps_the_gate_clock(tmp_path: Any) -> None:
    """The server stops while a run waits at a timed gate; the next one applies the default
    (the gate clock is rebuilt from the journal when the server picks its runs up)."""
    served = Served(tmp_path).start()
    try:
        with served.client("alice") as alice:
            run_id = _start(alice, "timed-gate", query="across a restart")
            _wait(alice, run_id, "parked")
        served.kill9()
        served.start()
        with served.client("alice") as alice:
            done = _wait(alice, run_id)
    finally:
        served.stop()
    assert done["steps"]["review"]["gate"]["by"] == "timeout"
    assert done["steps"]["publish"]["gate"]["by"] == "timeout"
    assert "Traceback" not in "".join(served.log), "".join(served.log)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's `chromium` and `chromium-driver` (.ci/run installs them with apt)",
)
def test_the_dashboard_approves_with_the_gate_input(srv: Served, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import (
        ElementNotInteractableException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with srv.client("alice") as alice:
        run_id = _start(alice, "typed-gate", query="CTE of Clearceram")
        _wait(alice, run_id, "parked")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    browser = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    try:
        # the page re-renders its steps: wait out an element replaced or not laid out yet
        settling = (StaleElementReferenceException, ElementNotInteractableException)
        wait = WebDriverWait(browser, 60, ignored_exceptions=settling)
        browser.get(srv.url + "/")
        browser.execute_script("localStorage.setItem('orchToken', arguments[0])", TOKENS["bob"][1])
        browser.get(f"{srv.url}/runs/{run_id}")
        field = (By.ID, "gate-input-review")
        wait.until(lambda d: d.find_element(*field).send_keys('{"depth": "deep"}') or True)
        wait.until(lambda d: d.find_element(By.ID, "approve-review").click() or True)
        wait.until(
            lambda d: "needs an input matching its schema" in d.find_element(By.ID, "msg").text
        )
        wait.until(lambda d: d.find_element(*field).clear() or True)
        wait.until(lambda d: d.find_element(*field).send_keys('{"depth": "full"}') or True)
        wait.until(lambda d: d.find_element(*field).get_attribute("value") == '{"depth": "full"}')
        wait.until(lambda d: d.find_element(By.ID, "approve-review").click() or True)
        wait.until(
            lambda d: d.find_element(By.ID, "status").get_attribute("data-status") == "complete"
        )
    finally:
        browser.quit()
    with srv.client("alice") as alice:
        doc = alice.get(f"/v1/runs/{run_id}").json()
    assert doc["steps"]["review"]["gate"]["input"] == {"depth": "full"}
    assert doc["steps"]["review"]["gate"]["by"] == "bob"
    assert doc["steps"]["report"]["task"] == "a full report"
