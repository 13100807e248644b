"""Event ids: the same callback always gives the same id, in every version of Studio."""

from __future__ import annotations

import uuid

import pytest

from common.events import event_id_of


@pytest.mark.parametrize("identity", ["", '["pred_1", "succeeded", ["https://x/1.png"], null]', "ünïcødé ☃ \U0001f600"])
def test_event_ids_are_the_uuid5_of_the_callbacks_identity(identity):
    # Computed by hand for speed, they must stay what uuid5 gives: a duplicate callback straddling a deploy
    # still dedupes.
    assert event_id_of(identity) == str(uuid.uuid5(uuid.UUID("5b0b6a38-6a8e-4d8e-9d0f-6f1f0c2e7a11"), identity))
