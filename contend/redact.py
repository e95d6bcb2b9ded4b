"""Secrets out of every text contend writes: DSN passwords in messages, logs, records and reports.

Every writer of user-visible text goes through here: error messages (``redact_message``), and any
string that may carry a connection string (``redact_dsn``). Tokens never reach a writer: they come
from the environment and are passed to child processes through it, never through argv.
"""

from __future__ import annotations

import re


def redact_message(exc: BaseException) -> str:
    """Return the first line of an error message with any password of a DSN removed."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact_dsn(text)


def redact_dsn(text: str) -> str:
    """Replace the password of every ``scheme://user:password@`` and ``password=`` in ``text``."""
    text = re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)
