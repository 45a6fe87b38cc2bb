"""Server-set columns derived from the connection: client IP and device class.

Both are cached in small bounded dicts: the same peers and the same few hundred
user agents make up nearly all traffic, so the common case is one dict lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Callable, Iterable

#: Entries kept in each lookup cache before it is cleared (bounded memory).
CACHE_MAX_ENTRIES = 4096

_BOT_WORDS = (
    "bot",
    "crawl",
    "spider",
    "slurp",
    "headless",
    "curl/",
    "wget/",
    "python-",
    "go-http",
    "java/",
    "lighthouse",
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
                del hops[-self._skip :]
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


#: Prefix lengths ``collector.ip_mode = "truncate"`` keeps: the /24 of an IPv4
#: address (the last octet zeroed), the /48 of an IPv6 one (a site).
TRUNCATE_V4_BITS = 24
TRUNCATE_V6_BITS = 48
#: Hex digits of a hashed address (64 bits: collisions among a day's visitors are negligible).
HASH_HEX_DIGITS = 16
SECONDS_PER_DAY = 86_400


def truncate_ip(addr: str) -> str | None:
    """``203.0.113.77`` -> ``203.0.113.0``; ``2001:db8:1:2::5`` -> ``2001:db8:1::``; not an IP -> None."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = TRUNCATE_V4_BITS if ip.version == 4 else TRUNCATE_V6_BITS
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False).network_address)


class IpHasher:
    """``collector.ip_mode = "hash"``: HMAC-SHA256 of the UTC day and the address.

    The key (``collector.ip_hash_key``, from the environment) makes the value
    useless to anyone without it -- a plain hash of the 2^32 IPv4 addresses is
    reversed in minutes. The day in the input makes the same address hash
    differently every UTC day: visitors can be counted within a day, not
    followed from one day to the next.
    """

    __slots__ = ("_cache", "_day", "_key")

    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self._day = -1
        self._cache: dict[str, str] = {}

    def __call__(self, addr: str, now_s: float | None = None) -> str:
        day = int((time.time() if now_s is None else now_s) // SECONDS_PER_DAY)
        if day != self._day:
            self._day, self._cache = day, {}
        hit = self._cache.get(addr)
        if hit is None:
            mac = hmac.new(self._key, b"%d|%s" % (day, addr.encode()), hashlib.sha256)
            hit = mac.hexdigest()[:HASH_HEX_DIGITS]
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[addr] = hit
        return hit


class _Truncator:
    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, str | None] = {}

    def __call__(self, addr: str) -> str | None:
        try:
            return self._cache[addr]
        except KeyError:
            pass
        out = truncate_ip(addr)
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[addr] = out
        return out


def _nothing(addr: str) -> None:
    return None


def ip_store(mode: str, hash_key: str = "") -> Callable[[str], str | None] | None:
    """What the ``ip`` column gets from the resolved client address; None for ``full`` (as is).

    The resolved address itself is still used at the edge (per-IP rate limits)
    and never leaves the process in the other modes.
    """
    if mode == "full":
        return None
    if mode == "truncate":
        return _Truncator()
    if mode == "hash":
        return IpHasher(hash_key)
    if mode == "none":
        return _nothing
    raise ValueError(f"collector.ip_mode: unknown mode {mode!r}")
