"""Where HTTP tools may go: their own hosts, never to private addresses unless allowed.

The address check happens when the connection is made, on the address actually dialled, so a
name that resolves (or re-resolves) to an internal address is refused, and so is a redirect
that leads to one. Redirects are followed only on the same host.
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


def is_public(address: Address) -> bool:
    # is_global is false for private, loopback, link-local, reserved, shared (100.64/10) and
    # unspecified addresses; an IPv4-mapped IPv6 address could smuggle any of them.
    mapped = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None
    return address.is_global and not address.is_multicast and not mapped


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
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
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


async def _same_host(response: httpx.Response) -> None:
    if not response.has_redirect_location:
        return
    source = response.request.url
    target = source.join(response.headers["Location"])
    if target.host != source.host:
        raise EgressDenied(f"redirect from {source.host} to {target.host} refused")


def client(rule: Rule) -> httpx.AsyncClient:
    """An httpx client for one tool: guarded connections, same-host redirects only (at most 3)."""
    transport = httpx.AsyncHTTPTransport(retries=0)
    # httpx has no public hook for the network backend; the pool keeps it here (httpcore 1.x).
    pool = transport._pool
    pool._network_backend = GuardedBackend(pool._network_backend, rule)
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=True,
        max_redirects=3,
        event_hooks={"response": [_same_host]},
        trust_env=False,
    )
