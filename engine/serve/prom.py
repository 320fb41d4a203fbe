"""``/metrics`` in the Prometheus text format (prometheus-client).

Counters and latency histograms count what this server executed since it started
(delegations by agent and outcome, workflow steps by agent and status); gauges are read
at scrape time from the files: runs by state, pool tokens in use and its size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))


class _Gauges(Collector):
    def __init__(
        self,
        runs_by_state: Callable[[], dict[str, int]],
        pool: Callable[[], dict[str, Any]],
    ) -> None:
        self.runs_by_state = runs_by_state
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runs = GaugeMetricFamily(
            "orchestrator_runs", "Workflow runs by state (recent runs).", labels=["state"]
        )
        for state, n in sorted(self.runs_by_state().items()):
            runs.add_metric([state], n)
        yield runs
        status = self.pool()
        used = GaugeMetricFamily("orchestrator_pool_tokens_in_use", "Pool tokens held now.")
        used.add_metric([], len(status.get("in_use") or []))
        yield used
        size = GaugeMetricFamily("orchestrator_pool_tokens", "Pool size (tokens) now.")
        size.add_metric([], float(status.get("size") or 0))
        yield size
        queue = GaugeMetricFamily("orchestrator_pool_queue", "Delegations waiting for a token.")
        queue.add_metric([], len(status.get("queue") or []))
        yield queue


class _Finished:
    """Work of one kind this server finished: ``orchestrator_<kind>s``, a counter by agent
    and ``label`` (how it ended), and ``orchestrator_<kind>_seconds``, a histogram of its
    durations (``BUCKETS``) by agent."""

    def __init__(
        self, registry: CollectorRegistry, kind: str, label: str, counted: str, timed: str
    ) -> None:
        self.count = Counter(f"orchestrator_{kind}s", counted, ["agent", label], registry=registry)
        self.seconds = Histogram(
            f"orchestrator_{kind}_seconds",
            timed,
            ["agent"],
            buckets=BUCKETS,
            registry=registry,
        )

    def add(self, agent: str, ended: str, ms: float | None) -> None:
        """Count one; its duration too when known (``ms``: milliseconds)."""
        self.count.labels(agent, ended).inc()
        if ms is not None:
            self.seconds.labels(agent).observe(ms / 1000)


class ServeMetrics:
    """The server's metric registry."""

    def __init__(
        self,
        *,
        runs_by_state: Callable[[], dict[str, int]],
        pool: Callable[[], dict[str, Any]],
    ) -> None:
        self.registry = CollectorRegistry()
        self.delegations = _Finished(
            self.registry,
            "delegation",
            "outcome",
            "Delegations this server ran, by agent and outcome.",
            "Duration of delegations this server ran, by agent.",
        )
        self.steps = _Finished(
            self.registry,
            "step",
            "status",
            "Workflow steps this server finished, by agent and status.",
            "Duration of workflow steps (all attempts), by agent.",
        )
        self.registry.register(_Gauges(runs_by_state, pool))

    def delegation_finished(self, agent: str, outcome: str, ms: float | None) -> None:
        """Count one delegation."""
        self.delegations.add(agent, outcome, ms)

    def step_finished(self, agent: str, status: str, ms: float | None) -> None:
        """Count one workflow step."""
        self.steps.add(agent, status, ms)

    def render(self) -> bytes:
        """The exposition text."""
        return bytes(generate_latest(self.registry))
