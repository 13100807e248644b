"""`python -m services.persister redrive [list | move ... | discard ...]`: dealing with `studio.persister.dead`.

- `list`: every dead message: its id, why it died, after how many attempts, and how long ago it first failed.
- `move --all | ID...` (plain `redrive` is `move --all`): back to `studio.persister` with a fresh attempt count,
  each acknowledged on the dead queue only once RabbitMQ has confirmed its copy (a crash in between duplicates
  a message, which the persister absorbs; it never loses one).
- `discard --all | ID...`: drop them for good.

Messages dead-lettered while a command runs wait for the next one.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.broker import Broker
from common.settings import Settings
from common.topology import (
    ATTEMPT_HEADER,
    DEAD_ATTEMPTS_HEADER,
    DEAD_QUEUE,
    DEAD_REASON_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_FAILURE_HEADER,
    QUEUE,
    RetrySchedule,
)

logger = logging.getLogger(__name__)

Action = Literal["keep", "move", "discard"]

# Headers of a previous life the fresh attempts should not inherit.
_DROPPED_HEADERS = {
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    DEAD_REASON_HEADER,
    DEAD_ATTEMPTS_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_FAILURE_HEADER,
    "x-last-error",
}


@dataclass(frozen=True)
class DeadMessage:
    id: str
    reason: str
    attempts: int
    age_s: float | None  # since its first failure; None when it does not say

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadMessage:
        headers: dict[str, Any] = dict(message.headers or {})
        # RabbitMQ's own dead-lettering (the delivery limit, a rejection) leaves only its x-first-death-* headers.
        reason = headers.get(DEAD_REASON_HEADER) or headers.get("x-last-error") or headers.get("x-first-death-reason")
        attempts = headers.get(DEAD_ATTEMPTS_HEADER, headers.get(ATTEMPT_HEADER, 1))
        return cls(
            id=message.message_id or "-",
            reason=str(reason or "unknown"),
            attempts=attempts if isinstance(attempts, int) else 1,
            age_s=_age(headers.get(FIRST_FAILURE_HEADER) or headers.get(LAST_FAILURE_HEADER)),
        )


def _age(raw: Any) -> float | None:
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(str(raw))).total_seconds() if raw else None
    except ValueError:
        return None


async def sweep(settings: Settings, decide: Callable[[DeadMessage], Action]) -> list[tuple[DeadMessage, Action]]:
    """Go through the dead queue once, moving, discarding or keeping each message; what was done to which."""
    broker = await Broker.connect(
        settings.amqp_url, RetrySchedule.from_settings(settings).all, settings.amqp_quorum_size
    )
    done: list[tuple[DeadMessage, Action]] = []
    kept: list[AbstractIncomingMessage] = []
    try:
        channel = await broker.connection.channel()
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        waiting = queue.declaration_result.message_count or 0
        try:
            for _ in range(waiting):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                dead = DeadMessage.of(message)
                action = decide(dead)
                if action == "move":
                    await _move(broker, message)
                elif action == "discard":
                    await message.ack()
                else:
                    kept.append(message)  # held until the sweep ends, so it is not fetched twice
                done.append((dead, action))
        finally:
            for message in kept:
                await message.nack(requeue=True)
            await channel.close()
    finally:
        await broker.close()
    return done


async def _move(broker: Broker, message: AbstractIncomingMessage) -> None:
    headers = {k: v for k, v in (message.headers or {}).items() if k not in _DROPPED_HEADERS}
    headers[ATTEMPT_HEADER] = 1
    headers["x-redriven"] = int(str(headers.get("x-redriven", 0) or 0)) + 1
    copy = aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type or "application/json",
        message_id=message.message_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    try:
        await broker.publish_to_queue(QUEUE, copy)
    except BaseException:
        await message.nack(requeue=True)
        raise
    await message.ack()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.persister redrive", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="show every dead message: id, reason, attempts, age")
    for name, verb in (("move", "move back to studio.persister"), ("discard", "drop for good")):
        sub = commands.add_parser(name, help=f"{verb}: the messages named, or --all")
        sub.add_argument("ids", nargs="*", metavar="ID", help="message ids, as `list` shows them")
        sub.add_argument("--all", action="store_true", help="every dead message")
    return parser


def _table(rows: Sequence[DeadMessage]) -> str:
    lines = [f"{'ID':<40} {'ATTEMPTS':>8} {'AGE':>8}  REASON"]
    for dead in rows:
        age = "?" if dead.age_s is None else f"{dead.age_s / 60:.0f}m" if dead.age_s >= 60 else f"{dead.age_s:.0f}s"
        lines.append(f"{dead.id:<40} {dead.attempts:>8} {age:>8}  {dead.reason[:200]}")
    return "\n".join(lines) + f"\n{len(rows)} dead messages\n"


async def command(settings: Settings, argv: Sequence[str]) -> str:
    """Run one redrive command; returns what to print. Raises SystemExit on bad usage."""
    parser = _parser()
    args = parser.parse_args(list(argv) or ["move", "--all"])
    if args.command == "list":
        return _table([dead for dead, _ in await sweep(settings, lambda _: "keep")])
    if args.command not in ("move", "discard") or bool(args.all) == bool(args.ids):
        parser.error("say which messages: --all, or their ids")
    wanted: set[str] = set(args.ids)
    action: Action = args.command

    def decide(dead: DeadMessage) -> Action:
        return action if args.all or dead.id in wanted else "keep"

    done = [dead.id for dead, taken in await sweep(settings, decide) if taken == action]
    verb = "moved" if action == "move" else "discarded"
    missing = sorted(wanted - set(done))
    note = f"; not found: {' '.join(missing)}" if missing else ""
    target = " back to the persister queue" if action == "move" else ""
    return f"{verb} {len(done)} dead messages{target}{note}\n"
