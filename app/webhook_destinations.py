"""Where webhooks may go: a job's ``callback_url`` checked against ``SPECPRUNE_WEBHOOK_ALLOWED_HOSTS``.

The host is resolved and every address it resolves to must be allowed: by default (``*``) only public
addresses, never loopback, private, shared, link-local, multicast, reserved or unspecified ones, so a
callback cannot reach the service's own network. Entries other than ``*`` name destinations allowed even
when internal: a host name (``hooks.example.com``), a domain's subdomains (``*.example.com``), an IP
address or a CIDR network (``10.0.0.0/8``). The check runs at submission and again before every
delivery, and a delivery connects to the very address that was checked (no DNS rebinding in between).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
SCHEMES = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to
Resolver = Callable[[str, int], list[str]]


class DestinationError(ValueError):
    """A callback URL that must not be used; the message says why, for the submitter."""


class DestinationRefused(DestinationError):
    """Malformed, or not allowed by the operator's policy: retrying will not help."""


class DestinationUnresolvable(DestinationError):
    """The host name does not resolve now (it may later)."""


@dataclass(frozen=True)
class AllowedHosts:
    """The parsed ``SPECPRUNE_WEBHOOK_ALLOWED_HOSTS``."""

    any_public: bool
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, value: str) -> AllowedHosts:
        """Entries separated by commas; ValueError naming an entry that is none of the accepted forms."""
        any_public, names, suffixes, networks = False, set(), [], []
        for entry in (item.strip().lower() for item in value.split(",")):
            if not entry:
                continue
            if entry == "*":
                any_public = True
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            elif (network := _network(entry)) is not None:
                networks.append(network)
            elif _is_host_name(entry):
                names.add(entry.rstrip("."))
            else:
                raise ValueError(f"SPECPRUNE_WEBHOOK_ALLOWED_HOSTS: {entry!r} is not a host, IP or network")
        return cls(any_public, frozenset(names), tuple(suffixes), tuple(networks))

    def names_host(self, host: str) -> bool:
        """Whether the operator listed this host name (or a domain above it)."""
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        """Whether connecting to ``address`` is allowed (for a host not listed by name)."""
        if any(address in network for network in self.networks):
            return True
        return self.any_public and is_public(address)


@dataclass(frozen=True)
class Destination:
    """A checked callback URL and the addresses a delivery may connect to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        """``Host`` as the URL names it (the port only when it is not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == SCHEMES[self.scheme] else f"{host}:{self.port}"

    def url_for(self, address: str) -> str:
        """The URL with its host replaced by ``address`` (send ``Host`` and SNI for the name)."""
        parts = urlsplit(self.url)
        literal = f"[{address}]" if ":" in address else address
        return parts._replace(netloc=f"{literal}:{self.port}").geturl()


def check_callback_url(url: str, allowed: AllowedHosts, resolve: Resolver | None = None) -> Destination:
    """The destination of ``url`` if webhooks may be sent there; DestinationError otherwise."""
    scheme, host, port = _parse(url)
    literal = _address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = [
                ipaddress.ip_address(a.split("%", 1)[0]) for a in (resolve or resolve_host)(host, port)
            ]
        except (OSError, ValueError) as exc:
            raise DestinationUnresolvable(f"callback_url host {host!r} does not resolve ({exc})") from None
        if not addresses:
            raise DestinationUnresolvable(f"callback_url host {host!r} does not resolve")
    if literal is None and allowed.names_host(host):
        return Destination(url, scheme, host, port, tuple(str(a) for a in addresses))
    refused = [a for a in addresses if not allowed.allows_address(a)]
    if refused:
        what = "is" if literal is not None else f"resolves to {refused[0]}, which is"
        kind = "not allowed here" if is_public(refused[0]) else "an internal address"
        raise DestinationRefused(
            f"callback_url host {host} {what} {kind}; the operator can allow it with "
            "SPECPRUNE_WEBHOOK_ALLOWED_HOSTS"
        )
    return Destination(url, scheme, host, port, tuple(str(a) for a in addresses))


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (system resolver), without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (IPv4-mapped and 6to4 IPv6 judged by their IPv4 part)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return is_public(embedded)
    internal = (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )
    return address.is_global and not internal


def _parse(url: str) -> tuple[str, str, int]:
    if len(url) > MAX_URL_LENGTH:
        raise DestinationRefused(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise DestinationRefused("callback_url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(f"callback_url is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise DestinationRefused("callback_url must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("callback_url must not contain credentials; verify the signature instead")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise DestinationRefused("callback_url has no host")
    if port == 0:
        raise DestinationRefused("callback_url port must be between 1 and 65535")
    return scheme, host, port or SCHEMES[scheme]


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _network(entry: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


def _is_host_name(entry: str) -> bool:
    labels = entry.rstrip(".").split(".")
    return bool(entry) and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels
    )
