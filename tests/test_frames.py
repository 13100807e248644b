"""The gateway's hand-packed AMQP frames are byte for byte what pamqp (aiormq's encoder) writes."""

from __future__ import annotations

import pamqp.frame
import pytest
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from common.frames import publish_frames


def _pamqp(channel: int, exchange: str, routing_key: str, message_id: str, body: bytes, max_body: int) -> bytes:
    properties = commands.Basic.Properties(content_type="application/json", delivery_mode=2, message_id=message_id)
    frames = [
        commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True),
        ContentHeader(body_size=len(body), properties=properties),
        *(ContentBody(body[at : at + max_body]) for at in range(0, len(body), max_body)),
    ]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)


@pytest.mark.parametrize(
    ("body", "max_body"),
    [
        (b'{"eventId":"e"}', 131064),
        (b"", 131064),  # no body frame at all, as pamqp and aiormq send it
        (bytes(range(256)) * 40, 1000),  # split over eleven body frames, the last one short
        (b"x" * 2000, 1000),  # split exactly
    ],
)
def test_publish_frames_match_pamqp(body, max_body):
    args = (7, "studio.predictions", "prediction.succeeded", "0b6f3a52-5d1e-5f0e-9b8a-4c2d1e0f9a77", body, max_body)
    assert publish_frames(*args) == _pamqp(*args)


def test_a_short_string_over_255_bytes_is_refused_not_truncated():
    with pytest.raises(ValueError, match="255"):
        publish_frames(1, "x", "k" * 256, "id", b"{}", 131064)
