"""The metrics document as aligned text tables (rich, rendered to a string)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.metrics.scan import CONFIDENCES
from engine.record import OUTCOMES
from engine.textio import terminal_text


def render_text(doc: dict[str, Any], *, width: int = 140) -> str:
    """The metrics document as aligned text tables (rich, no colour), ending in a newline."""
    import io

    from rich.console import Console
    from rich.text import Text

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    for block in _blocks(doc):
        if isinstance(block, str):
            console.print(Text(terminal_text(block)))  # Text: never read as markup
        else:
            title, columns, rows = block
            console.print()
            console.print(_table(title, columns, rows))
    # rich pads every line to the table's width: trailing blanks only get in the way
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines()) + "\n"


#: A line of text, or a table: (title, column names, rows of cell texts).
_Block = str | tuple[str, Sequence[str], Sequence[Sequence[str]]]
_LEFT_COLUMNS = frozenset(
    ("agent", "caller", "target", "workflow", "step", "statuses", "models", "where")
)
_WRAPPING_COLUMNS = frozenset(("statuses", "models"))
_STEP_COLUMNS = ("step", "runs", "statuses", "p50", "p95", "retries", "skipped")


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(
        title=Text(terminal_text(title)),  # Text: a workflow name is never read as markup
        title_justify="left",
        box=box.SIMPLE,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    for col in columns:
        t.add_column(
            col,
            justify="left" if col in _LEFT_COLUMNS else "right",
            no_wrap=col not in _WRAPPING_COLUMNS,
            min_width=len(col),
        )
    for row in rows:
        t.add_row(*(Text(terminal_text(cell)) for cell in row))
    return t


def _blocks(doc: dict[str, Any]) -> list[_Block]:
    totals, files = doc["totals"], doc["files"]
    out: list[_Block] = [_headline(doc)]
    if totals["delegations"] == 0 and totals["workflow_runs"] == 0:
        where = doc["handoffs_dir"]
        if not files["exists"]:
            why = f"`{where}` does not exist"
        elif files["excluded_by_filters"]:
            why = f"nothing in `{where}` matches the filters"
        else:
            why = f"`{where}` holds no delegation records or workflow runs"
        return [*out, f"No records: {why}.", *_file_lines(files)]
    lat = totals["latency_ms"]
    out.append(
        f"{totals['delegations']} delegations ({totals['sub_delegations']} sub-delegations, "
        f"{totals['unrecorded']} unrecorded, {totals['late']} late) · success "
        f"{_pct(totals['success_rate'])} · latency p50 {_ms(lat['p50'])}, p95 "
        f"{_ms(lat['p95'])} · {totals['workflow_runs']} workflow runs"
    )
    if doc["agents"]:
        out.extend(_agent_tables(doc))
    if doc["edges"]:
        rows = [
            [e["caller"], e["target"], str(e["count"]), _pct(e["success_rate"]),
             _mix(e["by_status"]), *_lat(e["latency_ms"])]
            for e in doc["edges"]
        ]  # fmt: skip
        cols = ("caller", "target", "count", "success", "statuses", "p50", "p95", "max")
        out.append(("Caller -> target", cols, rows))
    if doc["workflows"]:
        out.extend(_workflow_tables(doc["workflows"]))
    out.extend(_waiting_blocks(doc["waiting"]))
    out.extend(_file_lines(files))
    return out


def _agent_tables(doc: dict[str, Any]) -> list[_Block]:
    agents, by_status = doc["agents"], doc["totals"]["by_status"]
    # the six statuses always; errored and cancelled only when they occur
    shown = [k for k in OUTCOMES if k not in ("errored", "cancelled") or by_status[k]]
    rows: list[Sequence[str]] = [
        [name, str(a["delegations"]), _pct(a["success_rate"]),
         *(str(a["by_status"][k]) for k in shown), *_lat(a["latency_ms"])]
        for name, a in agents.items()
    ]  # fmt: skip
    usage_rows: list[Sequence[str]] = []
    for name, a in agents.items():
        u = a["usage"]
        has = u["records"] > 0
        usage_rows.append([
            name, *(str(a["confidence"][c]) for c in CONFIDENCES), str(a["sub_delegations"]),
            str(a["unrecorded"]), str(a["late"]),
            f"{u['input_tokens']:,}" if has else "—", f"{u['output_tokens']:,}" if has else "—",
            f"{u['cost']:.4f}" if has else "—", ", ".join(u["models"]) or "—",
        ])  # fmt: skip
    return [
        ("Agents", ("agent", "delegations", "success", *shown, "p50", "p95", "max"), rows),
        ("Confidence and usage",
         ("agent", "high", "medium", "low", "none", "sub", "unrecorded", "late", "tokens in",
          "tokens out", "cost", "models"),
         usage_rows),
    ]  # fmt: skip


def _workflow_tables(workflows: dict[str, Any]) -> list[_Block]:
    rows: list[Sequence[str]] = []
    for name, w in workflows.items():
        st, gate = w["by_status"], w["gate_wait_ms"]
        rows.append([
            name, str(w["runs"]), str(st["complete"]), str(st["failed"]), str(st["cancelled"]),
            str(st["waiting_approval"]), str(st["running"]), *_lat(w["duration_ms"])[:2],
            _ms(gate["total"]) if gate["count"] else "—", str(w["retries"]),
            str(w["skipped_steps"]),
        ])  # fmt: skip
    cols = ("workflow", "runs", "complete", "failed", "cancelled", "waiting", "running", "p50",
            "p95", "gate wait", "retries", "skipped")  # fmt: skip
    out: list[_Block] = [("Workflows", cols, rows)]
    for name, w in workflows.items():
        steps = [
            [sid, str(s["count"]), _mix(s["by_status"]), *_lat(s["duration_ms"])[:2],
             str(s["retries"]), str(s["skipped"])]
            for sid, s in w["steps"].items()
        ]  # fmt: skip
        out.append((f"Steps of {name}", _STEP_COLUMNS, steps))
    return out


def _waiting_blocks(waiting: dict[str, Any]) -> list[_Block]:
    rows: list[Sequence[str]] = []
    for label, d in (
        ("pool token (delegations)", waiting["token_wait_ms"]),
        ("pool token (workflow steps)", waiting["step_token_wait_ms"]),
        ("approval gates (runs)", waiting["gate_wait_ms"]),
    ):
        total = _ms(d["total"]) if "total" in d and d["count"] else ""
        rows.append([label, str(d["count"]), *_lat(d), total])
    flight = waiting["in_flight"]
    line = f"In flight: {flight['count']} delegation(s)"
    if flight["count"]:
        line += " (" + ", ".join(f"{k} {v}" for k, v in flight["agents"].items()) + ")"
    if flight["orphaned"]:
        line += f", {flight['orphaned']} of them orphaned (their process is gone)"
    runs = (
        f"Workflow runs waiting for approval: {waiting['runs_waiting_approval']} · running: "
        f"{waiting['runs_running']}"
    )
    return [("Waiting", ("where", "count", "p50", "p95", "max", "total"), rows), line, runs]


def _file_lines(files: dict[str, Any]) -> list[_Block]:
    out: list[_Block] = []
    if files["invalid"]:
        lines = [f"Problem files: {files['invalid']} (counted nowhere else)"]
        lines += [f"  {_printable(f['path'])}: {f['reason']}" for f in files["invalid_files"]]
        if files["invalid"] > len(files["invalid_files"]):
            lines.append(f"  ... and {files['invalid'] - len(files['invalid_files'])} more")
        out.append("\n".join(lines))
    if files["rejected_handoffs"]:
        out.append(f"Refused handoff files kept in rejected/: {files['rejected_handoffs']}")
    return out


def _lat(d: dict[str, Any]) -> list[str]:
    """p50, p95 and max of a distribution, as text."""
    return [_ms(d["p50"]), _ms(d["p95"]), _ms(d["max"])]


def _headline(doc: dict[str, Any]) -> str:
    f = doc["filters"]
    parts = [f"Metrics of {doc['handoffs_dir']}"]
    if f["since"]:
        parts.append(f"since {f['since']}")
    for key in ("agent", "workflow", "caller"):
        if f[key]:
            parts.append(f"{key} {f[key]}")
    return " · ".join(parts)


def _mix(by_status: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in by_status.items() if v) or "—"


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def _ms(value: float | None) -> str:
    """Milliseconds as a short human duration: ``850 ms``, ``1.42 s``, ``3m 05s``, ``2h 10m``."""
    if value is None:
        return "—"
    if value < 1000:
        return f"{value:.0f} ms"
    s = value / 1000
    if s < 60:
        return f"{s:.2f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def _printable(text: str) -> str:
    """``text`` with control characters (a newline, ESC) escaped as Python writes them, so
    that a file name cannot break or recolour the terminal; printable text as it is."""
    return text if text.isprintable() else repr(text)[1:-1]
