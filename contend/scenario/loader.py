"""Loading a scenario file with line-accurate errors.

Every error of ``load_scenario`` is a ``ConfigError`` whose message reads
``<file>:<line>: <key path>: <what is wrong>``, with the nearest valid key for a typo. Lines come
from ``yaml.compose`` (each node keeps its start mark), so the pydantic error location maps back
to the line of the key that caused it.

YAML 1.1 reads ``on``/``off``/``yes``/``no`` as booleans; this loader keeps only ``true``/``false``
as booleans (YAML 1.2), because flag values such as ``CACHALOT: off`` must stay the word written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from contend.errors import ConfigError
from contend.scenario.models import DOCS_HINT, Scenario
from contend.scenario.variants import ScenarioError, key_path, plain_message
from contend.thresholds import did_you_mean


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``off`` and ``no`` stay strings."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_scenario(path: Path | str) -> Scenario:
    """Return the validated scenario in ``path``; ConfigError (with file:line) for any mistake."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", hint="give the path of a scenario YAML file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x})",
                          hint="save the scenario as UTF-8") from None
    return parse_scenario(text, str(path), folder=path.resolve().parent)


def parse_scenario(text: str, source: str = "<scenario>", folder: Path | None = None) -> Scenario:
    """Return the validated scenario in ``text``; errors name ``source`` and the line. The workloads'
    relative paths are taken against ``folder`` (the scenario file's; none: the current folder)."""
    data, lines = _read_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a scenario is a mapping of keys (name:, workloads:, ...)",
                          hint=DOCS_HINT)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as error:
        raise _located(error, source, lines) from None
    try:
        scenario.expand()
    except ScenarioError as error:
        found = [f"{source}:{lines[_known_prefix(e.path, lines)]}: {key_path(e.path)}: {e.detail}"
                 for e in (error, *error.also)]
        raise ConfigError("\n".join(found), hint=error.hint or DOCS_HINT) from None
    return scenario.resolved(folder) if folder is not None else scenario


def dump_scenario(scenario: Scenario) -> str:
    """Return the scenario as YAML with every default filled in (the run folder's scenario.yaml)."""
    return yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


MAX_DEPTH = 64
"""Nesting deeper than this is no scenario; PyYAML's composer recurses and would overflow the stack."""
MAX_NODES = 100_000
"""Keys and items, aliases counted each time they are used (a few aliases can multiply a file)."""


