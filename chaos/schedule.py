"""The soak's plan, drawn from its seed: which faults happen when, and what each generation asks the simulator.

Both come from `random.Random(seed)` alone, so the same seed gives the same schedule and the same workload
(what the services then do with it still depends on timing: that is what a soak is for).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

from chaos.receivers import Kind


class FaultKind(StrEnum):
    RABBITMQ = "rabbitmq SIGKILL + restart"
    POSTGRES = "postgres immediate stop + restart"
    S3 = "s3 server down"
    API = "api replica SIGKILL + restart"
    WEBHOOK = "webhook replica SIGKILL + restart"
    PERSISTER = "persister replica SIGKILL + restart"
    NOTIFIER = "notifier replica SIGKILL + restart"


@dataclass(frozen=True)
class Fault:
    at_s: float  # after the start of the load
    kind: FaultKind
    down_s: float  # how long the part stays down (infrastructure) before it is started again
    replica: int  # which replica, for the service kinds


@dataclass(frozen=True)
class Plan:
    """What one generation asks for: its prompt (directives included), whether (when) it is canceled, whether
    its user deletes it once it has ended, and the soak's receiver it is to be told of its changes (None: no
    webhook) with which events."""

    prompt: str
    cancel_after_s: float | None
    expect_fail: bool
    delete: bool = False
    webhook: Kind | None = None
    events: tuple[str, ...] = ()


# Most generations ask for a webhook; most receivers take it at once, the others misbehave first.
WEBHOOK_SHARE = 0.85
RECEIVER_WEIGHTS = {Kind.OK: 50, Kind.FLAKY: 15, Kind.THROTTLE: 10, Kind.SLOW: 8, Kind.RESET: 7, Kind.GONE: 10}


def faults_per_kind(generations: int) -> int:
    """Several of each kind at the default size, at least one of each in a short run."""
    return max(1, math.ceil(generations / 350))


def output_ttl_s(generations: int) -> float:
    """How long the simulator serves an output after its prediction completed (Skytells keeps it 5 minutes).

    Shortened so that one storage outage (`LONG_S3_OUTAGE` times this) outlasts it: outputs downloaded during
    that outage then exist nowhere but in the persister's spool. Not shorter than 40 s even in a short run: every
    ordinary delay (a callback retried through a broker outage, an event waiting for its retry, the reconciler
    reaching a dropped callback's outcome) must stay well within it, or the soak would find losses no
    production setting would cause.
    """
    return min(60.0, max(40.0, generations * 0.06))


LONG_S3_OUTAGE = 1.5  # the first S3 outage of every run lasts this many times the output retention


def fault_schedule(seed: int, generations: int) -> list[Fault]:
    rng = random.Random(f"faults-{seed}")
    kinds = [kind for kind in FaultKind for _ in range(faults_per_kind(generations))]
    rng.shuffle(kinds)
    faults, at = [], rng.uniform(3, 8)
    long_s3 = LONG_S3_OUTAGE * output_ttl_s(generations)
    for kind in kinds:
        down_s = {
            FaultKind.RABBITMQ: rng.uniform(1, 5),
            FaultKind.POSTGRES: rng.uniform(2, 8),
            FaultKind.S3: rng.uniform(10, 30),
        }.get(kind, 0.0)
        if kind is FaultKind.S3 and long_s3:  # storage down past the CDN's retention: only the spool keeps them
            down_s, long_s3 = long_s3, 0.0
        faults.append(Fault(round(at, 1), kind, round(down_s, 1), rng.randrange(2)))
        at += down_s + rng.uniform(4, 12)  # time for the part to come back and the system to settle a little
    return faults


def _size(rng: random.Random) -> int:
    """10 KiB to 4 MiB, log-uniform: mostly small images, a few large ones."""
    return int(math.exp(rng.uniform(math.log(10 * 1024), math.log(4 * 1024 * 1024))))


ANSWERS = ("504", "504", "cut", "cut", "502", "200")  # how a create's answer is lost, weighted


def workload(seed: int, generations: int) -> list[Plan]:
    rng = random.Random(f"workload-{seed}")
    plans = []
    for n in range(generations):
        directives = []
        fail = rng.random() < 0.1
        if fail:
            directives.append("#sim:fail")
        roll = rng.random()
        if roll < 0.1:
            directives.append(f"#sim:dup={rng.randint(2, 4)}")
        elif roll < 0.18:
            directives.append("#sim:late")
        elif roll < 0.22:
            directives.append("#sim:drop")
        if rng.random() < 0.15:
            directives.append("#sim:envelope")
        if rng.random() < 0.1:
            directives.append(f"#sim:cdn503={rng.randint(1, 3)}")
        if rng.random() < 0.4:
            directives.append(f"#sim:size={_size(rng)}")
        if rng.random() < 0.3:
            directives.append(f"#sim:delay={rng.uniform(0.2, 6):.1f}")
        # A create call answered after Studio gave up waiting for it (dropped callbacks too, at times).
        if rng.random() < 0.02:
            directives.append("#sim:slow=20")
        # A create whose answer is lost on the way back (a proxy's 5xx, a cut connection, a 2xx that is no
        # prediction): Skytells made the prediction, so Studio must neither fail the generation nor, when the
        # client repeats the call with its Idempotency-Key, pay for a second one. With `drop` too, no callback
        # ever names it: only the reconciler's search of Skytells' list can find it.
        if rng.random() < 0.07:
            directives.append(f"#sim:answer={rng.choice(ANSWERS)}")
            if rng.random() < 0.35 and "#sim:drop" not in directives:
                directives.append("#sim:drop")
        cancel = round(rng.uniform(0, 3), 1) if rng.random() < 0.08 else None
        delete = rng.random() < 0.06
        prompt = " ".join([f"chaos image {n}", *directives])
        webhook: Kind | None = None
        events: tuple[str, ...] = ()
        if rng.random() < WEBHOOK_SHARE:
            webhook = rng.choices(list(RECEIVER_WEIGHTS), weights=list(RECEIVER_WEIGHTS.values()))[0]
            events = ("start", "completed") if rng.random() < 0.3 else ("completed",)
        plans.append(Plan(prompt, cancel, fail, delete, webhook, events))
    return plans
