"""The fault soak's short run: the same code as `make chaos`, a fixed seed, every kind of fault at least once.

It starts its own stack (two replicas of each service), so it costs a few minutes rather than seconds: it is
the one test that guards the whole promise, nothing lost under crashes and outages, on every change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.report import render
from chaos.run import soak
from chaos.schedule import FaultKind

GENERATIONS = 200
SEED = 11


@pytest.mark.timeout(900)
async def test_short_soak_loses_nothing(tmp_path: Path) -> None:
    summary = await soak(GENERATIONS, SEED, drain_timeout_s=300, work_dir=tmp_path)
    table = render(summary)
    assert all(summary.faults[kind] >= 1 for kind in FaultKind), table
    assert len(summary.record.accepted) == GENERATIONS, table
    assert summary.drained, table
    assert summary.last_line == f"chaos: {GENERATIONS} generations, 0 lost, 0 wrong, 0 extra", table