def _read_yaml(text: str, source: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """Return the YAML data and the line (1-based) of every key and list item, by key path."""
    loader = None
    try:
        _check_depth(text, source)
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{source}:1: the file is empty", hint=DOCS_HINT)
        lines: dict[tuple[str | int, ...], int] = {(): node.start_mark.line + 1}
        _index(node, (), lines, source, set())
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: invalid YAML: {error.problem or error.context}",
                          hint="check the indentation and the quoting around this line") from None
    except yaml.reader.ReaderError as error:  # a character YAML does not allow (NUL, most controls)
        row = text.count("\n", 0, error.position) + 1
        raise ConfigError(f"{source}:{row}: invalid YAML: character {chr(error.character)!r} is not allowed",
                          hint="remove the control character (a scenario is plain text)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML: {error}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_depth(text: str, source: str) -> None:
    """Raise ConfigError at the line where collections nest deeper than MAX_DEPTH (parser events:
    no recursion, so this runs before the composer could overflow)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                row = event.start_mark.line + 1 if event.start_mark else 1
                raise ConfigError(f"{source}:{row}: lists and mappings nest more "
                                  f"than {MAX_DEPTH} levels deep", hint=DOCS_HINT)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _index(node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int],
           source: str, open_nodes: set[int]) -> None:
    if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        return
    line = node.start_mark.line + 1
    if id(node) in open_nodes:  # an alias inside the collection it names: a: &a [*a]
        raise ConfigError(f"{source}:{line}: {key_path(path)}: an alias refers to the list or mapping "
                          "that contains it (the value would be infinite)", hint="remove the alias")
    if len(lines) > MAX_NODES:
        raise ConfigError(f"{source}:{line}: {key_path(path)}: more than {MAX_NODES} keys and items "
                          "(counting what aliases repeat)", hint="a scenario needs far fewer; remove aliases")
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise ConfigError(f"{source}:{key.start_mark.line + 1}: {key_path(path)}: a key must be "
                                  "a word, not a list or mapping", hint=DOCS_HINT)
            here = (*path, key.value)
            if here in lines:
                raise ConfigError(f"{source}:{key.start_mark.line + 1}: {key_path(here)}: duplicate key "
                                  f"(first at line {lines[here]})", hint="remove one of the two")
            lines[here] = key.start_mark.line + 1
            _index(value, here, lines, source, open_nodes)
    else:
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _index(item, (*path, i), lines, source, open_nodes)
    open_nodes.discard(id(node))


def _known_prefix(loc: Sequence[str | int], lines: Mapping[tuple[str | int, ...], int]
                  ) -> tuple[str | int, ...]:
    """Return the path of ``loc`` in the YAML, skipping pydantic's union tags it does not hold."""
    path: tuple[str | int, ...] = ()
    for part in loc:
        if (*path, part) in lines:
            path = (*path, part)
    return path


def _located(error: ValidationError, source: str, lines: Mapping[tuple[str | int, ...], int]
             ) -> ConfigError:
    """Return one ConfigError for the first (by line) of pydantic's errors, located and explained."""
    found = []
    for err in error.errors():
        known = _known_prefix(err["loc"], lines)
        kind = err["type"]
        leaf = err["loc"][-1] if err["loc"] else ""
        hint = DOCS_HINT
        if kind == "extra_forbidden":
            shown = (*known[:-1], leaf) if known and known[-1] == leaf else (*known, leaf)
            allowed = _keys_at(err["loc"][:-1])
            what = f"unknown key{did_you_mean(str(leaf), allowed)}"
            hint = f"valid keys here: {', '.join(allowed)}" if allowed else DOCS_HINT
        elif kind == "missing":
            shown = (*known, leaf)
            what = "missing required key"
        elif kind == "union_tag_invalid":
            shown = (*known, "kind") if (*known, "kind") in lines else known
            ctx = err.get("ctx", {})
            what = f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif kind == "union_tag_not_found":
            shown = known
            what = f"missing 'kind' (one of {', '.join(_kinds_at(err['loc']))})"
        else:
            shown = known
            got = err.get("input")
            what = plain_message(err["msg"])
            if not isinstance(got, dict | list) and kind != "value_error":
                what += f" (got {got!r})"
        found.append((lines.get(known, 1), shown, what, hint))
    found.sort(key=lambda f: (f[0], "unknown key" not in f[2]))
    line, shown, what, hint = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return ConfigError(f"{source}:{line}: {key_path(shown)}: {what}{more}", hint=hint)


def _candidates(tp: Any) -> list[Any]:
    """Return the concrete types an annotation may hold (Annotated and unions unwrapped)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _candidates(get_args(tp)[0])
    if origin is Union or type(tp).__name__ == "UnionType":
        return [c for arg in get_args(tp) for c in _candidates(arg)]
    return [tp]


def _types_at(loc: Sequence[str | int]) -> list[Any]:
    """Return the types that may sit at ``loc`` in a Scenario, following pydantic's locations."""
    types: list[Any] = [Scenario]
    for part in loc:
        step: list[Any] = []
        for tp in types:
            origin = get_origin(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
                step += _candidates(tp.model_fields[str(part)].annotation)
            elif origin in (list, tuple) and isinstance(part, int):
                step += _candidates(get_args(tp)[0])
            elif origin is dict and isinstance(part, str):
                step += _candidates(get_args(tp)[1])
        types = step or types  # a union tag in the location: stay on the same types
    return types


def _keys_at(loc: Sequence[str | int]) -> list[str]:
    types = _types_at(loc)
    tag = loc[-1] if loc else None
    models = [t for t in types if isinstance(t, type) and issubclass(t, BaseModel)]
    tagged = [m for m in models if "kind" in m.model_fields and m.model_fields["kind"].default == tag]
    return sorted({k for m in tagged or models for k in m.model_fields})


def _kinds_at(loc: Sequence[str | int]) -> list[str]:
    types = _types_at(loc)
    return [str(get_args(t.model_fields["kind"].annotation)[0]) for t in types
            if isinstance(t, type) and issubclass(t, BaseModel) and "kind" in t.model_fields]
