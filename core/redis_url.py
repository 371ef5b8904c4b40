"""FT_REDIS_URL: a plain Redis URL, or Redis Sentinel in one form every library here is told.

    sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[?db=N&sentinel_password=P]

HOST:PORT are the sentinels (port 26379 when left out; IPv6 as [::1]:26379), MASTER_NAME the
name they monitor, USER/PASSWORD those of the Redis primary and its replicas (percent-encoded,
as in redis://), `sentinel_password` that of the sentinels themselves if they require one.
redis-py, kombu, Celery's result backend and RedBeat each spell Sentinel differently; this
module parses the one form once, and `celeryconfig.py` / `core/redis_clients.py` translate it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote

SENTINEL_SCHEME = "sentinel://"
DEFAULT_SENTINEL_PORT = 26379
_HOST_PORT = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+))(?::(?P<port>\d{1,5}))?$")
_QUERY_KEYS = {"db", "sentinel_password"}


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def url(self) -> str:
        """This target in the FT_REDIS_URL form (what parse_sentinel_url reads back)."""
        query = f"?db={self.db}" + (
            f"&sentinel_password={quote(self.sentinel_password, safe='')}" if self.sentinel_password is not None else ""
        )
        hosts = ",".join(netloc(host, port) for host, port in self.sentinels)
        return f"{SENTINEL_SCHEME}{self._auth()}{hosts}/{quote(self.master_name, safe='')}{query}"

    def _auth(self) -> str:
        if self.password is None:
            return ""
        return f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"

    def kombu_url(self) -> str:
        """kombu and Celery's result backend: one `sentinel://` URL per sentinel, `;`-joined, each
        with the primary's credentials and database (the master name goes in transport options)."""
        auth = self._auth()
        return ";".join(f"{SENTINEL_SCHEME}{auth}{netloc(host, port)}/{self.db}" for host, port in self.sentinels)


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The parts of a `sentinel://` URL; ValueError naming what is wrong (never echoing a password)."""
    if not is_sentinel_url(url):
        raise ValueError("a Sentinel URL starts with sentinel://")
    rest = url[len(SENTINEL_SCHEME) :]
    rest, _, query = rest.partition("?")
    location, slash, master = rest.partition("/")
    if not slash or not master or "/" in master:
        raise ValueError("a Sentinel URL names its master: sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME")
    userinfo, at, hosts = location.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        if not colon:
            raise ValueError("a Sentinel URL's credentials are USER:PASSWORD@ or :PASSWORD@")
        username, password = (unquote(user) or None), unquote(secret)
    sentinels = tuple(_host_port(item) for item in hosts.split(","))
    options = _query(query)
    db = options.get("db", "0")
    if not db.isdigit():
        raise ValueError("a Sentinel URL's db is a number: ?db=0")
    return SentinelTarget(sentinels, unquote(master), int(db), username, password, options.get("sentinel_password"))


def _host_port(item: str) -> tuple[str, int]:
    match = _HOST_PORT.match(item.strip())
    if not match:
        raise ValueError(f"a Sentinel URL lists sentinels as HOST:PORT; {item.strip()!r} is not one")
    port = int(match["port"] or DEFAULT_SENTINEL_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"sentinel port {port} is out of range")
    return match["ipv6"] or match["host"], port


def _query(query: str) -> dict[str, str]:
    try:
        options = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("a Sentinel URL's query is key=value&...") from None
    unknown = set(options) - _QUERY_KEYS
    if unknown:
        raise ValueError(f"a Sentinel URL takes only {sorted(_QUERY_KEYS)} in its query, not {sorted(unknown)}")
    return {key: values[-1] for key, values in options.items()}


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
