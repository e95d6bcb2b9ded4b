"""Record files: what a writer appends reads back; a torn last line is skipped, a damaged one is an error."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from contend.errors import ConfigError
from contend.jsonl import JsonlWriter, iter_jsonl, read_jsonl


def test_written_records_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "r.jsonl"
    with JsonlWriter(path) as out:
        out.write([{"t": 1.5, "q": "UPDATE x"}, {"t": 2, "when": Path("/")}])
        out.write([])
        # flushed on write: a reader sees the records while the writer is still open
        assert read_jsonl(path) == [{"t": 1.5, "q": "UPDATE x"}, {"t": 2, "when": "/"}]
    assert path.read_text().count("\n") == 2


def test_appends_from_threads_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    out = JsonlWriter(path, flush_every_s=60)

    def write(n: int) -> None:
        for i in range(200):
            out.write([{"n": n, "i": i, "pad": "x" * 500}])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    records = read_jsonl(path)
    assert len(records) == 800
    for n in range(4):
        assert [r["i"] for r in records if r["n"] == n] == list(range(200))


def test_a_torn_last_line_is_skipped_and_noted(tmp_path: Path) -> None:
    path = tmp_path / "pg_ticks.jsonl"
    path.write_text('{"t": 1}\n\n{"t": 2}\n{"t": 3, "ro')
    notes: list[str] = []
    assert read_jsonl(path, notes) == [{"t": 1}, {"t": 2}]
    assert notes == ["pg_ticks.jsonl: skipped 1 unreadable line(s) (a run stopped mid-write leaves one)"]
    path.write_text('{"t": 1}\n12')  # a cut line that still parses, as a number
    torn: list[int] = []
    assert list(iter_jsonl(path, torn)) == [{"t": 1}] and torn == [2]


def test_a_complete_last_line_without_newline_counts(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"t": 1}\n{"t": 2}')
    notes: list[str] = []
    assert read_jsonl(path, notes) == [{"t": 1}, {"t": 2}] and notes == []


@pytest.mark.parametrize(("text", "what"), [
    ('{"t": 1}\n{"t": 2, "ro\n{"t": 3}\n', "2: damaged record: not JSON ("),
    ('{"t": 1}\n[1, 2]\n', "2: damaged record: a JSON list, not an object"),
])
def test_a_damaged_complete_line_is_one_error_with_its_line(tmp_path: Path, text: str, what: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_jsonl(path)
    assert caught.value.message.startswith(f"{path}:{what}")
    assert "cut short" in caught.value.hint


def test_a_missing_file_has_no_records(tmp_path: Path) -> None:
    notes: list[str] = []
    assert read_jsonl(tmp_path / "none.jsonl", notes) == [] and notes == []


def test_masked_secrets_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pg_backends.jsonl"
    with JsonlWriter(path, mask=["0b9917d0", 'pa"ss']) as writer:
        writer.write([{"query": "SELECT 1 FROM authtoken_token WHERE key = '0b9917d0'", "other": 'pa"ss'}])
    text = path.read_text()
    assert "0b9917d0" not in text and "pa" not in text
    assert read_jsonl(path)[0] == {"query": "SELECT 1 FROM authtoken_token WHERE key = '***'", "other": "***"}
