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


def fault_schedule(seed: int, generations: int) -> list[Fault]:
    rng = random.Random(f"faults-{seed}")
    kinds = [kind for kind in FaultKind for _ in range(faults_per_kind(generations))]
    rng.shuffle(kinds)
    faults, at = [], rng.uniform(3, 8)
    for kind in kinds:
        down_s = {
            FaultKind.RABBITMQ: rng.uniform(1, 5),
            FaultKind.POSTGRES: rng.uniform(2, 8),
            FaultKind.S3: rng.uniform(10, 30),
        }.get(kind, 0.0)
        faults.append(Fault(round(at, 1), kind, round(down_s, 1), rng.randrange(2)))
        at += down_s + rng.uniform(4, 12)  # time for the part to come back and the system to settle a little
    return faults


def _size(rng: random.Random) -> int:
    """10 KiB to 4 MiB, log-uniform: mostly small images, a few large ones."""
    return int(math.exp(rng.uniform(math.log(10 * 1024), math.log(4 * 1024 * 1024))))


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
        # A create call answered after Studio gave up waiting for it: Studio finds that prediction only through
        # its callbacks (Skytells cannot be asked by Studio's id), so one whose callbacks never come at all is
        # beyond what Studio can recover (the README's failure model says so); the soak does not ask for both.
        if rng.random() < 0.02 and "#sim:drop" not in directives:
            directives.append("#sim:slow=20")
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
