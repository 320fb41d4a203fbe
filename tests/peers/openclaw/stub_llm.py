#!/usr/bin/env python3
"""A scripted stand-in for a model: OpenAI-compatible chat completions on 127.0.0.1.

The real OpenClaw gateway calls it as its only model provider. Each reply is decided
from directives in the hook message that the gateway wraps as untrusted external
content, never from a call count, because the gateway makes calls of its own (wakes,
follow-ups after a failed hook run, delivery turns):

- a wrapped task whose handoff block names ``handoff_path:`` (and ``run_id:``,
  ``agent:``, ``key:``) and has no tool result yet -> one ``write`` tool call whose
  content is a valid handoff for that run (carrying the block's key);
- the same conversation after the tool result -> a short final text;
- ``stub_no_write`` in the task -> a final text without writing anything;
- ``stub_fail: <code>`` -> that HTTP status (use 4xx: the gateway retries 5xx for ~80 s);
- ``stub_status: <complete|partial|blocked|failed>`` -> that handoff status;
- ``stub_sleep: <seconds>`` -> wait that long before the tool call (at most 30 s);
- ``stub_once: <forget|done|fence|nokey>`` -> the first time a run id reaches the model,
  get the handoff wrong (answer without writing; write ``"status": "done"``; write the
  JSON in a Markdown fence; leave the key out); every later time (the engine's repair),
  write it right;
- ``stub_always: <done|fence>`` -> that wrong handoff every time (repairs do not help);
- ``stub_ask`` -> write ``blocked`` with a ``question`` until the task carries the
  caller's answer (``--- YOUR QUESTION AND ITS ANSWER ---``), then ``complete``;
- anything else (no wrapped task) -> the text ``NO_REPLY``.

Every request is logged (in memory, optionally as JSON lines, and at ``GET /_stub/log``)
with what was decided, so tests can assert what the gateway sent.

Run alone: ``python tests/peers/openclaw/stub_llm.py --port 18900 --log stub.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODEL_ID = "stub-model"
#: The gateway's marker around hook messages (it adds a random id after the name).
WRAPPER_START = "<<<EXTERNAL_UNTRUSTED_CONTENT"
WRAPPER_END = "<<<END_EXTERNAL_UNTRUSTED_CONTENT"
_BLOCK = re.compile(r"^[ \t>]*(run_id|agent|key|handoff_path):[ \t]*(\S.*?)[ \t]*$", re.M)
_DIRECTIVE = re.compile(r"\bstub_(no_write|fail|status|sleep)\b(?::[ \t]*([A-Za-z0-9_.]+))?")
_STATUSES = ("complete", "partial", "blocked", "failed")
_ONCE = re.compile(r"\bstub_once:[ \t]*(forget|done|fence|nokey)\b")
_ALWAYS = re.compile(r"\bstub_always:[ \t]*(done|fence)\b")
_ASK = re.compile(r"\bstub_ask\b")
ANSWER_MARKER = "--- YOUR QUESTION AND ITS ANSWER ---"
STUB_QUESTION = "Which temperature range?"


def message_text(message: dict[str, Any]) -> str:
    """The text of one chat message (a string, or the text parts of a content array)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def wrapped_task(messages: list[dict[str, Any]]) -> str | None:
    """The hook message inside the gateway's untrusted-content wrapper, if any user turn has one.

    Only wrapped content counts: that is where the gateway puts a hook's ``message``,
    and it keeps the gateway's own turns (which may quote a task) from being taken as one.
    """
    for msg in messages:
        if msg.get("role") != "user":
            continue
        text = message_text(msg)
        start = text.find(WRAPPER_START)
        if start < 0:
            continue
        body_start = text.find(">>>", start)
        body_start = body_start + 3 if body_start >= 0 else start + len(WRAPPER_START)
        end = text.find(WRAPPER_END, body_start)
        return text[body_start : end if end >= 0 else len(text)]
    return None


