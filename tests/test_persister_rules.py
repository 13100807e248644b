"""The persister's rules that need no server: the retry schedules against Skytells' output window, which hosts
and addresses a download may reach, and how an output's type is recognised."""

from __future__ import annotations

import pytest

from common.addresses import host_allowed
from common.errors import OutputRejected
from common.settings import Settings
from common.topology import RetrySchedule, delay_queue_name, download_retry_delays, retry_delays
from services.persister.download import check_url, resolve_checked, sniff

OUTPUT_WINDOW_S = 300  # Skytells deletes outputs about 5 minutes after completion


def test_default_download_schedule_fits_the_output_window_and_starts_within_seconds():
    settings = Settings.from_env({})
    download = download_retry_delays(
        settings.retry_base_s, settings.retry_max_s, settings.persister_max_attempts, settings.download_retry_window_s
    )

    assert len(download) == settings.persister_max_attempts - 1 == 9
    assert download[:5] == [1, 2, 4, 8, 16]  # about 1 s, doubling
    assert download == sorted(download)
    assert sum(download) <= settings.download_retry_window_s < OUTPUT_WINDOW_S


def test_storage_and_database_schedule_may_run_longer():
    settings = Settings.from_env({})
    long = retry_delays(settings.retry_base_s, settings.retry_max_s, settings.persister_max_attempts)

    assert long == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert max(long) <= 300 and sum(long) > OUTPUT_WINDOW_S


def test_a_short_schedule_is_left_alone_and_every_delay_has_a_queue():
    assert download_retry_delays(0.5, 4, 10, 180) == retry_delays(0.5, 4, 10)
    settings = Settings.from_env({"RETRY_BASE_S": "0.3", "RETRY_MAX_S": "2", "DOWNLOAD_RETRY_WINDOW_S": "5"})
    names = {delay_queue_name(d) for d in RetrySchedule.from_settings(settings).all}
    assert "studio.persister.delay.300ms" in names and "studio.persister.delay.2000ms" in names
    assert len(names) == len(RetrySchedule.from_settings(settings).all)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("cdn.skytells.ai", True),
        ("a.b.skytells.cloud", True),
        ("skytells.ai", False),  # `*.x` means a subdomain of x
        ("evilskytells.ai", False),
        ("cdn.skytells.ai.evil.com", False),
        ("CDN.SKYTELLS.AI.", True),
    ],
)
def test_wildcard_hosts(host, allowed):
    assert host_allowed(host, ("*.skytells.ai", "*.skytells.cloud")) is allowed


@pytest.mark.parametrize(
    "url",
    ["ftp://cdn.skytells.ai/x.png", "file:///etc/passwd", "http://other.example.com/x.png", "cdn.skytells.ai/x.png"],
)
def test_only_http_urls_on_allowed_hosts(url):
    with pytest.raises(OutputRejected):
        check_url(url, ("*.skytells.ai",))


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.10", "169.254.169.254", "::1", "0.0.0.0"])
async def test_internal_addresses_are_refused_unless_listed(address):
    with pytest.raises(OutputRejected, match="non-public"):
        await resolve_checked(address, 80, ("*.skytells.ai",))
    assert str(await resolve_checked(address, 80, ("*.skytells.ai", address))) == address


async def test_a_name_resolving_to_loopback_is_refused_unless_listed_by_name():
    with pytest.raises(OutputRejected, match="non-public"):
        await resolve_checked("localhost", 80, ("*.skytells.ai",))
    assert str(await resolve_checked("localhost", 80, ("localhost",))) == "127.0.0.1"


async def test_a_public_address_is_allowed():
    assert str(await resolve_checked("93.184.215.14", 443, ("*.skytells.ai",))) == "93.184.215.14"


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ("png", "image/png")),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01", ("jpg", "image/jpeg")),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", ("webp", "image/webp")),
        (b"GIF89a\x01\x00\x01\x00\x80\x00", ("gif", "image/gif")),
        (b"<html><body>nope</body>", None),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
    ],
)
def test_type_from_the_first_bytes(head, kind):
    assert sniff(head) == kind
