"""Keeping the profiles' DNS names resolved, with their TTLs (dnspython).

A name's addresses go into the firewall's timed sets with a timeout longer than the TTL
and are refreshed at half the TTL, so an address the name keeps never lapses, and one it
drops is removed at the next refresh. When the resolver fails, the last answer stays until
its elements time out (then the name's allowance ends: fail closed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from gateway.firewall.model import IPAddress, Resolution

log = logging.getLogger(__name__)

__all__ = ["Answer", "element_timeout", "refresh_in", "resolve"]

MIN_REFRESH_S = 1.0
RETRY_S = 10.0  # after a failed lookup
NEGATIVE_TTL_S = 20.0  # a name without addresses is asked again at half of this
QUERY_LIFETIME_S = 5.0


def refresh_in(ttl: float) -> float:
    """When to ask again: at half the TTL (not more often than once a second)."""
    return max(MIN_REFRESH_S, ttl / 2)


def element_timeout(ttl: float) -> int:
    """How long a set element outlives its answer: the TTL plus at least a minute, so
    that a late refresh or a resolver hiccup does not cut a device off."""
    return int(ttl + max(ttl, 60))


@dataclass(frozen=True, slots=True)
class Answer:
    """One lookup: the addresses (A and AAAA) and when to look again."""

    name: str
    addresses: tuple[IPAddress, ...]
    ttl: float
    ok: bool  # False: the lookup failed; keep the previous answer

    def resolution(self) -> Resolution:
        return Resolution(self.addresses, element_timeout(self.ttl))

    @property
    def refresh_at(self) -> float:
        return time.monotonic() + (refresh_in(self.ttl) if self.ok else RETRY_S)


async def resolve(name: str) -> Answer:
    """A and AAAA for `name` from the system's resolvers (/etc/resolv.conf, read anew each
    time so a changed upstream is followed)."""
    try:
        resolver = dns.asyncresolver.Resolver()
    except (dns.exception.DNSException, OSError) as exc:
        log.warning("dns: no resolver configuration: %s", exc)
        return Answer(name, (), RETRY_S, False)
    addresses: list[IPAddress] = []
    ttls: list[float] = []
    now = time.time()
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name, rdtype, lifetime=QUERY_LIFETIME_S,
                                            raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer(name, (), NEGATIVE_TTL_S, True)  # gone: so is its allowance
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("dns: %s %s: %s", name, rdtype, exc)
            return Answer(name, (), RETRY_S, False)
        if answer.rrset is not None:
            addresses += [ipaddress.ip_address(r.address) for r in answer.rrset]
            ttls.append(max(0.0, answer.expiration - now))
    ttl = min(ttls) if ttls else NEGATIVE_TTL_S
    return Answer(name, tuple(sorted(set(addresses), key=lambda a: (a.version, int(a)))),
                  ttl, True)


async def resolve_all(names: list[str]) -> dict[str, Answer]:
    answers = await asyncio.gather(*(resolve(n) for n in names))
    return {a.name: a for a in answers}
