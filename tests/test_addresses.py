"""The address policy shared by the output downloads and the outbound webhooks: what may be connected to."""

from __future__ import annotations

import ipaddress

import pytest

from common.addresses import forbidden, internal
from common.errors import OutputRejected
from services.persister.download import resolve_checked

# IPv6 forms that carry a private or loopback IPv4 inside them, and Teredo (whose far end cannot be checked).
HIDDEN = [
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:c0a8:10a::",  # 6to4 of 192.168.1.10
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
    "::ffff:10.1.2.3",  # IPv4-mapped
    "::127.0.0.1",  # IPv4-compatible (deprecated, still routed by some stacks)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]
PUBLIC = ["93.184.215.14", "2606:2800:220:1:248:1893:25c8:1946", "2002:808:808::", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", HIDDEN)
def test_ipv6_forms_hiding_internal_ipv4_are_internal(address):
    assert internal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_and_their_6to4_and_nat64_forms_are_not_internal(address):
    assert not internal(ipaddress.ip_address(address))


def test_a_resolver_answer_with_one_hidden_address_is_refused_whatever_comes_first():
    answer = [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("64:ff9b::a00:1")]
    assert forbidden("cdn.example.com", answer, ("*.example.com",)) == answer[1]
    # Listed by name, the operator vouches for the host; a wildcard never does.
    assert forbidden("cdn.example.com", answer, ("cdn.example.com",)) is None


@pytest.mark.parametrize("address", HIDDEN)
async def test_downloads_refuse_hidden_addresses(address):
    with pytest.raises(OutputRejected, match="non-public"):
        await resolve_checked(address, 443, ("*.skytells.ai",))
