"""The rows every benchmark returns, and the table they are printed as."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    benchmark: str
    metric: str
    value: str
    goal: str = ""
    verdict: str = ""  # "ok", "MISSED" or "" when there is no goal


def render(rows: Sequence[Row]) -> str:
    headers = ("benchmark", "metric", "value", "goal", "verdict")
    cells = [headers, *((r.benchmark, r.metric, r.value, r.goal, r.verdict) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "ok" if met else "MISSED"


def quick() -> bool:
    """`BENCH_QUICK=1`: shorter measurements and smaller bursts, for a quick look; the goals are the same."""
    return os.environ.get("BENCH_QUICK", "") not in ("", "0")
