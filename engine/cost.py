"""What a model call cost: seed 002's formula over a per-model price table.

Example::

    compute_cost(1200, 300, {"input": 0.5, "output": 1.5})   # 1.05 (prices per 1K tokens)
    price_for(cfg.models, "qwen3-coder-next")                # {"input": ..., "output": ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

#: Decimal places a cost is rounded to (a millionth of a cent survives).
COST_PLACES = 8


def compute_cost(usage_in: int, usage_out: int, price: Mapping[str, Any]) -> float:
    """``(usage_in * price.input + usage_out * price.output) / 1000``, rounded.

    Prices are per 1K tokens (seed 002). The sum is taken in decimal arithmetic so that
    the result is the one computed by hand (no binary floating-point residue), then
    rounded to ``COST_PLACES`` places. A missing price key counts as 0.
    """
    if usage_in < 0 or usage_out < 0:
        raise ValueError("token counts cannot be negative")
    p_in = Decimal(str(price.get("input", 0) or 0))
    p_out = Decimal(str(price.get("output", 0) or 0))
    total = (Decimal(usage_in) * p_in + Decimal(usage_out) * p_out) / Decimal(1000)
    return float(total.quantize(Decimal(1).scaleb(-COST_PLACES), rounding=ROUND_HALF_EVEN))


def price_for(models: Mapping[str, Any], *names: str | None) -> Mapping[str, Any] | None:
    """The price entry in ``models["prices"]`` of the first of ``names`` that has one."""
    prices = models.get("prices") or {}
    for name in names:
        if name and isinstance(prices.get(name), Mapping):
            entry: Mapping[str, Any] = prices[name]
            return entry
    return None
