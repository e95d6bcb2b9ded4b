"""The loopback guard: contend sends load only to this machine unless the user says otherwise.

The check reads the URL only. It never resolves a name or opens a connection, so a refused
target has seen no packet at all (a name that resolves to loopback is still refused: only a
literal loopback address or ``localhost`` passes).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from contend.errors import ConfigError, UnsafeTargetError

_LOCAL_NAMES = frozenset({"localhost", "localhost."})


def is_loopback_host(host: str) -> bool:
    """Return True for ``localhost`` or a literal loopback IP (127.0.0.0/8, ::1), without DNS."""
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_target(url: str, allow_remote: bool) -> None:
    """Refuse a base URL that is not http(s), or (unless ``allow_remote``) not on loopback."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as error:
        raise ConfigError(f"bad target URL {url!r}: {error}", hint="e.g. http://127.0.0.1:8000") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"the target URL must be http(s)://host[:port], got {url!r}", hint="e.g. http://127.0.0.1:8000"
        )
    if parts.username or parts.password:
        raise ConfigError("the target URL must not carry credentials", hint="put the token in ANTENNA_TOKEN")
    del port
    if not allow_remote and not is_loopback_host(parts.hostname):
        raise UnsafeTargetError(f"refusing to send load to {parts.hostname}: not a loopback address")
