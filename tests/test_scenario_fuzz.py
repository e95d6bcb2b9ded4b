"""Mangled scenario files: `contend validate` answers each with exit 0, or one `Error: file:line:` and exit 2.

The shipped scenarios are cut, spliced and salted with YAML's sharp edges (aliases, tags, control
characters, deep nesting, huge numbers, odd keys); whatever comes out, the CLI never shows a traceback.
Runs in process through click's CliRunner.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contend.cli import cli

ROOT = Path(__file__).parent.parent
SHIPPED = sorted([*(ROOT / "scenarios").glob("*.yaml"), *(ROOT / "tests/data/scenarios").glob("*.yaml")])
FRAGMENTS = [
    "\x00", "\t", "\r", "\x85", "\u2028", "\ufeff", "\x1b", ": ", ":", "- ", "-", "&a ", "*a", "<<: *a\n",
    "&a [*a]", "a: &a [*a]\n", "[", "]", "{", "}", "'", '"', "? ", "!!python/object/apply:os.system ['x']",
    "!!binary ", "!custom ", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "1e999", "-1", "0",
    ".nan", "null", "~", "true", "off", "0x1F", "2001-12-14", "#", "|\n", ">-\n", "x" * 2000,
    "[" * 500 + "]" * 500, "- " * 200, "{a: " * 300, "\\", "@", "`", "%", "\n  ", "\n\t", "\n- ",
    "[1]: 2\n", "{a: 1}: b\n", "? [x]\n: y\n",
]

Mutation = tuple[str, float, float, str]


def mangle(text: str, mutations: list[Mutation]) -> str:
    for kind, where, other, payload in mutations:
        i, j = sorted((int(where * len(text)), int(other * len(text))))
        lines = text.splitlines(keepends=True) or [""]
        k, m = int(where * len(lines)) % len(lines), int(other * len(lines)) % len(lines)
        if kind == "insert":
            text = text[:i] + payload + text[i:]
        elif kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "replace":
            text = text[:i] + payload + text[j:]
        elif kind == "truncate":
            text = text[:i]
        elif kind == "duplicate_line":
            lines.insert(m, lines[k])
            text = "".join(lines)
        elif kind == "swap_lines":
            lines[k], lines[m] = lines[m], lines[k]
            text = "".join(lines)
        elif kind == "indent_line":
            lines[k] = payload[:3].replace("\n", " ") + lines[k]
            text = "".join(lines)
    return text


mutations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace", "truncate", "duplicate_line", "swap_lines",
                         "indent_line"]),
        st.floats(0, 1), st.floats(0, 1),
        st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20)),
    ),
    min_size=1, max_size=4,
)


def validate(path: Path) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(cli, ["validate", str(path)])
    return result.exit_code, result.stderr, result.exception


def assert_answered(path: Path) -> None:
    code, stderr, exception = validate(path)
    assert exception is None or isinstance(exception, SystemExit), repr(exception)
    assert "Traceback" not in stderr
    assert code in (0, 2), (code, stderr)
    if code == 2:
        lines = stderr.splitlines()
        assert re.match(rf"Error: {re.escape(str(path))}:\d+: \S", lines[0]), stderr
        assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("Hint: ")), stderr


@pytest.mark.parametrize(("name", "text", "message"), [
    ("alias", "a: &a [*a]\n", "1: a[0]: an alias refers to the list or mapping that contains it"),
    ("alias-in-mapping", "name: x\nw: &w\n  b: *w\n", "2: w.b: an alias refers to the list or mapping"),
    ("nul", "name: x\nworkloads:\x00\n", "2: invalid YAML: character '\\x00' is not allowed"),
    ("deep", "name: x\nworkloads: " + "[" * 500 + "]" * 500 + "\n",
     "2: lists and mappings nest more than 64 levels deep"),
    ("bomb", "".join(f"{n}: &{n} [{', '.join([f'*{p}' if p else 'x'] * 10)}]\n"
                     for p, n in zip(["", "a", "b", "c", "d", "e"], "abcdef", strict=True)),
     ": more than 100000 keys and items (counting what aliases repeat)"),
    ("list-key", "[1]: 2\n", "1: (top level): a key must be a word, not a list or mapping"),
    ("empty", "", "1: the file is empty"),
    ("latin-1", "name: caf\xe9\n", "1: not UTF-8 text (byte 0xe9)"),
])
def test_hostile_yaml_is_one_error_line_and_exit_2(tmp_path: Path, name: str, text: str,
                                                    message: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text.encode("latin-1" if name == "latin-1" else "utf-8"))
    code, stderr, _ = validate(path)
    assert code == 2
    assert stderr.splitlines()[0].startswith(f"Error: {path}:"), stderr
    assert message in stderr.splitlines()[0]
    assert_answered(path)


def test_every_shipped_scenario_validates() -> None:
    assert len(SHIPPED) >= 8
    for path in SHIPPED:
        code, stderr, _ = validate(path)
        assert code == 0 or path.name == "typo.yaml", stderr


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(SHIPPED), changes=mutations)
def test_mangled_scenarios_never_show_a_traceback(source: Path, changes: list[Mutation]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / source.name
        path.write_text(mangle(source.read_text(), changes), encoding="utf-8", errors="surrogateescape")
        assert_answered(path)


VALUES = st.one_of(
    st.sampled_from([None, [], {}, "", "x", "off", -1, 0, 2**64, 1e308, float("nan"), float("inf"), True,
                     [[[]]], {"kind": "external"}, {"kind": "nope"}, "JOB_LOG_PERSIST_ENABLED", "*=true,*",
                     "edges_max < 5", "latency_p95_s <= 1.2x baseline ±10%", "a/b", "..", "\x00"]),
    st.text(max_size=10), st.integers(), st.floats(),
)


def _paths(data: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _paths(value, (*path, i))
    return found


def _replace(data: object, path: tuple[object, ...], value: object, rename: bool) -> object:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        if rename and not rest:
            return {(str(value) if k == head else k): v for k, v in data.items()}
        return {k: _replace(v, rest, value, rename) if k == head else v for k, v in data.items()}
    assert isinstance(data, list)
    return [_replace(v, rest, value, rename) if i == head else v for i, v in enumerate(data)]


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(SHIPPED), data=st.data())
def test_scenarios_with_wrong_values_never_show_a_traceback(source: Path, data: st.DataObject) -> None:
    tree = yaml.safe_load(source.read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(tree)))
        tree = _replace(tree, path, data.draw(VALUES), rename=data.draw(st.booleans()))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / source.name
        path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8", errors="surrogateescape")
        assert_answered(path)
