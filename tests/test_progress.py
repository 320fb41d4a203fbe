"""Progress output: the live table (terminal) and plain lines (pipes), from real events."""

from __future__ import annotations

import io

from engine.progress import LineReporter, LiveReporter, summary_table


def _events(rep: object) -> None:
    ev = rep.event  # type: ignore[attr-defined]
    ev("run_started", run_id="wf-1", workflow="demo", steps=[[("a", "webster"), ("b", "auditor")]])
    ev("step_started", step="a", agent="webster", attempt=1, reattached=False)
    ev("step_queued", step="b", agent="auditor")
    ev("step_finished", step="a", status="complete", duration_ms=1200.0, agent="webster",
       error=None)
    ev("step_skipped", step="b", reason="condition `x` is false")
    ev("run_finished", run_id="wf-1", status="complete", summary={})


def test_live_table_shows_each_step_and_its_state() -> None:
    buf = io.StringIO()
    rep = LiveReporter(stream=buf)
    _events(rep)
    rep.close()
    out = buf.getvalue()
    assert "demo · wf-1" in out
    assert "✔ complete" in out and "↷ skipped" in out
    assert "│ ?" not in out


def test_plain_lines_when_not_a_terminal() -> None:
    buf = io.StringIO()
    _events(LineReporter(buf))
    assert buf.getvalue().splitlines() == [
        "run wf-1 (demo): a (webster), b (auditor)",
        "▶ a → webster",
        "… b: waiting for a pool token",
        "✔ a complete in 1.20 s",
        "↷ b skipped: condition `x` is false",
        "run wf-1: complete",
    ]


def test_summary_table_lists_steps() -> None:
    text = summary_table({"workflow": "demo", "runId": "wf-1", "status": "failed",
                          "duration_ms": 1500.0,
                          "steps": {"a": {"status": "failed", "agent": "webster",
                                          "duration_ms": 10.0, "attempts": 2,
                                          "error": "boom\nmore"}}})
    assert "demo · wf-1 · failed · 1.50 s" in text
    assert "✘ failed" in text and "boom" in text and "more" not in text


def test_the_plain_summary_table_has_the_same_rows_without_rich() -> None:
    summary = {"workflow": "demo", "runId": "wf-1", "status": "failed", "duration_ms": 1500.0,
               "steps": {"a": {"status": "failed", "agent": "webster", "duration_ms": 10.0,
                               "attempts": 2, "error": "boom\nmore"},
                         "long-step": {"status": "complete", "agent": "x"}}}
    lines = summary_table(summary, plain=True).splitlines()
    assert lines[0] == "demo · wf-1 · failed · 1.50 s"
    assert lines[1].split() == ["step", "agent", "status", "duration", "confidence",
                                "attempts", "note"]
    assert lines[3].split() == ["a", "webster", "✘", "failed", "0.01", "s", "2", "boom"]
    assert lines[4].split() == ["long-step", "x", "✔", "complete"]
    assert lines[3].index("webster") == lines[4].index("x")  # columns line up
