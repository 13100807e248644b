"""The fault soak's short run: the same code as `make chaos`, a fixed seed, every kind of fault at least once.

It starts its own stack (two replicas of each service), so it costs a few minutes rather than seconds: it is
the one test that guards the whole promise, nothing lost under crashes and outages, on every change.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pytest

from chaos import deliveries
from chaos.balance import Balance, one_prediction_each
from chaos.driver import Record
from chaos.receivers import Kind, Received, Receivers
from chaos.report import render
from chaos.run import soak
from chaos.schedule import LONG_S3_OUTAGE, FaultKind, Plan, fault_schedule, output_ttl_s, workload
from common.references import callback_url

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
    # It took the paths it is built to reach: unclear create answers (some settled only through Skytells' list)
    # and outputs that outlived the CDN in the spool only.
    reached = ("create answered unclearly, waited", "prediction found in Skytells' list", "outputs kept in the spool")
    assert all(summary.reached[path] >= 1 for path in reached), table


def test_the_same_seed_gives_the_same_schedule_and_workload() -> None:
    assert fault_schedule(5, 1000) == fault_schedule(5, 1000)
    assert workload(5, 1000) == workload(5, 1000)
    assert fault_schedule(5, 1000) != fault_schedule(6, 1000)
    assert workload(5, 1000) != workload(6, 1000)


def test_the_default_size_has_several_faults_of_each_kind_and_every_directive() -> None:
    kinds = Counter(fault.kind for fault in fault_schedule(1, 1000))
    assert set(kinds) == set(FaultKind) and min(kinds.values()) >= 3
    s3 = [fault.down_s for fault in fault_schedule(1, 1000) if fault.kind is FaultKind.S3]
    assert s3[0] == LONG_S3_OUTAGE * output_ttl_s(1000) == 90  # outlasts the CDN: only the spool keeps outputs
    assert all(10 <= down_s <= 30 for down_s in s3[1:])
    prompts = " ".join(plan.prompt for plan in workload(1, 1000))
    for directive in ("fail", "dup=", "late", "drop", "envelope", "cdn503=", "size=", "delay=", "slow="):
        assert f"#sim:{directive}" in prompts
    for answer in ("504", "cut", "502", "200"):
        assert f"#sim:answer={answer}" in prompts
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

    # A deleted generation took its deliveries along: owed none, and one sent before it went is no extra.
    record.accepted["g-deleted"] = "u"
    record.webhooks["g-deleted"] = plan
    record.deleted.add("g-deleted")
    receivers.received += [
        request("d-g-ok", "g-ok", True),
        request("d-g-forged", "g-forged", False),
        request("d-unknown", "g-ok", True),
        request("d-g-deleted", "g-deleted", True),
    ]
    lost: list[str] = []
    wrong: list[str] = []
    extra: list[str] = []
    deliveries.check(rows, receivers, record, lost, wrong, extra)
    assert len(lost) == 1 and "g-missing" in lost[0]
    assert any("d-g-forged" in finding for finding in wrong)
    assert len(extra) == 1 and "d-unknown" in extra[0]


def test_the_short_run_loses_create_answers_and_outlasts_the_cdn() -> None:
    plans = [plan.prompt for plan in workload(SEED, GENERATIONS)]
    unclear = [prompt for prompt in plans if "#sim:answer=" in prompt]
    assert any("#sim:drop" in prompt for prompt in unclear)  # no callback: only Skytells' list finds them
    assert any("#sim:drop" not in prompt for prompt in unclear)
    (s3,) = [fault.down_s for fault in fault_schedule(SEED, GENERATIONS) if fault.kind is FaultKind.S3]
    assert s3 > output_ttl_s(GENERATIONS)


def test_the_balance_counts_a_second_prediction_for_one_generation_and_a_prediction_held_by_another() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    hook = "http://127.0.0.1:1/api/webhooks"
    truth = {
        "pred_a": {"webhook": callback_url(hook, first, "secret")},
        "pred_b": {"webhook": callback_url(hook, first, "secret")},  # the create repeated: paid twice
        "pred_c": {"webhook": callback_url(hook, second, "secret")},
    }
    balance = Balance()
    one_prediction_each(balance, truth, {"pred_a": str(first), "pred_c": str(first)})
    assert balance.extra == [f"generation {first} made 2 predictions: pred_a, pred_b"]
    assert balance.wrong == [f"prediction pred_c of generation {second} is held by {first}"]
    clean = Balance()
    one_prediction_each(clean, {"pred_a": truth["pred_a"]}, {"pred_a": str(first)})
    assert clean == Balance()
