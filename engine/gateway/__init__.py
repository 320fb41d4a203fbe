"""The local gateway: the OpenClaw hooks API served by this package, for local agents.

``LocalGateway`` is imported lazily so that ``python -m engine.gateway.demo_agent``
(started once per task) does not pay for the HTTP server's imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.gateway.server import LocalGateway

__all__ = ["LocalGateway"]


def __getattr__(name: str) -> Any:
    if name == "LocalGateway":
        from engine.gateway.server import LocalGateway

        return LocalGateway
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
