"""The runs read model: what a workflow run is, as its store says, and the admin commands.

A run lives in the run store (on the file store ``<handoffs_dir>/workflows/<run-id>/``)::

    run.json        workflow, inputs, plan, fingerprint (template + inputs + agents)
    events.jsonl    append-only journal; the run's state is a replay of it
    <step-id>.json  one per finished step: the handoff, attempts, timings, skip reason
    summary.json    status, duration, per-step status, outputs (at the end, on pause)

- ``engine.runs.model``: ``RunView`` and ``StepRun``, the state both sides share.
- ``engine.runs.replay``: ``replay_run`` folds the journal through a table of event
  reducers; ``summarize`` gives the content of summary.json.
- ``engine.runs.admin``: ``run_dir``, ``list_runs``, ``run_row``, ``run_status``,
  ``decide_gate``, ``cancel_run``; ``workflow_ref`` and ``rerun_command``, how hints
  name a run's workflow.

The executor that writes runs is ``engine.runner``; nothing here imports it, nor the
delegator, so readers (``metrics``, ``workflow status``, ``serve``) stay light.

Example::

    view = replay_run(open_store(cfg), "wf-20250101-120000-ab12")
    print(view.state, summarize(view)["steps"])
"""

from __future__ import annotations

from engine.runs.admin import (
    cancel_run,
    decide_gate,
    list_runs,
    rerun_command,
    run_dir,
    run_row,
    run_status,
    runs_dir,
    workflow_ref,
)
from engine.runs.model import GateDecision, RunView, StepRun
from engine.runs.replay import gate_waiting_since, replay, replay_run, summarize
from engine.store.file import CANCEL_FILE, FileJournal, read_events

#: The journal file of a run directory (``events.jsonl``); the engine itself gets
#: journals from its store (``RunStore.journal``).
Journal = FileJournal

__all__ = [
    "CANCEL_FILE",
    "GateDecision",
    "Journal",
    "RunView",
    "StepRun",
    "cancel_run",
    "decide_gate",
    "gate_waiting_since",
    "list_runs",
    "read_events",
    "rerun_command",
    "replay",
    "replay_run",
    "run_dir",
    "run_row",
    "run_status",
    "runs_dir",
    "summarize",
    "workflow_ref",
]
