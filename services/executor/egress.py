"""Where HTTP tools may go: their own hosts, never to private addresses unless allowed.

The address check happens when the connection is made, on the address actually dialled, so a
name that resolves (or re-resolves) to an internal address is refused, and so is a redirect
that leads to one. Redirects are followed only to the same scheme, host and port.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import httpcore
import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressDenied(Exception):
    """The tool tried to reach somewhere it may not. Never retried."""


# IPv6 prefixes that carry an IPv4 address in their last 32 bits: NAT64 (RFC 6052, RFC 8215)
# SIIT (RFC 7915) and the deprecated IPv4-compatible form.
_EMBEDDING = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::/96")
)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _EMBEDDING):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: Address) -> bool:
    """Whether an address is on the public internet. is_global is false for private, loopback,
    link-local, reserved, shared (100.64/10) and unspecified addresses; IPv6 forms that embed an
    IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by the address they carry."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return False
        inner = _embedded_v4(address)
        return inner is None or is_public(inner)
    return True


@dataclass(frozen=True)
class Rule:
    """One tool's egress: the hosts it may name, and the non-public addresses it may reach."""

    hosts: frozenset[str]
    private: tuple[Network, ...]
    private_hosts: frozenset[str]

    @classmethod
    def of(cls, hosts: Iterable[str], private: Iterable[str]) -> Rule:
        networks: list[Network] = []
        names: set[str] = set()
        for item in private:
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                names.add(item.strip().lower())
        return cls(frozenset(h.lower() for h in hosts), tuple(networks), frozenset(names))

    def check_host(self, host: str) -> None:
        if host.lower() not in self.hosts:
            raise EgressDenied(f"host {host!r} is not allowlisted for this tool")

    def check_address(self, host: str, address: Address) -> None:
        if is_public(address) or host.lower() in self.private_hosts:
            return
        if any(address in network for network in self.private):
            return
        raise EgressDenied(f"{host} resolves to {address}, a non-public address this tool may not reach")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the name itself, checks every address, and dials only one that passed."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, rule: Rule) -> None:
        self._inner = inner
        self._rule = rule

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._rule.check_host(host)
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            # Mapped by httpx to a ConnectError: nothing was sent.
            raise httpcore.ConnectError(f"{host}: {exc}") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        if not addresses:
            raise EgressDenied(f"{host} does not resolve")
        for address in addresses:
            self._rule.check_address(host, address)
        # TLS still verifies against the name: httpcore passes the origin's host as SNI.
        return await self._inner.connect_tcp(
            str(addresses[0]),
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressDenied("unix sockets are not an HTTP tool's to reach")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _same_origin(response: httpx.Response) -> None:
    if not response.has_redirect_location:
        return
    source = response.request.url
    target = source.join(response.headers["Location"])
    # Scheme and port too: a redirect must not downgrade to http or reach another service.
    if (target.scheme, target.host, target.port) != (source.scheme, source.host, source.port):
        raise EgressDenied(f"redirect from {source.scheme}://{source.netloc.decode()} to {target} refused")


def client(rule: Rule) -> httpx.AsyncClient:
    """An httpx client for one tool: guarded connections, same-origin redirects only (at most 3)."""
    # No pool bound of its own: the executor bounds a tool's calls (max_concurrency, in flight),
    # and a pool bound below that would fail calls with a pool timeout rather than queue them.
    transport = httpx.AsyncHTTPTransport(retries=0, limits=httpx.Limits(max_connections=None))
    # httpx has no public hook for the network backend; the pool keeps it here (httpcore 1.x).
    pool = transport._pool
    pool._network_backend = GuardedBackend(pool._network_backend, rule)
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=True,
        max_redirects=3,
        event_hooks={"response": [_same_origin]},
        trust_env=False,
    )
