"""Which hosts and addresses Studio may connect to on someone else's say-so: the one guard against SSRF.

Two processes fetch or post to URLs they were handed: the persister downloads outputs from the URLs in Skytells'
callbacks, and the notifier posts to the webhook URLs of clients. Both resolve the host themselves, refuse it when
any address it resolves to is internal (unless the host or address is listed explicitly, never through a
wildcard), and then connect to the address they checked, so a DNS answer that changes in between cannot reach an
internal address.

"Internal" is broader than `ipaddress`'s `is_global`: an IPv6 address that carries an IPv4 address inside it
(IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96`, 6to4 `2002::/16`, NAT64 `64:ff9b::/96`) is judged by the
IPv4 address it carries, since a gateway on the way may well deliver it there; Teredo (`2001::/32`) tunnels to an
address that cannot be checked at all and is always refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether `host` matches one of `patterns`: exact names, or `*.x.com` for any name under x.com."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def listed_explicitly(name: str, patterns: Sequence[str]) -> bool:
    """Whether a host name or address literal is one of `patterns` by itself, not through a wildcard."""
    name = name.lower().strip("[]").rstrip(".")
    return any(p.lower().strip("[]").rstrip(".") == name for p in patterns if not p.startswith("*."))


# One DNS label once IDNA-encoded (RFC 1035: 1 to 63 characters); `_` occurs in real CDN names.
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def valid_hostname(host: str) -> bool:
    """An address literal, or a name that can be looked up (at most 253 characters of valid labels)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        encoded = host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:  # an empty or over-long label, or characters IDNA refuses
        return False
    return len(encoded) <= 253 and all(_LABEL.fullmatch(label) for label in encoded.split("."))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):  # :: and ::1 are judged as IPv6
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def internal(address: IpAddress) -> bool:
    """Whether `address` is, or leads to, anything but the public internet."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo is not None:
            return True
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return internal(embedded)
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def forbidden(host: str, addresses: Sequence[IpAddress], allowed: Sequence[str]) -> IpAddress | None:
    """The first of the addresses `host` resolved to that may not be reached, or None when all may.

    A host or address listed explicitly in `allowed` may be internal (a CDN or receiver on a private network the
    operator named); a wildcard never opens internal addresses."""
    if listed_explicitly(host, allowed):
        return None
    for address in addresses:
        if internal(address) and not listed_explicitly(str(address), allowed):
            return address
    return None
