"""Event ids: the same callback always gives the same id, in every version of Studio."""

from __future__ import annotations

import json
import uuid

import pytest

from common.events import PredictionEvent, event_id_of
from common.predictions import Prediction, parse_prediction


@pytest.mark.parametrize("identity", ["", '["pred_1", "succeeded", ["https://x/1.png"], null]', "ünïcødé ☃ \U0001f600"])
def test_event_ids_are_the_uuid5_of_the_callbacks_identity(identity):
    # Computed by hand for speed, they must stay what uuid5 gives: a duplicate callback straddling a deploy
    # still dedupes.
    assert event_id_of(identity) == str(uuid.uuid5(uuid.UUID("5b0b6a38-6a8e-4d8e-9d0f-6f1f0c2e7a11"), identity))


TEXTS = ["", "pred_1", "succeeded", "ünïcødé", '"quoted" \\ back', "\n\t\x00\x7f", "\ud800", "\U0001f600"]


@pytest.mark.parametrize("text", TEXTS)
def test_the_identity_is_the_json_of_id_status_output_and_error(text):
    # The identity is spelled out by hand for speed; it must stay the stdlib's `json.dumps` text byte for byte.
    for output, error in [((), None), ((text,), text), ((text, "https://x/2.png"), None), (("a", text, "b"), "boom")]:
        prediction = Prediction(id=text, status=text, output=output, error=error, model=None)
        expected = json.dumps([text, text, list(output), error])
        event = PredictionEvent.from_prediction(prediction, "webhook")
        assert event.event_id == event_id_of(expected)


def test_skytells_metrics_travel_with_the_event_and_older_events_still_read():
    payload = {
        "id": "pred_1",
        "status": "succeeded",
        "output": ["https://x/1.png"],
        "metrics": {"predict_time": 1.25, "total_time": 2, "image_count": 1},
        "metadata": {"billing": {"credits_used": 0.03}},
    }
    event = PredictionEvent.from_prediction(parse_prediction(payload), "webhook")
    read = PredictionEvent.from_json(event.to_json())
    assert (read.predict_time, read.credits_used) == (1.25, 0.03)
    assert (
        read.event_id
        == PredictionEvent.from_prediction(parse_prediction({**payload, "metrics": None}), "webhook").event_id
    )

    older = json.loads(event.to_json())
    del older["predictTime"], older["creditsUsed"]
    plain = PredictionEvent.from_json(json.dumps(older).encode())
    assert (plain.predict_time, plain.credits_used) == (None, None)
    for garbled in ("1.5", True, float("nan")):
        with pytest.raises(ValueError):
            PredictionEvent.from_json(json.dumps({**older, "creditsUsed": garbled}).encode())


@pytest.mark.parametrize("figure", ["1.2", -1, float("inf"), None, True, {"x": 1}])
def test_a_garbled_skytells_figure_is_no_figure(figure):
    payload = {"id": "p", "status": "succeeded", "metrics": {"predict_time": figure}}
    payload["metadata"] = {"billing": {"credits_used": figure}}
    prediction = parse_prediction(payload)
    assert prediction.predict_time is None and prediction.credits_used is None
