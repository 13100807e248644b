"""Connecting to a URL someone else handed us: resolve the host once, check every address, connect to the one
checked. The persister's downloads and the notifier's webhook posts both go through here (the policy itself,
which addresses are internal, is `common.addresses`).

The connection goes to the checked address; the Host header and TLS SNI (hence certificate verification) keep
the name, so a DNS answer that changes between the check and the connect cannot reach an internal address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping, Sequence

import httpx

from common.addresses import IpAddress, forbidden
from common.errors import DestinationRefused, UpstreamUnavailable


async def resolve_checked(host: str, port: int, allowed: Sequence[str]) -> IpAddress:
    """The address to connect to for `host`: UpstreamUnavailable when it does not resolve (yet), and
    DestinationRefused when any address it resolves to is internal and neither it nor the host is listed
    explicitly in `allowed`."""
    try:
        literal: IpAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UpstreamUnavailable(f"host {host} does not resolve: {exc.strerror}") from None
        except UnicodeError as exc:  # the resolver's IDNA step refuses the name: it never will resolve
            raise DestinationRefused(f"host {host[:100]} is not a valid name: {exc}") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise UpstreamUnavailable(f"host {host} does not resolve")
    refused = forbidden(host, addresses, allowed)
    if refused is not None:
        raise DestinationRefused(f"host {host} resolves to a non-public address ({refused})")
    return addresses[0]


async def pinned_request(
    http: httpx.AsyncClient,
    method: str,
    target: httpx.URL,
    allowed: Sequence[str],
    headers: Mapping[str, str],
    content: bytes | None = None,
) -> httpx.Request:
    """A request to `target` addressed to its checked address (see `resolve_checked`)."""
    port = target.port or (443 if target.scheme == "https" else 80)
    address = await resolve_checked(target.host, port, allowed)
    pinned = target.copy_with(host=str(address))
    return http.build_request(
        method,
        pinned,
        headers={"Host": target.netloc.decode("ascii"), **headers},
        content=content,
        extensions={"sni_hostname": target.host},
    )
