"""JSON-lines record files: how every raw artifact of a run folder is written and read (docs/records.md).

Writers append one compact JSON object per line and flush, so a killed run keeps what it recorded:
the load processes, the samplers and the synthetic run write through ``JsonlWriter``. Readers
(``iter_jsonl``, ``read_jsonl``) skip the one thing a killed writer leaves behind, a last line cut
short (no newline at its end); a complete line that is not a JSON object means the file was damaged
or is not a record file, and is one ``ConfigError`` naming the file and the line.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from contend.errors import ConfigError

TORN_NOTE = "skipped 1 unreadable line(s) (a run stopped mid-write leaves one)"


def dumps(record: dict[str, Any]) -> str:
    """Return one record as a line of text without its newline (compact; non-JSON values as str)."""
    return json.dumps(record, separators=(",", ":"), default=str)


class JsonlWriter:
    """Appends JSON lines to one file, thread-safe; flushed at least every ``flush_every_s`` seconds.

    With the default ``flush_every_s=0`` every ``write`` reaches the OS before it returns.
    """

    def __init__(self, path: Path, flush_every_s: float = 0.0, mask: Sequence[str] = ()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.flush_every_s = flush_every_s
        # Secrets replaced by *** in every line, as written and as JSON escapes them (a query text
        # that compares a column with the API token holds it as a literal).
        self.mask = sorted({form for secret in mask for form in (secret, json.dumps(secret)[1:-1])},
                           key=len, reverse=True)
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records``, one line each."""
        self.write_lines([dumps(r) for r in records])

    def write_lines(self, lines: Iterable[str]) -> None:
        """Append lines already serialised with ``dumps`` (a newline is added to each)."""
        text = "".join(line + "\n" for line in lines)
        if not text:
            return
        for secret in self.mask:
            text = text.replace(secret, "***")
        with self._lock:
            self._file.write(text)
            if time.monotonic() - self._flushed >= self.flush_every_s:
                self._flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._file.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def iter_jsonl(path: Path, torn: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of ``path`` in order; a missing file yields nothing.

    A last line without its newline (a writer killed mid-line) is skipped and, when ``torn`` is
    given, its line number appended to it. Any other line that is not a JSON object raises a
    ConfigError ``<file>:<line>: ...``. Blank lines are skipped.
    """
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            complete = line.endswith(b"\n")
            try:
                record = json.loads(line)
            except ValueError as error:
                if not complete:
                    if torn is not None:
                        torn.append(number)
                    return
                raise _corrupt(path, number, f"not JSON ({error})") from None
            if not isinstance(record, dict):
                if not complete:  # a number or a string cut short can still parse
                    if torn is not None:
                        torn.append(number)
                    return
                raise _corrupt(path, number, f"a JSON {type(record).__name__}, not an object")
            yield record


def read_jsonl(path: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Return the records of ``path`` ([] when it is missing); a torn last line is noted in ``notes``."""
    torn: list[int] = []
    records = list(iter_jsonl(path, torn))
    if torn and notes is not None:
        notes.append(f"{path.name}: {TORN_NOTE}")
    return records


def _corrupt(path: Path, number: int, what: str) -> ConfigError:
    return ConfigError(
        f"{path}:{number}: damaged record: {what}",
        hint="only the last line of a record file may be cut short (a run stopped mid-write); "
             "this one is complete, so the file was changed after the run",
    )
