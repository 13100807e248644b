"""The soak's table, and the one line a person or CI reads last."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from chaos.balance import Balance
from chaos.driver import Record
from chaos.schedule import FaultKind

SHOWN = 15  # findings listed per column; the counts are always complete


@dataclass(frozen=True)
class Summary:
    generations: int
    seed: int
    balance: Balance
    record: Record
    faults: Counter[FaultKind]
    restarts: int  # replicas the supervisor restarted because they exited by themselves
    load_s: float
    drain_s: float
    drained: bool
    reached: dict[str, int]  # times each loss path was taken, from the services' logs

    @property
    def ok(self) -> bool:
        return not (self.balance.lost or self.balance.wrong or self.balance.extra)

    @property
    def last_line(self) -> str:
        b = self.balance
        return f"chaos: {self.generations} generations, {len(b.lost)} lost, {len(b.wrong)} wrong, {len(b.extra)} extra"


def render(summary: Summary) -> str:
    b, r = summary.balance, summary.record
    rows: list[tuple[str, str]] = [("seed", str(summary.seed)), ("generations planned", str(summary.generations))]
    rows.append(("accepted by the API", str(len(r.accepted))))
    rows += [(f"refused with {status}", str(n)) for status, n in sorted(r.refused.items())]
    rows += [(f"outcome {status}", str(n)) for status, n in sorted(b.outcomes.items())]
    rows.append(("cancels asked", str(r.cancels)))
    rows.append(("deleted after they ended", str(len(r.deleted))))
    rows.append(("asked for a webhook", str(len(r.webhooks))))
    rows += [(f"webhook {what}", str(n)) for what, n in sorted(b.webhooks.items())]
    rows += [(f"fault: {kind}", str(summary.faults[kind])) for kind in FaultKind]
    rows.append(("replicas restarted after exiting", str(summary.restarts)))
    rows += [(f"answers: {kind}", str(n)) for kind, n in sorted(r.answers.items())]
    rows += [(f"reached: {path}", str(n)) for path, n in summary.reached.items()]
    rows.append(("load and faults", f"{summary.load_s:.0f} s"))
    drain = f"{summary.drain_s:.0f} s" if summary.drained else f"not drained after {summary.drain_s:.0f} s"
    rows.append(("time to drain", drain))
    rows += [("lost", str(len(b.lost))), ("wrong", str(len(b.wrong))), ("extra", str(len(b.extra)))]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)} | {value}" for name, value in rows]
    for title, findings in (("lost", b.lost), ("wrong", b.wrong), ("extra", b.extra)):
        lines += [f"{title}: {finding}" for finding in findings[:SHOWN]]
        if len(findings) > SHOWN:
            lines.append(f"{title}: ... and {len(findings) - SHOWN} more")
    lines.append(summary.last_line)
    return "\n".join(lines)