def parse_task(text: str) -> dict[str, Any]:
    """Handoff block fields (last occurrence wins, as in the engine) and stub directives."""
    found: dict[str, Any] = {}
    for m in _BLOCK.finditer(text):
        found[m.group(1)] = m.group(2)
    directives: dict[str, str] = {}
    for m in _DIRECTIVE.finditer(text):
        directives[m.group(1)] = m.group(2) or ""
    found["directives"] = directives
    head = text.split("--- HANDOFF", 1)[0]
    lines = [ln.strip() for ln in head.splitlines() if ln.strip()]
    # The task is the engine message's text before its handoff block; drop the
    # gateway's own header lines (Source:/Task:/---) and our directives.
    task_lines = [
        ln for ln in lines
        if not ln.startswith(("Source:", "Task:", "---")) and not ln.startswith("stub_")
    ]
    found["task"] = _DIRECTIVE.sub("", " ".join(task_lines)).strip()
    return found


def _has_tool_result(messages: list[dict[str, Any]]) -> bool:
    return any(
        m.get("role") == "tool" or (m.get("role") == "assistant" and m.get("tool_calls"))
        for m in messages
    )


def _handoff(
    run_id: str, agent: str, status: str, task: str, key: str | None = None
) -> dict[str, Any]:
    from engine.handoff import make_handoff

    summary = task[:300] or "(empty task)"
    return make_handoff(
        run_id=run_id,
        agent=agent,
        status=status,
        result=f"stub result from {agent}: {summary}",
        confidence="medium" if status == "complete" else "low",
        notes="written by the scripted model stand-in through the gateway's write tool",
        usage={"input_tokens": 0, "output_tokens": 0, "cost": 0, "model": f"stub/{MODEL_ID}"},
        key=key,
    )


