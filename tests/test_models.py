"""Model agents (kind `openai`) against a real chat-completions stand-in on 127.0.0.1."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from engine.config import Config, GatewayAgentConfig, config_from_dict, load_config
from engine.cost import compute_cost, price_for
from engine.delegate import DelegationRequest, Outcome, open_delegator
from engine.gateway.agents import Task, task_from_message
from engine.gateway.models import model_timeout, resolve_model, run_model_agent
from engine.handoff import load_handoff
from engine.message import render_message
from engine.record import reconcile
from tests import standins
from tests.helpers import demo_config, free_port, write_config
from tests.standins import Scripted, openai_error

#: The stand-in's fixture, made visible to this module's tests.
chat_api = standins.chat_api
KEY = "sk-test-5d1f0c2b9e8a7f6e"
KEY_ENV = "TEST_MODEL_KEY"

#: Seed 002's aliases, with prices per 1K tokens.
MODELS = {
    "aliases": {
        "cheap": "stepfun/step-3.5-flash:free",
        "primary": "moonshotai/kimi-k2.5",
        "coder": "qwen/qwen3-coder-next",
        "research": "google/gemini-3-pro-preview",
    },
    "prices": {
        "stepfun/step-3.5-flash:free": {"input": 0, "output": 0},
        "moonshotai/kimi-k2.5": {"input": 0.0006, "output": 0.0025},
        "qwen/qwen3-coder-next": {"input": 0.0002, "output": 0.0015},
        "google/gemini-3-pro-preview": {"input": 0.002, "output": 0.012},
    },
}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.delenv("TIMEOUT", raising=False)


def make_cfg(tmp_path: Path, agent: dict[str, Any], **extra: Any) -> Config:
    raw: dict[str, Any] = {
        "handoffs_dir": str(tmp_path / "handoffs"),
        "retry": {"delays": [0.05, 0.1, 0.2], "jitter": 0.0},
        "agents": {"webster": {"url": "local"}},
        "gateway": {"agents": {"webster": {"kind": "openai", **agent}}},
        "models": MODELS,
        **extra,
    }
    return config_from_dict(raw)


def make_task(cfg: Config, text: str = "Find CTE of Zerodur", run_id: str = "orch-1") -> Task:
    path = cfg.handoffs_dir / f"{run_id}.json"
    msg = render_message(
        task=text, run_id=run_id, agent="webster", caller="manager", handoff_path=path
    )
    return task_from_message("gw-1", "webster", msg, 30.0)


def run(cfg: Config, task: Task | None = None) -> dict[str, Any]:
    task = task or make_task(cfg)
    assert cfg.gateway is not None and task.handoff_path is not None
    run_model_agent(cfg.gateway.agents["webster"], task, cfg)
    return load_handoff(task.handoff_path, run_id=task.run_id, agent="webster")


def spec(**kw: Any) -> GatewayAgentConfig:
    return GatewayAgentConfig(
        name="m", kind="openai", argv=(), base_url="http://x/v1", model="cheap", **kw
    )


# -- cost ---------------------------------------------------------------------------------


def _by_hand(tokens_in: int, tokens_out: int, p_in: str, p_out: str) -> Fraction:
    return (tokens_in * Fraction(p_in) + tokens_out * Fraction(p_out)) / 1000


@pytest.mark.parametrize(
    ("tokens_in", "tokens_out", "p_in", "p_out", "expected"),
    [
        (1000, 1000, "0.5", "1.5", "2"),
        (1234, 567, "0.0005", "0.0015", "0.0014675"),
        (1234, 567, "0.0006", "0.0025", "0.0021579"),
        (2_000, 500, "3", "15", "13.5"),
        (2_000_000, 500_000, "3", "15", "13500"),
        (1, 1, "0.0001", "0.0002", "0.0000003"),
        (0, 0, "0.002", "0.012", "0"),
        (98_765, 4_321, "0", "0", "0"),
        (333, 777, "0.1", "0.3", "0.2664"),
    ],
)
def test_compute_cost_matches_hand_arithmetic(
    tokens_in: int, tokens_out: int, p_in: str, p_out: str, expected: str
) -> None:
    assert _by_hand(tokens_in, tokens_out, p_in, p_out) == Fraction(expected)
    got = compute_cost(tokens_in, tokens_out, {"input": float(p_in), "output": float(p_out)})
    assert got == float(Fraction(expected))


def test_compute_cost_rounds_to_8_places_and_rejects_negatives() -> None:
    assert compute_cost(1, 0, {"input": 0.000001, "output": 0}) == 0.0
    assert compute_cost(3, 0, {"input": 0.001, "output": 0}) == 0.000003
    assert compute_cost(10, 0, {"input": 0.0000005, "output": 0}) == 0.0  # half-even
    assert compute_cost(30, 0, {"input": 0.0000005, "output": 0}) == 0.00000002
    with pytest.raises(ValueError):
        compute_cost(-1, 0, {"input": 1, "output": 1})


def test_price_for_takes_the_first_name_with_a_price() -> None:
    assert price_for(MODELS, "unknown", "qwen/qwen3-coder-next") == {
        "input": 0.0002,
        "output": 0.0015,
    }
    assert price_for(MODELS, None, "nope") is None
    assert price_for({}, "qwen/qwen3-coder-next") is None


# -- aliases and timeouts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("cheap", "stepfun/step-3.5-flash:free"),
        ("primary", "moonshotai/kimi-k2.5"),
        ("coder", "qwen/qwen3-coder-next"),
        ("research", "google/gemini-3-pro-preview"),
        ("llama3.2:3b", "llama3.2:3b"),  # not an alias: a model name, passed through
    ],
)
def test_resolve_model(name: str, model: str) -> None:
    assert resolve_model(MODELS, name) == model
    assert resolve_model({}, name) == name


@pytest.mark.parametrize(
    ("kw", "task_timeout", "env", "expected"),
    [
        ({"thinking": "low"}, None, {}, 120.0),
        ({"thinking": "medium"}, 30.0, {}, 120.0),
        ({"thinking": "high"}, None, {}, 300.0),
        ({}, None, {}, 120.0),
        ({}, 45.0, {}, 45.0),
        ({"thinking": "high", "timeout": 60.0}, None, {}, 60.0),
        ({"thinking": "high"}, None, {"TIMEOUT": "600"}, 600.0),
        ({"timeout": 60.0}, None, {"TIMEOUT": "3600"}, 3600.0),
        ({"thinking": "low"}, None, {"TIMEOUT": "0.5"}, 0.5),
        ({"thinking": "high"}, None, {"TIMEOUT": "soon"}, 300.0),
        ({"thinking": "high"}, None, {"TIMEOUT": "-5"}, 300.0),
        ({"thinking": "high"}, None, {"TIMEOUT": ""}, 300.0),
    ],
    ids=[
        "low",
        "medium",
        "high",
        "default",
        "request",
        "agent-timeout",
        "env-over-thinking",
        "env-over-agent",
        "env-fraction",
        "env-garbage",
        "env-negative",
        "env-empty",
    ],
)
def test_model_timeout(
    kw: dict[str, Any], task_timeout: float | None, env: dict[str, str], expected: float
) -> None:
    assert model_timeout(spec(**kw), task_timeout, env=env) == expected


def test_model_timeout_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert model_timeout(spec(thinking="high")) == 300.0
    monkeypatch.setenv("TIMEOUT", "42")
    assert model_timeout(spec(thinking="high")) == 42.0


# -- one call -----------------------------------------------------------------------------


def test_answer_becomes_the_handoff_with_usage_and_cost(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(api_key=KEY, usage=(1234, 567))
    cfg = make_cfg(
        tmp_path,
        {
            "base_url": api.base_url,
            "model": "primary",
            "api_key_env": KEY_ENV,
            "system_prompt": "You are Webster.",
            "max_tokens": 800,
            "temperature": 0.2,
        },
    )
    handoff = run(cfg)
    assert handoff["status"] == "complete" and handoff["confidence"] == "medium"
    assert handoff["result"] == "model answer to: Find CTE of Zerodur"
    # 1234 * 0.0006 + 567 * 0.0025 = 0.7404 + 1.4175 = 2.1579; / 1000
    assert handoff["usage"] == {
        "input_tokens": 1234,
        "output_tokens": 567,
        "cost": 0.0021579,
        "model": "moonshotai/kimi-k2.5",
    }
    assert "model `moonshotai/kimi-k2.5`" in handoff["notes"]
    (req,) = api.completions
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert req.body == {
        "model": "moonshotai/kimi-k2.5",
        "messages": [
            {"role": "system", "content": "You are Webster."},
            {"role": "user", "content": "Find CTE of Zerodur"},
        ],
        "stream": False,
        "max_tokens": 800,
        "temperature": 0.2,
    }


def test_no_key_no_system_prompt_for_a_local_server(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api()
    cfg = make_cfg(tmp_path, {"base_url": api.base_url + "/", "model": "llama3.2:3b"})
    handoff = run(cfg)
    (req,) = api.completions
    assert "Authorization" not in req.headers
    assert req.body["model"] == "llama3.2:3b"
    assert req.body["messages"] == [{"role": "user", "content": "Find CTE of Zerodur"}]
    assert "max_tokens" not in req.body and "temperature" not in req.body
    # No price for this model: tokens are reported, cost is left out.
    assert handoff["usage"] == {"input_tokens": 1234, "output_tokens": 567, "model": "llama3.2:3b"}


def test_price_of_the_model_the_api_reports(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(usage=(1000, 2000), report_model="qwen/qwen3-coder-next")
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "qwen3-coder"})
    handoff = run(cfg)
    # 1000 * 0.0002 + 2000 * 0.0015 = 0.2 + 3.0 = 3.2; / 1000
    assert handoff["usage"] == {
        "input_tokens": 1000,
        "output_tokens": 2000,
        "cost": 0.0032,
        "model": "qwen/qwen3-coder-next",
    }


def test_only_the_task_text_is_sent_not_the_handoff_block(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api()
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap"})
    run(cfg, make_task(cfg, "Context line\n\nFind CTE of Zerodur"))
    content = api.completions[0].body["messages"][-1]["content"]
    assert content == "Context line\n\nFind CTE of Zerodur"


def test_429_then_200_honours_retry_after(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(
        script=[
            Scripted(429, openai_error("Rate limit reached", "rate_limit"), {"Retry-After": "0.4"})
        ]
    )
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap"})
    handoff = run(cfg)
    assert handoff["status"] == "complete"
    first, second = api.completions
    assert second.at - first.at >= 0.4  # retry.delays[0] is 0.05 s; Retry-After asked 0.4 s
    assert "2 attempt(s)" in handoff["notes"]


def test_500_then_200(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(script=[500, 503])
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap"})
    handoff = run(cfg)
    assert handoff["status"] == "complete" and len(api.completions) == 3
    assert handoff["usage"]["cost"] == 0.0


def test_400_gives_a_failed_handoff_with_the_apis_error(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(script=[Scripted(400, openai_error("model `nope` does not exist"))])
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "nope"})
    handoff = run(cfg)
    assert handoff["status"] == "failed" and handoff["confidence"] == "low"
    assert handoff["result"] == (
        f"the model endpoint {api.base_url}/chat/completions refused the request "
        "(HTTP 400: model `nope` does not exist)."
    )
    assert len(api.completions) == 1
    assert "usage" not in handoff


def test_401_never_shows_the_key(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(script=[Scripted(401, openai_error(f"Incorrect API key provided: {KEY}."))])
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap", "api_key_env": KEY_ENV})
    handoff = run(cfg)
    assert handoff["status"] == "failed"
    assert "HTTP 401: Incorrect API key provided: ***." in handoff["result"]
    assert KEY not in json.dumps(handoff)


def test_missing_key_env_fails_without_calling(
    tmp_path: Path,
    chat_api: Any,
    monkeypatch: Any,
) -> None:
    monkeypatch.delenv(KEY_ENV)
    api = chat_api()
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap", "api_key_env": KEY_ENV})
    handoff = run(cfg)
    assert handoff["status"] == "failed"
    assert handoff["result"] == (
        f"environment variable `{KEY_ENV}` (from `gateway.agents.webster`.api_key_env) is not "
        "set or empty: export the API key where the gateway runs."
    )
    assert api.requests == []


def test_retries_exhausted(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(script=[500] * 10)
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap"})
    handoff = run(cfg)
    assert handoff["status"] == "failed"
    assert handoff["result"] == (
        f"gave up on `stepfun/step-3.5-flash:free` at {api.base_url}/chat/completions after 4 "
        "attempts (last: HTTP 500: scripted 500)."
    )
    assert len(api.completions) == 4


def test_retry_after_beyond_the_timeout_gives_up_early(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(script=[Scripted(429, headers={"Retry-After": "600"})])
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap", "timeout": 60})
    t0 = time.monotonic()
    handoff = run(cfg)
    assert time.monotonic() - t0 < 30  # gave up at once, did not wait out the timeout
    assert handoff["status"] == "failed"
    assert "the next retry, in 600.0 s, would come after the 60 s timeout" in handoff["result"]


def test_slow_model_times_out(tmp_path: Path, chat_api: Any) -> None:
    # The answer comes far later than the timeout, so a busy host cannot let it in.
    api = chat_api(script=[Scripted(200, delay=60.0)])
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap", "timeout": 0.3})
    t0 = time.monotonic()
    handoff = run(cfg)
    assert time.monotonic() - t0 < 30  # not the 60 s the model would have taken
    assert handoff["status"] == "failed"
    assert handoff["result"].startswith(
        f"no answer from `stepfun/step-3.5-flash:free` at {api.base_url}/chat/completions "
        "within 0.3 s (1 attempt(s)); raise `gateway.agents.webster.timeout`"
    )


def test_timeout_env_var_applies(tmp_path: Path, chat_api: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("TIMEOUT", "0.3")
    api = chat_api(script=[Scripted(200, delay=60.0)])
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap", "thinking": "high"})
    handoff = run(cfg)
    assert "within 0.3 s" in handoff["result"]


def test_unreachable_endpoint(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port()}/v1"
    cfg = make_cfg(tmp_path, {"base_url": base, "model": "cheap"})
    handoff = run(cfg)
    assert handoff["status"] == "failed"
    assert handoff["result"].endswith("after 4 attempts (last: connection refused).")


def test_cut_at_max_tokens_is_partial(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(finish_reason="length")
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap", "max_tokens": 5})
    handoff = run(cfg)
    assert handoff["status"] == "partial"
    assert "cut at `max_tokens`" in handoff["notes"]


def test_empty_answer_is_failed(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(reply=lambda body: "")
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap"})
    handoff = run(cfg)
    assert handoff["status"] == "failed"
    assert handoff["result"] == "the model returned no text (finish_reason: stop)"
    assert handoff["usage"]["input_tokens"] == 1234


def test_no_handoff_block_means_no_call(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api()
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap"})
    assert cfg.gateway is not None
    run_model_agent(cfg.gateway.agents["webster"], task_from_message("gw-1", "webster", "hi"), cfg)
    assert api.requests == []


def test_a_delivered_handoff_is_not_overwritten(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api()
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "cheap"})
    task = make_task(cfg)
    assert task.handoff_path is not None
    task.handoff_path.parent.mkdir(parents=True)
    from engine.handoff import make_handoff, write_handoff

    write_handoff(
        task.handoff_path,
        make_handoff(run_id="orch-1", agent="webster", status="blocked", result="mine"),
    )
    assert run(cfg, task)["result"] == "mine"


# -- end to end: engine -> local gateway -> model stand-in --------------------------------


def e2e_config(tmp_path: Path, base_url: str, **agent: Any) -> Config:
    raw = demo_config(tmp_path, models=MODELS)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "openai",
        "base_url": base_url,
        "model": "primary",
        "api_key_env": KEY_ENV,
        **agent,
    }
    return load_config(write_config(tmp_path, raw))


def test_delegation_to_a_model_agent(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(api_key=KEY, usage=(2000, 1000))
    cfg = e2e_config(tmp_path, api.base_url)
    with open_delegator(cfg) as d:
        result = d.delegate(
            DelegationRequest(
                target="webster", task="Find CTE of Zerodur", caller="manager", timeout=60
            )
        )
    assert result.outcome is Outcome.COMPLETE and result.exit_code == 0
    rec = json.loads(result.record_path.read_text())
    assert rec["agent"] == "webster" and rec["status"] == "complete"
    assert rec["result"] == "model answer to: Find CTE of Zerodur"
    # 2000 * 0.0006 + 1000 * 0.0025 = 1.2 + 2.5 = 3.7; / 1000
    assert rec["usage"] == {
        "input_tokens": 2000,
        "output_tokens": 1000,
        "cost": 0.0037,
        "model": "moonshotai/kimi-k2.5",
    }
    assert rec["envelope"]["caller"] == "manager" and rec["envelope"]["late"] is False
    assert api.completions[0].body["messages"] == [
        {"role": "user", "content": "Find CTE of Zerodur"}
    ]


def test_delegation_gets_the_failure(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api(script=[Scripted(400, openai_error("context length exceeded"))])
    cfg = e2e_config(tmp_path, api.base_url)
    with open_delegator(cfg) as d:
        result = d.delegate(
            DelegationRequest(
                target="webster", task="Summarise everything", caller="manager", timeout=60
            )
        )
    assert result.outcome is Outcome.FAILED and result.exit_code == 1
    rec = json.loads(result.record_path.read_text())
    assert "HTTP 400: context length exceeded" in rec["result"]


def test_late_answer_is_recorded_after_a_timeout(tmp_path: Path, chat_api: Any) -> None:
    # The model answers 3 s in, well after the 0.4 s delegation timeout even on a busy host.
    api = chat_api(script=[Scripted(200, delay=3.0)])
    cfg = e2e_config(tmp_path, api.base_url, timeout=60)
    with open_delegator(cfg) as d:
        result = d.delegate(
            DelegationRequest(target="webster", task="Slow question", caller="manager", timeout=0.4)
        )
        assert result.outcome is Outcome.TIMEOUT
        deadline = time.monotonic() + 60
        rec: dict[str, Any] = {}
        while time.monotonic() < deadline:
            reconcile(cfg.handoffs_dir)
            rec = json.loads(result.record_path.read_text())
            if rec.get("status"):
                break
            time.sleep(0.05)
    assert rec["status"] == "complete" and rec["envelope"]["late"] is True
    assert rec["usage"]["input_tokens"] == 1234


def test_local_gateway_runs_the_model_agent(tmp_path: Path, chat_api: Any) -> None:
    from engine.gateway.server import LocalGateway

    api = chat_api()
    cfg = make_cfg(tmp_path, {"base_url": api.base_url, "model": "coder"})
    msg = render_message(
        task="Write a CSV parser",
        run_id="orch-2",
        agent="webster",
        caller="manager",
        handoff_path=cfg.handoffs_dir / "orch-2.json",
    )
    with LocalGateway(cfg, token="t0k3n", port=0) as gw:
        import httpx

        resp = httpx.post(
            f"{gw.url}/hooks/agent",
            json={"message": msg},
            headers={"Authorization": "Bearer t0k3n"},
            timeout=60,
        )
        assert resp.status_code == 200
        deadline = time.monotonic() + 60
        while gw.stats()["inflight"]["webster"] and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = gw.stats()
    assert stats["dispatched"] == {"webster": 1} and stats["inflight"] == {"webster": 0}
    handoff = load_handoff(cfg.handoffs_dir / "orch-2.json", run_id="orch-2", agent="webster")
    assert handoff["result"] == "model answer to: Write a CSV parser"
    # 1234 * 0.0002 + 567 * 0.0015 = 0.2468 + 0.8505 = 1.0973; / 1000
    assert handoff["usage"]["cost"] == 0.0010973
    assert api.completions[0].body["model"] == "qwen/qwen3-coder-next"


def test_docs_config_example_loads_and_resolves(tmp_path: Path) -> None:
    import re

    import yaml

    docs = (Path(__file__).parent.parent / "docs" / "agents.md").read_text(encoding="utf-8")
    raw = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", docs, flags=re.S)[0])
    cfg = config_from_dict(raw, path=tmp_path / "orchestrator.yaml")
    assert cfg.gateway is not None
    agents = cfg.gateway.agents
    # `manager` (echo) is the caller of the page's commands
    assert {a.kind for a in agents.values()} == {"openai", "command", "echo"}
    assert resolve_model(cfg.models, agents["webster"].model or "") == (
        "google/gemini-3-pro-preview"
    )
    assert model_timeout(agents["webster"], env={}) == 300.0
    assert model_timeout(agents["secretary"], env={}) == 60.0
    assert cfg.models["aliases"] == MODELS["aliases"] and cfg.models["prices"] == MODELS["prices"]
    # The worked example of the docs: 1234 in, 567 out on kimi-k2.5.
    price = price_for(cfg.models, "moonshotai/kimi-k2.5")
    assert price is not None and compute_cost(1234, 567, price) == 0.0021579
