"""sqlcommenter comments in a statement's text: which code sent it (pure).

An application using sqlcommenter (Django's ``google-cloud-sqlcommenter`` middleware, OpenTelemetry)
appends ``/*controller='results',route='api/jobs',traceparent='00-...'*/`` to each statement: keys
and values URL-encoded, a value's quote escaped as ``\\'``, the pairs sorted and comma-separated.
``pg_stat_activity.query`` shows it, so each backend's code is named even without py-spy.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

COMMENT_RE = re.compile(r"/\*([^*]*=\s*'[^*]*)\*/")
PAIR_RE = re.compile(r"\s*([^=,\s]+)\s*=\s*'((?:[^'\\]|\\.)*)'\s*(?:,|$)")
SHOWN = ("controller", "action", "route", "callsite", "framework", "db_driver", "traceparent")


def parse(query: str | None) -> dict[str, str] | None:
    """Return the key-value pairs of the last sqlcommenter comment in ``query``, else None."""
    found = COMMENT_RE.findall(query or "")
    if not found:
        return None
    body = found[-1].strip()
    pairs: dict[str, str] = {}
    position = 0
    while position < len(body):
        match = PAIR_RE.match(body, position)
        if match is None or match.end() == position:
            return None  # not sqlcommenter's format: an ordinary comment
        value = re.sub(r"\\(.)", r"\1", match[2])
        pairs[unquote(match[1])] = unquote(value)
        position = match.end()
    return pairs or None


def words(comment: dict[str, str] | None) -> str:
    """Return a comment's code attribution in a few words: ``controller=results route=api/jobs``."""
    if not comment:
        return ""
    keys = [k for k in SHOWN if k in comment] or sorted(comment)
    return " ".join(f"{k}={comment[k]}" for k in keys if k != "traceparent" or len(keys) == 1)