class StubLLM:
    """The stand-in server; ``start()`` serves in a daemon thread, ``stop()`` shuts it down.

    Example::

        stub = StubLLM(log_path=tmp / "stub.jsonl").start()
        ...  # point a provider's baseUrl at stub.base_url
        stub.calls(run_id="orch-...")  # what the gateway asked for that run
        stub.stop()
    """

    def __init__(self, *, port: int = 0, log_path: Path | None = None,
                 keep_bodies: bool = False, dump_dir: Path | None = None) -> None:
        self.log_path = log_path
        self.dump_dir = dump_dir
        self.keep_bodies = keep_bodies
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._seq = 0
        self._misbehaved: set[str] = set()  # run ids that got their one wrong answer
        self.server = _QuietServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        name="stub-llm")

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> StubLLM:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    # -- what tests read ----------------------------------------------------------------

    def calls(self, *, run_id: str | None = None, decision: str | None = None,
              since: int = 0) -> list[dict[str, Any]]:
        """Logged chat calls (seq >= ``since``), filtered by run id and decision.

        With ``keep_bodies`` each row also has the request ``body`` the gateway sent.
        """
        with self._lock:
            rows = list(self.log)
        return [
            r for r in rows
            if r["seq"] >= since
            and (run_id is None or r.get("run_id") == run_id)
            and (decision is None or r.get("decision") == decision)
        ]

    @property
    def next_seq(self) -> int:
        """The sequence number the next logged call will get (a mark for ``since``)."""
        with self._lock:
            return self._seq

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool],
                 timeout: float) -> bool:
        """Wait until ``predicate(log)`` holds; False if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self.log)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    # -- the protocol -------------------------------------------------------------------

    def decide(self, body: dict[str, Any]) -> dict[str, Any]:
        """What to answer to one chat-completions body (pure: no IO, no sleeping)."""
        messages = body.get("messages") or []
        tools = [
            str((t.get("function") or {}).get("name"))
            for t in body.get("tools") or [] if isinstance(t, dict)
        ]
        task_text = wrapped_task(messages)
        info: dict[str, Any] = {"wrapped": task_text is not None, "tools": len(tools),
                                "messages": len(messages)}
        if task_text is None:
            return {**info, "decision": "no_reply", "text": "NO_REPLY"}
        task = parse_task(task_text)
        d = task["directives"]
        info.update(run_id=task.get("run_id"), agent=task.get("agent"),
                    handoff_path=task.get("handoff_path"), directives=d)
        if "fail" in d:
            code = int(d["fail"]) if d["fail"].isdigit() else 400
            return {**info, "decision": "fail", "status_code": code}
        if not task.get("handoff_path") or not task.get("run_id") or not task.get("agent"):
            return {**info, "decision": "no_reply", "text": "NO_REPLY"}
        if _has_tool_result(messages):
            results = [message_text(m) for m in messages if m.get("role") == "tool"]
            info["tool_result"] = results[-1][:1000] if results else None
            return {**info, "decision": "final",
                    "text": f"Handoff written to {task['handoff_path']}."}
        if _ASK.search(task_text) and ANSWER_MARKER not in task_text:
            handoff = {**_handoff(task["run_id"], task["agent"], "blocked", task["task"],
                                  task.get("key")),
                       "question": STUB_QUESTION}
            return {**info, "decision": "tool_call", "sleep": 0.0, "tool": "write", "ask": True,
                    "arguments": {"path": task["handoff_path"],
                                  "content": json.dumps(handoff, indent=2) + "\n"}}
        once = _ONCE.search(task_text)
        if once is not None:
            wrong = self._once(task, once.group(1), info)
            if wrong is not None:
                return wrong
        always = _ALWAYS.search(task_text)
        wrong = None if always is None else self._once(task, always.group(1), info,
                                                        every_time=True)
        if wrong is not None:
            return wrong
        if "no_write" in d:
            return {**info, "decision": "text",
                    "text": "I looked at the task and chose not to write a handoff."}
        if "write" not in tools:
            return {**info, "decision": "text", "text": "No `write` tool was offered."}
        status = d.get("status") if d.get("status") in _STATUSES else "complete"
        handoff = _handoff(
            task["run_id"], task["agent"], str(status), task["task"], task.get("key")
        )
        sleep = 0.0
        if "sleep" in d:
            try:
                sleep = min(30.0, max(0.0, float(d["sleep"])))
            except ValueError:
                sleep = 0.0
        return {
            **info,
            "decision": "tool_call",
            "sleep": sleep,
            "tool": "write",
            "arguments": {"path": task["handoff_path"],
                          "content": json.dumps(handoff, indent=2) + "\n"},
        }

    def _once(self, task: dict[str, Any], kind: str,
              info: dict[str, Any], *, every_time: bool = False) -> dict[str, Any] | None:
        """The wrong answer for ``stub_once``, the first time only (None afterwards);
        for ``stub_always``, every time."""
        with self._lock:
            if task["run_id"] in self._misbehaved and not every_time:
                return None
            self._misbehaved.add(task["run_id"])
        info = {**info, "once": kind}
        if kind == "forget":
            return {**info, "decision": "text", "text": "Done. (I forgot the handoff file.)"}
        handoff = _handoff(task["run_id"], task["agent"], "complete", task["task"],
                           task.get("key"))
        if kind == "nokey":
            content = json.dumps({k: v for k, v in handoff.items() if k != "key"}) + "\n"
        elif kind == "done":
            content = json.dumps({**handoff, "status": "done"}, indent=2) + "\n"
        else:
            content = "```json\n" + json.dumps(handoff, indent=2) + "\n```\n"
        return {**info, "decision": "tool_call", "sleep": 0.0, "tool": "write",
                "arguments": {"path": task["handoff_path"], "content": content}}

    def _record(self, row: dict[str, Any], body: dict[str, Any] | None) -> None:
        with self._changed:
            row["seq"] = self._seq
            self._seq += 1
            if self.keep_bodies and body is not None:
                row["body"] = body
            self.log.append(row)
            self._changed.notify_all()
        if self.dump_dir is not None and body is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / f"{row['seq']:04d}.json").write_text(
                json.dumps(body, indent=1), encoding="utf-8")
        if self.log_path is not None:
            line = json.dumps({k: v for k, v in row.items() if k not in ("arguments", "body")},
                              default=str)
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else stdlib keep-alive stalls ~40 ms a write

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, code: int, data: Any) -> None:
                payload = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._json(200, {"object": "list", "data": [
                        {"id": MODEL_ID, "object": "model", "owned_by": "stub"}]})
                elif self.path.startswith("/_stub/log"):
                    self._json(200, [{k: v for k, v in r.items() if k != "body"}
                                     for r in stub.calls()])
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                t0 = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._json(400, {"error": {"message": "invalid JSON"}})
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                answer = stub.decide(body)
                if answer.get("sleep"):
                    time.sleep(float(answer["sleep"]))
                stream = bool(body.get("stream"))
                if answer["decision"] == "fail":
                    code = int(answer["status_code"])
                    self._json(code, {"error": {"message": f"stub_fail: {code}",
                                                "type": "invalid_request_error"}})
                elif stream:
                    self._stream(answer, body)
                else:
                    self._json(200, _completion(answer, body))
                stub._record({
                    **answer, "path": self.path, "stream": stream, "t_start": t0,
                    "t_end": time.time(), "bytes": len(raw),
                    "auth": self.headers.get("Authorization", "")[:7],
                }, body)

            def _stream(self, answer: dict[str, Any], body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for chunk in _chunks(answer, body):
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        return Handler


class _QuietServer(ThreadingHTTPServer):
    """Drops the traceback of a client that hangs up (the gateway closing keep-alives)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _ids() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())


