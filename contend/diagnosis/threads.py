"""Where server threads wait, from py-spy thread records (pure: no process, no py-spy).

A thread record is one entry of ``samples/pyspy.jsonl``'s ``threads`` (innermost frame first). The
sampler (``contend.sample.pyspy``), the attribution and the report's analysis all classify threads
with these functions: ``thread_state`` says what a thread waits on, ``summarize_stacks`` turns dumps
into "7 of 8 result workers in psycopg wait <- _update_job_progress".
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contend.diagnosis.sources import Sources

# How the threads of a role are named in a sentence ("7 of 8 result workers ...").
ROLE_LABELS = {"worker": "result workers", "web": "web threads"}

_PSYCOPG = ("/psycopg/", "/psycopg_binary/", "/psycopg_c/", "/psycopg2/")
_SOCKET = ("/socket.py", "/selectors.py", "/ssl.py", "/select.py", "/asyncio/")
_LOCK = ("/threading.py", "/queue.py")


def is_own(frame: Mapping[str, Any], own_code_prefixes: Sequence[str]) -> bool:
    """Tell whether a frame's file is in the server's own code (a prefix occurs in its path)."""
    filename = str(frame.get("filename") or "")
    return any(prefix in filename for prefix in own_code_prefixes)


def own_chain(frames: Sequence[Mapping[str, Any]], own_code_prefixes: Sequence[str], limit: int = 3) -> str:
    """Return the innermost own-code functions, outermost first: ``"result -> emit -> save"``."""
    names = [str(f.get("name")) for f in frames if is_own(f, own_code_prefixes)][:limit]
    return " -> ".join(reversed(names))


def thread_state(thread: Mapping[str, Any], own_code_prefixes: Sequence[str],
                 sources: Sources | None = None) -> str:
    """Classify a thread by the frames inside its innermost own-code frame.

    ``psycopg wait`` (in the driver: waiting on Postgres), ``socket wait`` (a socket or selector,
    counted as waiting on Postgres too), ``lock wait`` (a threading lock or queue, or a line that
    takes a lock, read from the source as the wait-for graph reads it: ``logging.Handler.acquire``),
    ``running`` (py-spy saw it active) or ``idle``.
    """
    frames = list(thread.get("frames", ()))
    inner = []
    for frame in frames:
        if is_own(frame, own_code_prefixes):
            break
        inner.append(str(frame.get("filename") or ""))
    if any(p in f for f in inner for p in _PSYCOPG):
        return "psycopg wait"
    if any(p in f for f in inner for p in _SOCKET):
        return "socket wait"
    if any(f.endswith(p) for f in inner for p in _LOCK):
        return "lock wait"
    if thread.get("active"):
        return "running"
    return "lock wait" if frames and _takes_lock(frames[0], sources or _SOURCES) else "idle"


_SOURCES = Sources()


def _takes_lock(frame: Mapping[str, Any], sources: Sources) -> bool:
    line, filename = frame.get("line"), frame.get("filename")
    return bool(filename and line is not None and sources.sites(str(filename)).waits.get(int(line)))


def waits_on_postgres(thread: Mapping[str, Any], own_code_prefixes: Sequence[str]) -> bool:
    """Tell whether a thread waits in psycopg or on a socket."""
    return thread_state(thread, own_code_prefixes) in ("psycopg wait", "socket wait")


def summarize_stacks(dumps: Iterable[Mapping[str, Any]], own_code_prefixes: Sequence[str]) -> list[str]:
    """Return one sentence per (role, state, innermost own function), most threads first.

    Only threads running the server's own code count (interpreter and pool threads do not):
    ``"7 of 8 result workers in psycopg wait <- _update_job_progress"``.
    """
    totals: Counter[str] = Counter()
    groups: Counter[tuple[str, str, str]] = Counter()
    for record in dumps:
        role = str(record.get("role") or "process")
        for thread in record.get("threads", ()):
            own = [f for f in thread.get("frames", ()) if is_own(f, own_code_prefixes)]
            if not own:
                continue
            totals[role] += 1
            groups[(role, thread_state(thread, own_code_prefixes), str(own[0].get("name")))] += 1
    ordered = sorted(groups.items(), key=lambda item: (-item[1], item[0]))
    return [
        f"{n} of {totals[role]} {ROLE_LABELS.get(role, role + ' threads')} in {state} <- {function}"
        for (role, state, function), n in ordered
    ]


OWN_CODE = ("contend/refserver/",)
LIBRARY_MARKERS = ("site-packages", "dist-packages", "/lib/python", "<")


def app_root(dumps: list[dict[str, Any]]) -> str | None:
    """The folder holding every non-library frame of the dumps (an external server's own code), if any."""
    folders = {
        os.path.dirname(str(frame.get("filename") or ""))
        for dump in dumps
        for thread in dump.get("threads") or ()
        for frame in thread.get("frames") or ()
        if frame.get("filename") and not any(m in str(frame["filename"]) for m in LIBRARY_MARKERS)
    }
    if not folders:
        return None
    root = os.path.commonpath(sorted(folders))
    return root + "/" if root not in ("", "/") else None


def stack_summary(dumps: list[dict[str, Any]], own: tuple[str, ...] = OWN_CODE, limit: int = 8) -> list[str]:
    """Sentences saying where server threads wait, most common first (the sampler's aggregation).

    The own code is the reference server's; for an external server (none of its frames match) it is
    the folder that holds all of its non-library frames.
    """
    lines = summarize_stacks(dumps, own)
    if not lines and dumps:
        root = app_root(dumps)
        lines = summarize_stacks(dumps, (root,)) if root else []
    return lines[:limit]


def dump_basis(dumps: Iterable[Mapping[str, Any]]) -> str:
    """Say what the stack summary rests on: ``"14 dumps of 9 processes (10 lock waiters, 4 baseline)"``.

    Failed dumps are counted apart, with their share when the dumps were non-blocking.
    """
    reasons: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    pids: set[int] = set()
    nonblocking = False
    for record in dumps:
        key = str(record.get("reason") or "periodic")
        nonblocking = nonblocking or bool(record.get("nonblocking"))
        if record.get("error"):
            failed[key] += 1
            continue
        reasons[key] += 1
        pids.add(int(record.get("pid") or 0))
    total, bad = sum(reasons.values()), sum(failed.values())
    text = f"{total} dump{'s' if total != 1 else ''} of {len(pids)} process{'es' if len(pids) != 1 else ''}"
    if reasons:
        text += " (" + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) + ")"
    if bad:
        mode = "non-blocking " if nonblocking else ""
        text += f"; {bad} {mode}dump{'s' if bad != 1 else ''} failed ({bad / (total + bad):.0%})"
    return text


_PACKAGE_ROOTS = re.compile(r".*/(?:site-packages|dist-packages|lib/python3(?:\.\d+)?)/")


def short_path(filename: object) -> str:
    """Name a frame's file for a sentence: a library file from its package (``celery/events/
    dispatcher.py``, not ``dispatcher.py``), the application's own by its file name."""
    text = str(filename or "?")
    match = _PACKAGE_ROOTS.match(text)
    return text[match.end():] if match else os.path.basename(text)
