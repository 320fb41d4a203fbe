"""Agents of kind ``openai``: one call to an OpenAI-compatible chat-completions endpoint.

Example (``orchestrator.yaml``)::

    models:
      aliases: {cheap: "llama3.2:3b"}
      prices: {"llama3.2:3b": {input: 0.0, output: 0.0}}
    gateway:
      agents:
        webster: {kind: openai, base_url: "http://127.0.0.1:11434/v1", model: cheap}

The gateway posts the task text (the message up to its handoff block) as the user
message to ``{base_url}/chat/completions`` (non-streaming), then writes the handoff
itself: ``complete`` with the answer as the result and ``usage`` (tokens, cost, model),
or ``failed`` saying why. Works with Ollama, vLLM, OpenRouter and OpenAI. See
docs/agents.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from engine.config import MAX_SECONDS, Config, GatewayAgentConfig
from engine.cost import compute_cost, price_for
from engine.errors import ConfigError
from engine.gateway.agents import TIMEOUT_ENV, Task, private_dir, records_of, write_private
from engine.handoff import MODEL_NOTE
from engine.redact import install_log_filter, redact, register, register_url
from engine.registry import check_token
from engine.retry import Backoff, GiveUp, json_body, retry_after_seconds, send_with_retries

log = logging.getLogger("engine.gateway")
install_log_filter(log)

#: Seed 002: the default timeout of a task by thinking level, in seconds.
THINKING_TIMEOUTS: dict[str, float] = {"low": 120.0, "medium": 120.0, "high": 300.0}
#: The timeout when neither the agent, $TIMEOUT, thinking nor the request sets one.
DEFAULT_TIMEOUT = 120.0
#: HTTP statuses worth retrying: rate limited, or the server failed.
RETRYABLE_STATUS_CODES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
#: How much of an error body goes into a ``failed`` handoff.
ERROR_LIMIT = 500


@dataclass(frozen=True)
class _Answer:
    status: str
    result: str
    usage: dict[str, Any] | None
    notes: str
    artifacts: list[str] | None = None


def resolve_model(models: Mapping[str, Any], name: str) -> str:
    """The model ``name`` stands for in ``models["aliases"]`` (seed 002), else ``name``."""
    aliases = models.get("aliases") or {}
    target = aliases.get(name)
    return str(target) if isinstance(target, str) and target else name


def model_timeout(
    spec: GatewayAgentConfig,
    task_timeout: float | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> float:
    """Seconds a model agent's task may take, retries included.

    ``$TIMEOUT`` (a positive number) wins; then the agent's ``timeout``; then its
    ``thinking`` level (low/medium 120 s, high 300 s); then the request's
    ``timeoutSeconds``; then 120 s.
    """
    environ = os.environ if env is None else env
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if 0 < value <= MAX_SECONDS:  # also refuses nan and inf
            return value
        log.warning("ignoring $%s=%r: not a positive number of seconds", TIMEOUT_ENV, raw)
    if spec.timeout is not None:
        return float(spec.timeout)
    if spec.thinking in THINKING_TIMEOUTS:
        return THINKING_TIMEOUTS[spec.thinking]
    if task_timeout is not None and task_timeout > 0:
        return float(task_timeout)
    return DEFAULT_TIMEOUT


def run_model_agent(
    spec: GatewayAgentConfig,
    task: Task,
    cfg: Config,
    *,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Answer ``task`` with one chat completion and write its handoff (blocking).

    Retries 429 (honouring ``Retry-After``), 5xx and connection failures with the
    config's ``retry.delays``, never past the agent's timeout. A refusal (other 4xx), an
    odd answer or exhausted retries give a ``failed`` handoff whose result says why; the
    API key never appears in it. Without a handoff block in the message there is nowhere
    to put the answer, so the model is not called.
    """
    path = task.handoff_path
    if path is None or task.run_id is None:
        log.warning(
            "local gateway: %s run %s has no handoff block; the model is not called",
            task.agent,
            task.gateway_run_id,
        )
        return
    own = client is None
    http = client or httpx.Client()
    try:
        answer = _answer(spec, task, cfg, http, sleep)
    except Exception as exc:  # a bug must still leave a handoff behind
        log.exception("local gateway: model run %s broke", task.gateway_run_id)
        answer = _Answer(
            "failed",
            f"the local gateway broke calling the model: {type(exc).__name__}",
            None,
            MODEL_NOTE,
        )
    finally:
        if own:
            http.close()
    _write(task, _spill(task, answer, spec, cfg))


