#!/usr/bin/env python3
"""A command agent for the local gateway that gets the handoff wrong once per run id.

    python tests/peers/misbehaving_agent.py MODE

MODE is what it does the first time a run id reaches it: ``forget`` (exit 0, no file),
``done`` (``"status": "done"``), ``fence`` (the JSON in a Markdown fence),
``nokey`` (no ``key``), ``wrong-path`` (a valid handoff one directory up from
``handoff_path``), ``fail``
(exit 3 without a file) or ``never`` (forget every time). The next time the same run id
reaches it (a repair), it writes a valid handoff. ``ask`` answers ``blocked`` with a
question until its task carries the answer, then ``complete`` quoting the answer.
``beat`` reports progress (``orchestrate handoff progress``) four times, 0.3 s apart,
then writes; ``silent`` sleeps 20 s without a word, then writes. ``always-done`` and
``always-fence`` get it wrong every time.
``$AGENT_STATE`` is a directory where it keeps which run ids it has seen, a copy of
each message it got (``<run id>.<n>.txt``) and the session it ran in
(``<run id>.<n>.session``: ``$ORCH_SESSION_KEY``), so a test can read what the engine sent.

``$AGENT_WORK_S`` seconds of work per turn (bench/repair.py). The agent is
session-aware: in a session (``$ORCH_SESSION_DIR``) it keeps its work there, and a
later message in the same session (a repair) does not do the work again.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    from engine.handoff import make_handoff

    mode = argv[1] if len(argv) > 1 else "forget"
    _work()
    state = Path(os.environ["AGENT_STATE"])
    state.mkdir(parents=True, exist_ok=True)
    run_id = os.environ["ORCH_RUN_ID"]
    seen = sorted(state.glob(f"{run_id}.*.txt"))
    message = (Path(os.environ["ORCH_WORKSPACE"]) / "TASK.txt").read_text(encoding="utf-8")
    (state / f"{run_id}.{len(seen) + 1}.txt").write_text(message, encoding="utf-8")
    (state / f"{run_id}.{len(seen) + 1}.session").write_text(
        os.environ.get("ORCH_SESSION_KEY", ""), encoding="utf-8"
    )
    path = Path(os.environ["ORCH_HANDOFF_PATH"])
    handoff = make_handoff(
        run_id=run_id,
        agent=os.environ["ORCH_AGENT"],
        status="complete",
        result=f"done after {len(seen) + 1} message(s)",
        confidence="high",
        key=os.environ.get("ORCH_HANDOFF_KEY") or None,
    )
    first = not seen
    if mode in ("beat", "silent"):
        import subprocess
        import time

        for n in range(4 if mode == "beat" else 0):
            subprocess.run(["orchestrate", "handoff", "progress", "--run-id", run_id,
                            "--dir", str(path.parent), f"step {n + 1} of 4"], check=True)
            time.sleep(0.3)
        if mode == "silent":
            time.sleep(20)
    if mode == "ask":
        from engine.ask import ANSWER_MARKER

        if ANSWER_MARKER not in message:
            _write(path, json.dumps({**handoff, "status": "blocked", "confidence": "low",
                                     "result": "need the temperature range",
                                     "question": "Which temperature range?"}))
            return 0
        answer = message.split("Answer (from ", 1)[1].split(": ", 1)[1].splitlines()[0]
        handoff["result"] = f"CTE over {answer}"
    if mode == "always-done":
        _write(path, json.dumps({**handoff, "status": "done"}))
        return 0
    if mode == "always-fence":
        _write(path, "```json\n" + json.dumps(handoff) + "\n```\n")
        return 0
    if mode == "never" or (first and mode == "forget"):
        print("I did the work but forgot the handoff.")
        return 0
    if first and mode == "fail":
        print("cannot go on", file=sys.stderr)
        return 3
    if first and mode == "done":
        _write(path, json.dumps({**handoff, "status": "done"}))
        return 0
    if first and mode == "nokey":  # the per-delegation key left out
        _write(path, json.dumps({k: v for k, v in handoff.items() if k != "key"}))
        return 0
    if first and mode == "wrong-path":  # next to the inbox instead of in it
        _write(path.parent.parent / path.name, json.dumps(handoff))
        return 0
    if first and mode == "fence":
        _write(path, "```json\n" + json.dumps(handoff, indent=2) + "\n```\n")
        return 0
    _write(path, json.dumps(handoff))
    return 0


def _work() -> None:
    """A turn of work: ``$AGENT_WORK_S`` seconds, unless this session did it already."""
    import time

    seconds = float(os.environ.get("AGENT_WORK_S") or 0)
    session = os.environ.get("ORCH_SESSION_DIR")
    done = Path(session) / "work.txt" if session else None
    if done is not None and done.exists():
        return  # kept from an earlier message of this session
    time.sleep(seconds)
    if done is not None:
        done.write_text("the work of this session", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
