"""The fault soak's short run: the same code as `make chaos`, a fixed seed, every kind of fault at least once.

It starts its own stack (two replicas of each service), so it costs a few minutes rather than seconds: it is
the one test that guards the whole promise, nothing lost under crashes and outages, on every change.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from chaos import deliveries
from chaos.driver import Record
from chaos.receivers import Kind, Received, Receivers
from chaos.report import render
from chaos.run import soak
from chaos.schedule import FaultKind, Plan, fault_schedule, workload

GENERATIONS = 200
SEED = 11


@pytest.mark.timeout(900)
async def test_short_soak_loses_nothing(tmp_path: Path) -> None:
    summary = await soak(GENERATIONS, SEED, drain_timeout_s=300, work_dir=tmp_path)
    table = render(summary)
    assert all(summary.faults[kind] >= 1 for kind in FaultKind), table
    assert summary.drained, table
    assert summary.last_line == f"chaos: {GENERATIONS} generations, 0 lost, 0 wrong, 0 extra", table
    assert len(summary.record.accepted) == GENERATIONS, table
    assert summary.record.deleted, table  # and their objects are gone: the balance says so


def test_the_same_seed_gives_the_same_schedule_and_workload() -> None:
    assert fault_schedule(5, 1000) == fault_schedule(5, 1000)
    assert workload(5, 1000) == workload(5, 1000)
    assert fault_schedule(5, 1000) != fault_schedule(6, 1000)
    assert workload(5, 1000) != workload(6, 1000)


def test_the_default_size_has_several_faults_of_each_kind_and_every_directive() -> None:
    kinds = Counter(fault.kind for fault in fault_schedule(1, 1000))
    assert set(kinds) == set(FaultKind) and min(kinds.values()) >= 3
    s3 = [fault.down_s for fault in fault_schedule(1, 1000) if fault.kind is FaultKind.S3]
    assert all(10 <= down_s <= 30 for down_s in s3)
    prompts = " ".join(plan.prompt for plan in workload(1, 1000))
    for directive in ("fail", "dup=", "late", "drop", "envelope", "cdn503=", "size=", "delay=", "slow="):
        assert f"#sim:{directive}" in prompts
    assert any(plan.cancel_after_s is not None for plan in workload(1, 1000))
    assert any(plan.delete for plan in workload(1, 1000))
    # Every kind of webhook receiver, start events too, and some generations without a webhook.
    assert {plan.webhook for plan in workload(1, 1000)} == {*Kind, None}
    assert any("start" in plan.events for plan in workload(1, 1000))


def test_the_webhook_balance_counts_missing_badly_signed_and_unasked_deliveries() -> None:
    receivers = Receivers(timeout_s=1)
    record = Record()
    plan = Plan("p", None, False, False, Kind.OK, ("completed",))
    for gid in ("g-ok", "g-missing", "g-forged"):
        record.accepted[gid] = "u"
        record.webhooks[gid] = plan
    rows = [
        {
            "delivery_id": f"d-{gid}",
            "generation_id": gid,
            "event": "completed",
            "status": "delivered",
            "final": "succeeded",
        }
        for gid in ("g-ok", "g-missing", "g-forged")
    ]

    def request(delivery_id: str, gid: str, verified: bool) -> Received:
        body = json.dumps({"type": "generation.completed", "data": {"id": gid, "status": "succeeded"}}).encode()
        return Received(Kind.OK, "u", delivery_id, {}, body, 0.0, 200, verified)

    receivers.received += [
        request("d-g-ok", "g-ok", True),
        request("d-g-forged", "g-forged", False),
        request("d-unknown", "g-ok", True),
    ]
    lost: list[str] = []
    wrong: list[str] = []
    extra: list[str] = []
    deliveries.check(rows, receivers, record, lost, wrong, extra)
    assert len(lost) == 1 and "g-missing" in lost[0]
    assert any("d-g-forged" in finding for finding in wrong)
    assert len(extra) == 1 and "d-unknown" in extra[0]
