"""Agent orchestrator: synchronous delegation and YAML workflows over OpenClaw hooks."""

from __future__ import annotations

__version__ = "0.1.0"
