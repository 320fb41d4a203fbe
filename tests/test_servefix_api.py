"""The API's answers to oversized, malformed and out-of-range requests.

A real `orchestrate serve` with `serve.max_body_bytes: 65536`; every error has the
documented shape `{"detail", "exit_code"}` and never repeats a large value back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.serve.app import quoted
from tests.servekit import Served

LIMIT = 65536


@pytest.fixture(scope="module")
def srv(tmp_path_factory: Any) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("servefix-api"), max_body_bytes=LIMIT).start()
    try:
        yield served
    finally:
        served.stop()
    assert "Traceback" not in "".join(served.log), "".join(served.log)


def test_a_body_over_the_limit_gets_413_by_its_length(srv: Served) -> None:
    with srv.client() as c:
        r = c.post("/v1/runs", json={"workflow": "gate", "inputs": {"query": "x" * 3 * LIMIT}})
        assert r.status_code == 413, r.text
        assert r.json()["exit_code"] == 2
        assert "65,536 bytes" in r.json()["detail"] and "max_body_bytes" in r.json()["detail"]
        assert len(r.text) < 400
        # under the limit, the same request starts the run
        ok = c.post("/v1/runs", json={"workflow": "gate", "inputs": {"query": "CTE of ULE"}})
        assert ok.status_code == 201, ok.text


def test_a_streamed_body_over_the_limit_gets_413_too(srv: Served) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"workflow": "gate", "inputs": {"query": "'
        for _ in range(40):
            yield b"y" * 8192
        yield b'"}}'

    with srv.client() as c:
        r = c.post("/v1/runs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "more than 65,536 bytes" in r.json()["detail"]


def test_errors_quote_a_long_value_cut_short(srv: Served) -> None:
    with srv.client() as c:
        r = c.post("/v1/runs", json={"workflow": "w" * 50000})
    assert r.status_code == 400 and len(r.text) < 400, r.text[:500]
    assert "(50,000 characters)" in r.json()["detail"]
    assert quoted("abc") == "'abc'" and quoted("a" * 200).endswith("… (200 characters)")


def test_an_engine_error_through_the_api_keeps_a_long_paths_file_name() -> None:
    from engine.serve.app import clip_quoted

    path = "/srv/" + "d" * 300 + "/nonexist.yaml"
    said = clip_quoted(f"config file `{path}` does not exist.")
    assert said.startswith("config file `/srv/ddd") and "/nonexist.yaml` (319 characters)" in said
    assert len(said) < 160, said
    assert clip_quoted("step `short` failed") == "step `short` failed"


def test_bad_json_wrong_type_and_missing_inputs_say_what_to_send(srv: Served) -> None:
    with srv.client() as c:
        bad = c.post("/v1/runs", content=b"{nope", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400
        assert "the body is not valid JSON" in bad.json()["detail"], bad.text
        assert "`1`" not in bad.json()["detail"]
        text = c.post(
            "/v1/runs",
            content=json.dumps({"workflow": "gate"}),
            headers={"Content-Type": "text/plain"},
        )
        assert text.status_code == 415, text.text
        assert "Content-Type: application/json" in text.json()["detail"]
        missing = c.post("/v1/runs", json={"workflow": "gate"})
        assert missing.status_code == 400
        assert "the JSON field `inputs.query`" in missing.json()["detail"], missing.text
        assert "--input" not in missing.json()["detail"]


def test_unknown_status_or_cursor_is_400(srv: Served) -> None:
    with srv.client() as c:
        r = c.get("/v1/runs", params={"status": "bogus"})
        assert r.status_code == 400 and "waiting_approval" in r.json()["detail"], r.text
        r = c.get("/v1/runs", params={"cursor": "zzz"})
        assert r.status_code == 400 and "`cursor`" in r.json()["detail"], r.text
        assert c.get("/v1/runs", params={"status": "complete"}).status_code == 200


def test_a_cursor_from_before_a_restart_is_reset(srv: Served) -> None:
    with srv.client() as c:
        now = c.get("/v1/events").json()["cursor"]
        r = c.get("/v1/events", params={"after": 99999999}).json()
    assert r["reset"] is True and r["events"] == []
    assert now <= r["cursor"] < 99999999


def test_the_limit_is_documented() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "serve.md").read_text()
    assert "max_body_bytes" in docs and "413" in docs


def test_a_long_input_name_is_cut_in_the_planner_error(srv: Served) -> None:
    with srv.client() as c:
        r = c.post("/v1/runs", json={"workflow": "gate", "inputs": {"q" * 30000: "x"}})
    assert r.status_code == 400, r.text[:300]
    assert "(30,000 characters)" in r.json()["detail"] and len(r.text) < 1000, r.text[:300]
