"""Server-set columns derived from the connection: client IP and device class.

Both are cached in small bounded dicts: the same peers and the same few hundred
user agents make up nearly all traffic, so the common case is one dict lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

#: Entries kept in each lookup cache before it is cleared (bounded memory).
CACHE_MAX_ENTRIES = 4096

_BOT_WORDS = (
    "bot", "crawl", "spider", "slurp", "headless", "curl/", "wget/", "python-", "go-http", "java/", "lighthouse",
)
_TABLET_WORDS = ("ipad", "tablet", "kindle", "silk/", "playbook")
_MOBILE_WORDS = ("mobi", "iphone", "ipod", "android", "windows phone", "blackberry", "opera mini")


def classify_device(ua: str) -> str:
    """``pc`` / ``mobile`` / ``tablet`` / ``bot`` from substrings of the user agent.

    An empty user agent is a script, not a browser, so it counts as ``bot``.
    Android without "mobile" is a tablet (Google's own rule for its UAs).
    """
    if not ua:
        return "bot"
    low = ua.lower()
    for w in _BOT_WORDS:
        if w in low:
            return "bot"
    for w in _TABLET_WORDS:
        if w in low:
            return "tablet"
    if "android" in low and "mobile" not in low:
        return "tablet"
    for w in _MOBILE_WORDS:
        if w in low:
            return "mobile"
    return "pc"


class DeviceCache:
    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, ua: str) -> str:
        device = self._cache.get(ua)
        if device is None:
            device = classify_device(ua)
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[ua] = device
        return device


class ClientIp:
    """The client address: the socket peer, or the forwarded address when the
    peer is a trusted proxy (``collector.trusted_proxies``).

    ``X-Forwarded-For`` is read right to left, skipping trusted hops, so a client
    cannot spoof its address by sending the header itself: only the hop a trusted
    proxy appended is believed. ``X-Real-IP`` is used when there is no
    ``X-Forwarded-For``. Values that are not IP addresses are ignored.

    ``forwarded_for_skip`` entries are dropped from the right first: a proxy
    that appends its own address after the client's (Google's load balancer
    writes ``client, lb-address``) would otherwise be recorded as the client,
    and that address is not known in advance to be listed as trusted.
    """

    __slots__ = ("_networks", "_skip", "_trusted_cache")

    def __init__(self, trusted: Iterable[str], forwarded_for_skip: int = 0) -> None:
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)
        self._skip = forwarded_for_skip
        self._trusted_cache: dict[str, bool] = {}

    def is_trusted(self, addr: str) -> bool:
        hit = self._trusted_cache.get(addr)
        if hit is None:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                hit = False
            else:
                hit = any(ip in n for n in self._networks)
            if len(self._trusted_cache) >= CACHE_MAX_ENTRIES:
                self._trusted_cache.clear()
            self._trusted_cache[addr] = hit
        return hit

    def resolve(self, peer: str, forwarded_for: str | None, real_ip: str | None) -> str:
        if not self._networks or not self.is_trusted(peer):
            return peer
        if forwarded_for:
            hops = forwarded_for.split(",")
            if self._skip:
                if len(hops) <= self._skip:
                    return peer  # not what the proxy writes: believe nothing in it
                del hops[-self._skip:]
            for hop in reversed(hops):
                hop = hop.strip()
                if not _is_ip(hop):
                    break
                if not self.is_trusted(hop):
                    return hop
            else:
                # Every hop is trusted: the leftmost is the origin.
                first = hops[0].strip()
                if _is_ip(first):
                    return first
            return peer
        if real_ip:
            real_ip = real_ip.strip()
            if _is_ip(real_ip):
                return real_ip
        return peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
