"""Confirmed publishes of events, written as AMQP frames on an aiormq channel (the gateway's hot path).

aiormq's `basic_publish` builds pamqp frame objects, marshals each through pamqp's generic encoder, wraps the
call in a countdown, a timeout and a close watcher, waits for its frames to be drained, and wakes aiormq's writer
once per message: about three times the CPU of this path (`make bench`, the gateway rows). An event's frames are
always the same three shapes (Basic.Publish, a content header with three properties, the body), so they are
packed here with `struct`, and the events of one turn of the event loop go out in one write.

Everything else is aiormq's own machinery, used as `basic_publish` uses it: the channel's lock and delivery tags,
its confirmation futures (rejected by aiormq when the channel closes), its map from message id to delivery tag
(a returned message fails its confirmation) and its write queue (frames stay in order with aiormq's own).
`tests/test_frames.py` checks the bytes against pamqp's encoder and the confirms against a real RabbitMQ.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import aiormq
from aiormq.abc import ChannelFrame

_FRAME_METHOD, _FRAME_HEADER, _FRAME_BODY, _FRAME_END = 1, 2, 3, b"\xce"
_BASIC_CLASS, _BASIC_PUBLISH = 60, 40
_MANDATORY = 1
# Property flags of a content header, in the order AMQP 0-9-1 lists the properties.
_CONTENT_TYPE, _DELIVERY_MODE, _MESSAGE_ID = 1 << 15, 1 << 12, 1 << 7
_PERSISTENT = 2
_CONTENT_TYPE_JSON = b"\x10application/json"


def _shortstr(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short strings hold at most 255 bytes: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + _FRAME_END


def publish_frames(
    channel: int, exchange: str, routing_key: str, message_id: str, body: bytes, max_body_frame: int
) -> bytes:
    """Basic.Publish (mandatory) of a persistent `application/json` message, its header and its body frames."""
    method = struct.pack(">HHH", _BASIC_CLASS, _BASIC_PUBLISH, 0) + _shortstr(exchange) + _shortstr(routing_key)
    header = struct.pack(">HHQH", _BASIC_CLASS, 0, len(body), _CONTENT_TYPE | _DELIVERY_MODE | _MESSAGE_ID)
    header += _CONTENT_TYPE_JSON + bytes((_PERSISTENT,)) + _shortstr(message_id)
    parts = [_frame(_FRAME_METHOD, channel, method + bytes((_MANDATORY,))), _frame(_FRAME_HEADER, channel, header)]
    chunks = range(0, len(body), max_body_frame)
    parts += (_frame(_FRAME_BODY, channel, body[at : at + max_body_frame]) for at in chunks)
    return b"".join(parts)


class Publisher:
    """Confirmed publishes on one aiormq channel, written in batches: the callbacks that arrive in the same turn
    of the event loop go to RabbitMQ in one write, under one hold of the channel's lock, instead of one write,
    one lock and one wake-up of aiormq's writer each. Each still waits for its own confirm."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._open: dict[aiormq.Channel, list[tuple[bytes, str, asyncio.Future[object]]]] = {}
        self._flushing: set[asyncio.Task[None]] = set()  # referenced until done: the loop keeps only weak ones

    async def publish(
        self, channel: aiormq.abc.AbstractChannel, exchange: str, routing_key: str, message_id: str, body: bytes
    ) -> object:
        """Publish and return what RabbitMQ answered (Basic.Ack or Nack); raise when it returned the message or
        the channel closed first: the contract of aiormq's `basic_publish(..., mandatory=True)` with confirms."""
        assert isinstance(channel, aiormq.Channel) and channel.publisher_confirms
        payload = publish_frames(channel.number, exchange, routing_key, message_id, body, channel.max_content_size)
        confirmation = channel.create_future()  # aiormq rejects it when the channel closes
        batch = self._open.get(channel)
        if batch is None:
            batch = self._open[channel] = []
            # Runs after the handlers already due in this turn of the loop, so their events join this batch.
            task = asyncio.get_running_loop().create_task(self._flush(channel, batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        batch.append((payload, message_id, confirmation))
        return await confirmation

    async def _flush(self, channel: aiormq.Channel, batch: list[tuple[bytes, str, asyncio.Future[object]]]) -> None:
        del self._open[channel]  # later events open the next batch, written after this one (the lock is fair)
        try:
            # Bounded: the write queue of a connection that died never drains (its publishers were told by then).
            async with asyncio.timeout(self._timeout_s), channel.lock:  # the lock raises when the channel closed
                # A publisher that gave up (its timeout) is not sent: nobody waits for its confirm.
                live = [item for item in batch if not item[2].done()]
                if live:
                    await _write(channel, live)
        except BaseException as exc:  # noqa: BLE001 (nobody awaits this task: its publishers are told instead)
            for _, _, confirmation in batch:
                if not confirmation.done():
                    confirmation.set_exception(exc if isinstance(exc, Exception) else ConnectionError(repr(exc)))


async def _write(channel: aiormq.Channel, live: list[tuple[bytes, str, asyncio.Future[object]]]) -> None:
    """Assign the delivery tags in the order of the frames and queue them in one write (the caller holds the
    channel's lock, as aiormq's own publish does while it numbers and queues)."""
    first = channel.delivery_tag + 1
    for tag, (_, message_id, confirmation) in enumerate(live, start=first):
        channel.confirmations[tag] = confirmation
        channel.message_id_delivery_tag[message_id] = tag
        confirmation.add_done_callback(_forgetting(channel, message_id, tag))
    channel.delivery_tag += len(live)
    try:
        await channel.write_queue.put(ChannelFrame(payload=b"".join(item[0] for item in live), should_close=False))
    except BaseException:
        # Never sent (timed out or cancelled while the queue was full): give the tags back, or RabbitMQ's numbering
        # would run behind ours and every later confirm would be read as a predecessor's.
        channel.delivery_tag -= len(live)
        for tag, (_, message_id, _) in enumerate(live, start=first):
            channel.confirmations.pop(tag, None)
            if channel.message_id_delivery_tag.get(message_id) == tag:
                del channel.message_id_delivery_tag[message_id]
        raise


def _forgetting(channel: aiormq.Channel, message_id: str, tag: int) -> Callable[[asyncio.Future[object]], None]:
    def forget(_: asyncio.Future[object]) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]

    return forget