# -- the call -----------------------------------------------------------------------------


def _answer(
    spec: GatewayAgentConfig,
    task: Task,
    cfg: Config,
    http: httpx.Client,
    sleep: Callable[[float], None],
) -> _Answer:
    where = f"`gateway.agents.{spec.name}`"
    if not spec.base_url or not spec.model:
        return _failed(f"{where} is an `openai` agent and needs `base_url` and `model`.")
    key = ""
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env, "").strip()
        if not key:
            return _failed(
                f"environment variable `{spec.api_key_env}` (from {where}.api_key_env) is "
                "not set or empty: export the API key where the gateway runs."
            )
        register(key)
        try:
            check_token(key, source=f"environment variable `{spec.api_key_env}`", what=where)
        except ConfigError as exc:
            return _failed(exc.message)
    register_url(spec.base_url)
    if not task.text.strip():
        return _failed("the message has no task text before its handoff block.")
    model = resolve_model(cfg.models, spec.model)
    url = completions_url(spec.base_url)
    shown = _display_url(url)
    messages: list[dict[str, str]] = []
    if spec.system_prompt:
        messages.append({"role": "system", "content": spec.system_prompt})
    messages.append({"role": "user", "content": task.text})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": False}
    if spec.max_tokens is not None:
        body["max_tokens"] = spec.max_tokens
    if spec.temperature is not None:
        body["temperature"] = spec.temperature
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"

    timeout = model_timeout(spec, task.timeout)
    deadline = time.monotonic() + timeout

    def scrub(text: str) -> str:
        return _scrub(text, key)

    def describe(resp: httpx.Response) -> str:
        detail = scrub(_error_text(resp))
        return f"HTTP {resp.status_code}" + (f": {detail}" if detail else "")

    def observe(attempt: int, delay: float, reason: str) -> None:
        log.info("local gateway: %s: %s, retry %d in %.1f s", spec.name, reason, attempt, delay)

    done = send_with_retries(
        lambda remaining: http.post(url, json=body, headers=headers, timeout=remaining),
        Backoff(cfg.retry.delays, jitter=cfg.retry.jitter),
        accept=lambda r: r.status_code == 200,
        retryable=lambda r: r.status_code in RETRYABLE_STATUS_CODES,
        deadline=deadline,
        describe=describe,
        server_wait=_retry_after,
        scrub=scrub,
        on_retry=observe,
        sleep=sleep,
    )
    resp = done.response
    if resp is not None and done.accepted:
        return _parse(resp, model, shown, key, cfg, done.attempts, done.elapsed)
    if resp is not None:
        return _failed(f"the model endpoint {shown} refused the request ({describe(resp)}).")
    if done.timed_out or done.gave_up is GiveUp.DEADLINE:
        return _failed(
            f"no answer from `{model}` at {shown} within {timeout:g} s "
            f"({done.attempts} attempt(s)); {_timeout_hint(spec)}"
        )
    if done.gave_up is GiveUp.PAST_DEADLINE:
        return _failed(
            f"gave up on `{model}` at {shown} after {done.attempts} attempt(s) "
            f"(last: {done.reason}): the next retry, in {done.delay or 0:.1f} s, would come "
            f"after the {timeout:g} s timeout; {_timeout_hint(spec)}"
        )
    return _failed(
        f"gave up on `{model}` at {shown} after {done.attempts} attempts (last: {done.reason})."
    )


