"""Statistics over delegation records and workflow runs: what ``metrics text|json`` shows.

Two parts: ``engine.metrics.scan`` reads the store into the metrics document, and
``engine.metrics.render`` turns the document into text. Neither imports the executor,
the delegator or an HTTP client.

``compute_metrics(handoffs_dir)`` reads, one file at a time and keeping only the numbers
it needs (a few floats per record, for the percentiles)::

    <handoffs_dir>/<runId>.json          delegation records (handoff fields + ``envelope``),
                                         or plain handoffs never recorded (``unrecorded``)
    <handoffs_dir>/sub/<runId>.json      records of sub-delegations
    <handoffs_dir>/.pending/*.json       envelopes of delegations still in flight (counted)
    <handoffs_dir>/rejected/*            refused handoff files (counted, not parsed: each
                                         one already has an ``invalid`` record)
    <handoffs_dir>/workflows/<run-id>/   summary.json (else a replay of events.jsonl)

and skips ``.tmp-*`` and every other hidden entry (``.pool/``, ``.workspaces/``), and files
that do not end in ``.json``. A file that cannot be read, parsed or understood is counted
and listed under ``files``; it never stops the report.

``render_text(doc)`` turns the document into aligned tables (rich, rendered to a string).
Percentiles are nearest-rank (see ``percentile``). The document's contract is
``schemas/metrics.schema.json``; docs/metrics.md explains every figure.
"""

from __future__ import annotations

from engine.metrics.render import render_text
from engine.metrics.scan import (
    CONFIDENCES,
    MAX_LISTED,
    RUN_STATUSES,
    SCHEMA_VERSION,
    STEP_STATUSES,
    compute_metrics,
    parse_since,
    percentile,
)
from engine.record import OUTCOMES

__all__ = [
    "CONFIDENCES",
    "MAX_LISTED",
    "OUTCOMES",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "STEP_STATUSES",
    "compute_metrics",
    "parse_since",
    "percentile",
    "render_text",
]