def _usage(body: dict[str, Any], answer: dict[str, Any]) -> dict[str, int]:
    prompt = sum(len(message_text(m)) for m in body.get("messages") or []) // 4
    out = len(json.dumps(answer.get("arguments") or answer.get("text") or "")) // 4
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


def _chunks(answer: dict[str, Any], body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    cid, created = _ids()
    base = {"id": cid, "object": "chat.completion.chunk", "created": created,
            "model": body.get("model") or MODEL_ID}
    if answer["decision"] == "tool_call":
        call = {"index": 0, "id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                "function": {"name": answer["tool"],
                             "arguments": json.dumps(answer["arguments"])}}
        yield {**base, "choices": [{"index": 0, "delta": {
            "role": "assistant", "content": None, "tool_calls": [call]},
            "finish_reason": None}]}
        finish = "tool_calls"
    else:
        yield {**base, "choices": [{"index": 0, "delta": {
            "role": "assistant", "content": answer["text"]}, "finish_reason": None}]}
        finish = "stop"
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    yield {**base, "choices": [], "usage": _usage(body, answer)}


def _completion(answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    cid, created = _ids()
    message: dict[str, Any] = {"role": "assistant", "content": answer.get("text")}
    finish = "stop"
    if answer["decision"] == "tool_call":
        message["content"] = None
        message["tool_calls"] = [{
            "id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
            "function": {"name": answer["tool"], "arguments": json.dumps(answer["arguments"])},
        }]
        finish = "tool_calls"
    return {"id": cid, "object": "chat.completion", "created": created,
            "model": body.get("model") or MODEL_ID,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(body, answer)}


def main(argv: list[str] | None = None) -> int:
    """Serve the stand-in until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", type=Path, help="append one JSON line per call here")
    parser.add_argument("--dump-dir", type=Path, help="write each request body here")
    args = parser.parse_args(argv)
    stub = StubLLM(port=args.port, log_path=args.log, dump_dir=args.dump_dir).start()
    print(f"stub model on {stub.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