def _parse(
    resp: httpx.Response,
    model: str,
    shown: str,
    key: str,
    cfg: Config,
    attempts: int,
    seconds: float,
) -> _Answer:
    found = _completion(resp, shown, key)
    if isinstance(found, _Answer):
        return found
    data, choice, message = found
    content = _content_text(message.get("content"))
    finish = choice.get("finish_reason")
    reported = data.get("model")
    used = reported if isinstance(reported, str) and reported else model
    usage = _usage(data.get("usage"), used, model, cfg)
    notes = f"{MODEL_NOTE}: model `{used}` at {shown}, {attempts} attempt(s), {seconds:.1f} s"
    if not content.strip():
        return _Answer("failed", _no_text(message, finish), usage, notes)
    if finish == "length":
        return _Answer(
            "partial",
            content,
            usage,
            notes + "; the answer was cut at `max_tokens` (finish_reason: length)",
        )
    return _Answer("complete", content, usage, notes)


def _completion(
    resp: httpx.Response, shown: str, key: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | _Answer:
    """The body, ``choices[0]`` and its ``message`` of a 200 answer, or the failed
    ``_Answer`` that says (with the body, ``key`` scrubbed) why there is no chat
    completion in it."""
    not_json = False
    try:
        data = resp.json()
    except ValueError:  # not JSON (cut short, HTML, empty)
        data, not_json = None, True
    except RecursionError:  # JSON nested past the parser
        data = None
    choice = None
    if isinstance(data, dict) and isinstance(data.get("choices"), list) and data["choices"]:
        choice = data["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if isinstance(data, dict) and isinstance(choice, dict) and isinstance(message, dict):
        return data, choice, message
    text = _scrub((resp.text or "")[:65536].strip(), key)[:ERROR_LIMIT]
    if not_json and text:
        return _failed(
            f"the model endpoint {shown} answered 200 with a body that is not JSON "
            f"(a chat completion was expected): {text}"
        )
    return _failed(
        f"the model endpoint {shown} answered 200 without a chat completion "
        f"(`choices[0].message` missing): {text or '(empty body)'}"
    )


def _no_text(message: dict[str, Any], finish: Any) -> str:
    """Why an answer with no text failed: the model's refusal, or its finish reason."""
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        return f"the model refused: {refusal}"
    return f"the model returned no text (finish_reason: {finish or 'none'})"


def _content_text(content: Any) -> str:
    """The assistant's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def _usage(raw: Any, used: str, resolved: str, cfg: Config) -> dict[str, Any]:
    usage: dict[str, Any] = {}
    if isinstance(raw, dict):
        tokens_in, tokens_out = (
            _count(raw.get("prompt_tokens")),
            _count(raw.get("completion_tokens")),
        )
        if tokens_in is not None and tokens_out is not None:
            usage["input_tokens"] = tokens_in
            usage["output_tokens"] = tokens_out
            price = price_for(cfg.models, used, resolved)
            if price is not None:
                usage["cost"] = compute_cost(tokens_in, tokens_out, price)
    usage["model"] = used
    return usage


def _count(value: Any) -> int | None:
    """A token count, or None when the API gave none (or nonsense)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


# -- helpers ------------------------------------------------------------------------------


def _failed(result: str) -> _Answer:
    return _Answer("failed", result, None, f"{MODEL_NOTE}: the model call failed")


#: Bytes of an oversized answer kept in the handoff's ``result`` (the whole answer goes
#: to an artifact file): at most this, and at most a quarter of ``max_handoff_bytes``.
KEPT_RESULT = 64 * 1024
#: Room left in ``max_handoff_bytes`` for everything of the handoff but its result.
HANDOFF_ROOM = 16 * 1024


def _spill(task: Task, answer: _Answer, spec: GatewayAgentConfig, cfg: Config) -> _Answer:
    """An answer too large for a handoff (``max_handoff_bytes``): the whole text goes to
    ``<workspaces>/<agent>/<gateway run id>/answer.md`` and the handoff carries its start,
    status ``partial``, the file in ``artifacts`` (docs/agents.md, "Very long answers").
    A corrective message could not help: the gateway, not the model, writes the handoff."""
    import json

    size = len(json.dumps(answer.result, ensure_ascii=False).encode("utf-8"))
    if answer.status not in ("complete", "partial") or size + HANDOFF_ROOM <= cfg.max_handoff_bytes:
        return answer
    gw = cfg.gateway
    root = (gw.workspaces_dir if gw is not None else None) or cfg.handoffs_dir / ".workspaces"
    where = root / spec.name / task.gateway_run_id / "answer.md"
    try:
        private_dir(where.parent, root)  # owner only, as the workspace's other files
        write_private(where, redact(answer.result))
    except OSError as exc:
        saved = f"it could not be saved ({exc.strerror or exc}): the rest is lost"
        artifacts: list[str] = []
    else:
        saved = f"the whole answer is in `{where}`"
        artifacts = [str(where)]
    keep = min(KEPT_RESULT, cfg.max_handoff_bytes // 4)
    head = answer.result.encode("utf-8")[:keep].decode("utf-8", "ignore")
    total = len(answer.result.encode("utf-8"))
    note = f"[cut: the answer is {total} bytes, above the handoff limit; {saved}]"
    return _Answer(
        "partial",
        head + "\n" + note,
        answer.usage,
        answer.notes + f"; the answer ({total} bytes) was cut to {keep} bytes: {saved}",
        artifacts,
    )


def _write(task: Task, answer: _Answer) -> None:
    from engine.handoff import HandoffProblem, make_handoff, write_handoff
    from engine.record import reconcile

    path = task.handoff_path
    assert path is not None and task.run_id is not None
    handoff = make_handoff(
        run_id=task.run_id,
        agent=task.handoff_agent or task.agent,
        status=answer.status,
        result=answer.result,
        confidence="medium" if answer.status in ("complete", "partial") else "low",
        notes=answer.notes,
        usage=answer.usage,
        key=task.handoff_key,
        artifacts=answer.artifacts or (),
    )
    try:
        # A handoff that someone else delivered meanwhile is never overwritten (this one
        # is kept beside it); an answer after the engine gave up is merged late.
        write_handoff(path, handoff, replace=False)
        reconcile(records_of(path))
    except (HandoffProblem, OSError) as exc:
        log.warning("local gateway: cannot write the handoff of %s: %s", task.run_id, exc)


def _timeout_hint(spec: GatewayAgentConfig) -> str:
    return (
        f"raise `gateway.agents.{spec.name}.timeout`, use `thinking: high`, or set ${TIMEOUT_ENV}."
    )


def completions_url(base_url: str) -> str:
    """``base_url`` with ``/chat/completions`` appended to its path; a query string
    (``http://host/v1?api-version=2024-06-01``) and a fragment-free rest are kept as given:
    ``http://host/v1/chat/completions?api-version=2024-06-01``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base_url)
    path = parts.path.rstrip("/") + "/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _display_url(url: str) -> str:
    """The URL without user info or query, which may hold credentials."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid base_url>"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.host}{port}{u.path}"


def _scrub(text: str, key: str) -> str:
    return redact(text.replace(key, "***") if key else text)


def _error_text(resp: httpx.Response) -> str:
    """The API's own error message: OpenAI ``{"error": {"message"}}``, or close variants."""
    # Redacted before it is cut: a cut could split a key the redaction would not recognise.
    data = json_body(resp)
    text = (resp.text or "").strip()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        else:
            for key in ("error", "message", "detail"):
                if isinstance(data.get(key), str) and data[key]:
                    text = str(data[key])
                    break
    return redact(text[:65536])[:ERROR_LIMIT]


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    raw_ms = resp.headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    return retry_after_seconds(resp.headers.get("retry-after"))
