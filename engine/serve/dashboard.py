"""The web dashboard: one static page (HTML, CSS, a small script) and the DAG as SVG.

The page holds no data and no secret: it asks for an API token once (kept in the
browser's local storage), then reads ``/v1`` with ``Authorization: Bearer`` and follows
the SSE streams with ``fetch``. Nothing is loaded from elsewhere, so it works offline.
"""

from __future__ import annotations

from html import escape
from typing import Any

STATE_COLORS = {
    "pending": "#d9dde3",
    "queued": "#f3e3a1",
    "running": "#9cc7f2",
    "waiting_approval": "#f5b971",
    "waiting_input": "#f5b971",
    "complete": "#9ad8a4",
    "partial": "#c8e6a0",
    "skipped": "#eeeeee",
}
FAILED_COLOR = "#ef9a9a"


def dag_svg(plan: dict[str, Any], states: dict[str, str]) -> str:
    """The run's step graph as SVG: one column per layer, edges for ``depends_on``."""
    groups = [g for g in plan.get("groups") or [] if isinstance(g, list)]
    steps = plan.get("steps") or {}
    w, h, gx, gy, pad = 170, 44, 60, 18, 12
    pos: dict[str, tuple[int, int]] = {}
    rows = max((len(g) for g in groups), default=1)
    for col, group in enumerate(groups):
        for row, sid in enumerate(group):
            pos[str(sid)] = (pad + col * (w + gx), pad + row * (h + gy))
    width = pad * 2 + max(1, len(groups)) * (w + gx) - gx
    height = pad * 2 + rows * (h + gy) - gy
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="step graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker>'
        "</defs>",
    ]
    for sid, (x, y) in pos.items():
        for dep in (steps.get(sid) or {}).get("depends_on") or []:
            if dep in pos:
                dx, dy = pos[dep]
                out.append(
                    f'<line x1="{dx + w}" y1="{dy + h // 2}" x2="{x}" y2="{y + h // 2}" '
                    'stroke="#667" stroke-width="1.5" marker-end="url(#arrow)"/>'
                )
    for sid, (x, y) in pos.items():
        state = states.get(sid, "pending")
        info = steps.get(sid) or {}
        color = STATE_COLORS.get(state, FAILED_COLOR)
        agent = info.get("agent") or "/".join(info.get("candidates") or []) or "?"
        gate = " [gate]" if info.get("gate") else ""
        out.append(
            f'<g class="node state-{escape(state)}" data-step="{escape(sid)}" '
            f'id="node-{escape(sid)}"><title>{escape(sid)}: {escape(state)}</title>'
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="7" fill="{color}" '
            'stroke="#445" stroke-width="1"/>'
            f'<text x="{x + 8}" y="{y + 18}" font-size="13" font-weight="bold">'
            f"{escape(sid[:20])}{gate}</text>"
            f'<text x="{x + 8}" y="{y + 35}" font-size="11">{escape(str(agent)[:16])} · '
            f"{escape(state)}</text></g>"
        )
    out.append("</svg>")
    return "".join(out)


def page() -> str:
    """The dashboard's one page (the runs list and a run's page; the script routes)."""
    return _static("dashboard.html")


def script() -> str:
    """The dashboard's script."""
    return _static("dashboard.js")


def _static(name: str) -> str:
    from importlib.resources import files

    return files("engine.serve").joinpath(f"static/{name}").read_text(encoding="utf-8")
