"""Settings: one message naming every bad variable; defaults as SPEC section 2 gives them."""

from __future__ import annotations

import pytest

from common.settings import API_REQUIRED, Settings, SettingsError


def test_defaults_match_the_contract():
    settings = Settings.from_env({})
    assert settings.database_url == "postgresql://studio:studio@127.0.0.1:5432/studio"
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.s3_public_base_url == "http://127.0.0.1:9000/studio-generations"
    assert settings.quota_max_active == 10
    assert settings.allowed_models == ("truefusion-pro", "truefusion-edge", "truefusion-2.0")
    assert settings.output_allowed_hosts == ("*.skytells.ai", "*.skytells.cloud")
    assert settings.output_max_bytes == 52428800
    assert settings.reconcile_after_s == 120
    assert (settings.api_port, settings.webhook_port, settings.persister_port) == (8080, 8081, 8082)


def test_every_bad_variable_is_named_in_one_error():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {"QUOTA_MAX_ACTIVE": "many", "API_PORT": "70000", "AMQP_URL": "http://nope", "SKYTELLS_API_KEY": ""},
            required=API_REQUIRED,
        )
    assert set(caught.value.problems) == {
        "QUOTA_MAX_ACTIVE",
        "API_PORT",
        "AMQP_URL",
        "SKYTELLS_API_KEY",
        "AUTH_JWT_SECRET",
    }
    message = str(caught.value)
    for name in caught.value.problems:
        assert name in message


def test_several_webhook_secrets_for_rotation():
    settings = Settings.from_env({"SKYTELLS_WEBHOOK_SECRET": "new, old"})
    assert settings.skytells_webhook_secrets == ("new", "old")


@pytest.mark.parametrize("name", ["SKYTELLS_TIMEOUT_S", "DOWNLOAD_READ_TIMEOUT_S", "RECONCILE_INTERVAL_S"])
def test_timeouts_and_intervals_must_be_more_than_zero(name: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: "0"})
    assert caught.value.problems == {name: "must be more than zero seconds"}
    assert Settings.from_env({"RECONCILE_AFTER_S": "0"}).reconcile_after_s == 0  # an age may be zero
