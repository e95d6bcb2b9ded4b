"""What the source says: the lock constructs and transaction blocks of a module, by line (pure but for
reading files, through ``Sources``, which a test can replace).

A ``with <expr>:`` block or an ``<expr>.acquire()`` ... ``release()`` span takes a lock (``<expr>`` a
name or attribute chain: a call is never a lock); a ``with ...atomic(...):`` block or a function
decorated with ``atomic`` runs inside a Django transaction.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LockSites:
    """The lock constructs of one source file, by line."""

    waits: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Line -> lock expressions a thread stopped on this line is taking."""
    holds: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Line -> lock expressions held by a frame on this line."""
    atomic: frozenset[int] = frozenset()
    """Lines inside a ``with ...atomic(...):`` block or a function decorated with ``atomic``."""


def _chain(node: ast.expr) -> str | None:
    """Return ``a.b.c`` for a name or attribute chain, else None (a call is never a lock)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _chain(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _method_calls(function: ast.AST, method: str) -> list[tuple[int, str]]:
    """Return (line, receiver) of ``<receiver>.<method>(...)`` calls in a function, nested ones excluded."""
    found = []
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method:
            receiver = _chain(node.func.value)
            if receiver is not None:
                found.append((node.lineno, receiver))
        stack.extend(ast.iter_child_nodes(node))
    return sorted(found)


def _is_atomic(node: ast.expr) -> bool:
    """Tell whether an expression is ``atomic``, ``transaction.atomic`` or a call of either."""
    if isinstance(node, ast.Call):
        node = node.func
    return (_chain(node) or "").split(".")[-1] == "atomic"


def parse_lock_sites(text: str, aliases: Mapping[str, str] | None = None) -> LockSites:
    """Return the ``with <lock>:`` blocks and ``acquire()``/``release()`` spans of a module's source."""
    aliases = aliases or {}
    waits: dict[int, list[str]] = {}
    holds: dict[int, list[str]] = {}
    atomic: set[int] = set()
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.With, ast.AsyncWith)) and node.body and any(
                _is_atomic(item.context_expr) for item in node.items):
            atomic.update(range(node.body[0].lineno, (node.end_lineno or node.lineno) + 1))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                _is_atomic(d) for d in node.decorator_list):
            atomic.update(range(node.body[0].lineno, (node.end_lineno or node.lineno) + 1))
        if isinstance(node, ast.With):
            exprs = [e for e in (_chain(item.context_expr) for item in node.items) if e]
            if not exprs or not node.body:
                continue
            body_start = node.body[0].lineno
            for line in range(node.lineno, body_start):
                waits.setdefault(line, []).extend(exprs)
            for line in range(body_start, (node.end_lineno or body_start) + 1):
                holds.setdefault(line, []).extend(exprs)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            releases = [(line, aliases.get(e, e)) for line, e in _method_calls(node, "release")]
            end = node.end_lineno or node.lineno
            for line, receiver in _method_calls(node, "acquire"):
                expr = aliases.get(receiver, receiver)
                waits.setdefault(line, []).append(expr)
                until = min((r for r, e in releases if e == expr and r > line), default=end)
                for held in range(line + 1, until + 1):
                    holds.setdefault(held, []).append(expr)
    return LockSites(
        waits={line: tuple(dict.fromkeys(e)) for line, e in waits.items()},
        holds={line: tuple(dict.fromkeys(e)) for line, e in holds.items()},
        atomic=frozenset(atomic),
    )


def _aliases(filename: str) -> dict[str, str]:
    # logging.Handler.handle takes the handler's lock through self.acquire()/self.release().
    return {"self": "self.lock"} if filename.endswith(os.path.join("logging", "__init__.py")) else {}


class Sources:
    """Parses each source file once (again when it changes); unreadable files have no lock sites."""

    def __init__(self, read: Callable[[str], str] | None = None) -> None:
        self._read = read or _read_text
        self._cache: dict[tuple[str, float], LockSites] = {}

    def sites(self, filename: str) -> LockSites:
        try:
            stamp = os.stat(filename).st_mtime if self._read is _read_text else 0.0
            key = (filename, stamp)
            if key not in self._cache:
                self._cache[key] = parse_lock_sites(self._read(filename), _aliases(filename))
            return self._cache[key]
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            return LockSites()


def _read_text(filename: str) -> str:
    with open(filename, encoding="utf-8") as f:
        return f.read()


