"""Settings: one message naming every bad variable; the documented defaults; each validation rule."""

from __future__ import annotations

import pytest

from common.setting_parsers import database_hosts
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
        "SKYTELLS_WEBHOOK_SECRET",
    }
    message = str(caught.value)
    for name in caught.value.problems:
        assert name in message


def test_several_webhook_secrets_for_rotation():
    settings = Settings.from_env({"SKYTELLS_WEBHOOK_SECRET": "new-key-0123456789, old-key-0123456789"})
    assert settings.skytells_webhook_secrets == ("new-key-0123456789", "old-key-0123456789")


def test_a_webhook_secret_under_16_characters_is_refused():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"SKYTELLS_WEBHOOK_SECRET": "long-enough-key-0123,short"})
    assert caught.value.problems == {"SKYTELLS_WEBHOOK_SECRET": "every key must be at least 16 characters"}


@pytest.mark.parametrize("name", ["SKYTELLS_TIMEOUT_S", "DOWNLOAD_READ_TIMEOUT_S", "RECONCILE_INTERVAL_S"])
def test_timeouts_and_intervals_must_be_more_than_zero(name: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: "0"})
    assert caught.value.problems == {name: "must be more than zero seconds"}
    assert Settings.from_env({"RECONCILE_AFTER_S": "0"}).reconcile_after_s == 0  # an age may be zero


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("SKYTELLS_TIMEOUT_S", "inf"),
        ("SKYTELLS_TIMEOUT_S", "nan"),
        ("RECONCILE_AFTER_S", "1e309"),
        ("RECONCILE_AFTER_S", "-1"),
        ("QUOTA_MAX_ACTIVE", "99999999999999999999"),
        ("QUOTA_MAX_ACTIVE", "0"),
        ("OUTPUT_MAX_BYTES", "0"),
        ("PERSISTER_PREFETCH", "100000"),
        ("RETRY_MAX_S", "1e12"),
        ("LOG_LEVEL", "bogus"),
        ("S3_BUCKET", ""),
        ("S3_BUCKET", "Upper_Case"),
        ("S3_BUCKET", "a"),
        ("S3_BUCKET", "bad..name"),
        ("AWS_REGION", ""),
        ("S3_ENDPOINT_URL", "http://[::1"),
        ("PUBLIC_WEBHOOK_URL", "https://host:abc/x"),
        ("CORS_ALLOWED_ORIGINS", "https://app.example.com/path"),
        ("CORS_ALLOWED_ORIGINS", "app.example.com"),
        ("AUTH_JWT_SECRET", "k"),
        ("AMQP_URL", "amqp://a:5672/,http://b:5672/"),
        ("AMQP_URL", "amqp://a:5672/,amqp://b:port/"),
        ("AMQP_QUORUM_SIZE", "0"),
        ("DATABASE_URL", "postgresql://u:p@a:5432,b:5432/db"),  # a standby could be chosen for writes
        ("DATABASE_URL", "postgresql://u:p@a:5432,b:x/db?target_session_attrs=read-write"),
        ("DATABASE_URL", "postgresql://u:p@a:5432/db?target_session_attrs=whatever"),
        ("DATABASE_URL", "mysql://u:p@a/db"),
    ],
)
def test_out_of_range_unbounded_and_empty_values_are_refused(name: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: raw})
    assert set(caught.value.problems) == {name}


def test_every_bad_variable_at_once_without_a_traceback_for_log_level():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"LOG_LEVEL": "bogus", "SKYTELLS_TIMEOUT_S": "inf", "S3_BUCKET": ""})
    assert set(caught.value.problems) == {"LOG_LEVEL", "SKYTELLS_TIMEOUT_S", "S3_BUCKET"}


def test_jwt_secret_must_be_32_bytes_and_is_waived_by_a_jwks():
    assert Settings.from_env({"AUTH_JWT_SECRET": "x" * 32}, required=("AUTH_JWT_SECRET",)).auth_jwt_secret == "x" * 32
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({}, required=("AUTH_JWT_SECRET",))
    assert caught.value.problems == {"AUTH_JWT_SECRET": "is required"}
    jwks = Settings.from_env({"AUTH_JWKS_URL": "https://id.example.com/jwks.json"}, required=("AUTH_JWT_SECRET",))
    assert jwks.auth_jwks_url == "https://id.example.com/jwks.json"
    assert jwks.auth_jwt_secret == ""


def test_public_base_url_on_aws_is_the_bucket_virtual_host():
    settings = Settings.from_env({"S3_ENDPOINT_URL": "", "S3_BUCKET": "my-outputs", "AWS_REGION": "eu-west-1"})
    assert settings.s3_public_base_url == "https://my-outputs.s3.eu-west-1.amazonaws.com"


def test_cors_origins_and_log_level_are_normalised():
    settings = Settings.from_env(
        {"CORS_ALLOWED_ORIGINS": "https://a.example.com, http://localhost:3000", "LOG_LEVEL": "debug"}
    )
    assert settings.cors_allowed_origins == ("https://a.example.com", "http://localhost:3000")
    assert settings.log_level == "DEBUG"
    assert Settings.from_env({}).cors_allowed_origins == ()


def test_each_setting_declares_its_variable_readers_and_meaning():
    from common.settings import declared

    for name, var in declared().items():
        assert var.env == name.upper() or name == "skytells_webhook_secrets", name
        assert var.readers and var.doc, name


def test_a_cluster_of_rabbitmq_nodes_and_a_multi_host_database():
    settings = Settings.from_env(
        {
            "AMQP_URL": "amqp://u:p@rmq-1:5672/, amqp://u:p@rmq-2:5672/,amqp://u:p@rmq-3:5672/",
            "DATABASE_URL": "postgresql://u:p@db-1:5432,db-2:5433/studio?target_session_attrs=read-write",
            "AMQP_QUORUM_SIZE": "5",
        }
    )
    assert settings.amqp_url == "amqp://u:p@rmq-1:5672/,amqp://u:p@rmq-2:5672/,amqp://u:p@rmq-3:5672/"
    assert settings.amqp_quorum_size == 5
    assert database_hosts(settings.database_url) == [("db-1", 5432), ("db-2", 5433)]
    assert Settings.from_env({}).amqp_quorum_size == 3
