"""The scenario file: its schema, loading with line-accurate errors, and expansion into variants.

A scenario is YAML validated into a frozen ``Scenario``; ``Scenario.expand()`` turns its ``variants``
list or its ``matrix`` into ``Variant`` objects (flags resolved, workload parameters applied,
thresholds attached), one per variant, that ``contend run`` executes ``repetitions`` times each.

Every error of ``load_scenario`` is a ``ConfigError`` whose message reads
``<file>:<line>: <key path>: <what is wrong>``, with the nearest valid key for a typo. Lines come
from ``yaml.compose`` (each node keeps its start mark), so the pydantic error location maps back
to the line of the key that caused it.

YAML 1.1 reads ``on``/``off``/``yes``/``no`` as booleans; this loader keeps only ``true``/``false``
as booleans (YAML 1.2), because flag values such as ``CACHALOT: off`` must stay the word written.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveFloat,
    PositiveInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from contend.errors import ConfigError
from contend.flags import FLAGS, PRESETS, flag_names, resolve_flags
from contend.gate import Threshold, did_you_mean, matches_variant, parse_threshold
from contend.load.config import BatchedPost, PullWorkers, Workload
from contend.target import check_target

Scalar = bool | int | float | str
NonNegativeFloat = Annotated[float, Field(ge=0)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._=,+:@-]*$", max_length=120)]
DOCS_HINT = "the scenario keys are in docs/scenarios.md (or run `contend schema`)"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class EmbeddedTarget(_Model):
    """The bundled reference server, started fresh (new database) for every variant and repetition."""

    kind: Literal["embedded"] = "embedded"
    preset: str | None = None
    """Flag preset: pre-1261, pr-1261, pr-1261-logs-off or joblog-1259 (`contend flags` lists them)."""
    flags: dict[str, Scalar] = {}
    """Flags for every variant, over the preset (a variant's own flags win)."""
    web_concurrency: PositiveInt | None = None
    """Web processes (the WEB_CONCURRENCY flag); none: the preset's value."""
    worker_concurrency: PositiveInt | None = None
    """Result worker processes (the ML_WORKER_CONCURRENCY flag); none: the preset's value."""
    jobs: PositiveInt = 1
    """Jobs created by the fixtures."""
    images_per_job: PositiveInt = 500
    """Images (tasks) per job."""


class ExternalTarget(_Model):
    """A server contend does not start (your own Antenna); load goes to base_url."""

    kind: Literal["external"]
    base_url: str
    """http(s)://host[:port]; only loopback unless allow_remote is true."""
    token_env: str | None = None
    """Environment variable holding the API token; none: ANTENNA_TOKEN, then CONTEND_TOKEN."""
    dsn_env: str | None = "CONTEND_DSN"
    """Environment variable holding the monitoring DSN (least-privilege role); none: no Postgres sampling."""
    pyspy_pids: dict[str, list[PositiveInt]] = {}
    """Server processes for py-spy by role, e.g. {web: [1234], worker: [1240, 1241]}."""
    pyspy_patterns: dict[str, str] = {}
    """Server processes for py-spy by role and a regular expression on their command line."""
    allow_remote: bool = False
    """Send load to a non-loopback host (never do this against production)."""

    @field_validator("token_env", "dsn_env")
    @classmethod
    def _names_a_variable(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("give the name of an environment variable (such as MY_TOKEN), "
                             "never the secret itself")
        return value


Target = Annotated[EmbeddedTarget | ExternalTarget, Field(discriminator="kind")]


class Sampling(_Model):
    """What the samplers observe and how often (contend's SamplerConfig)."""

    pg_interval_s: PositiveFloat = 0.1
    """Postgres activity and blocker-graph tick."""
    pyspy: bool = True
    """Sample the server's Python stacks with py-spy."""
    pyspy_interval_s: PositiveFloat = 2.0
    """Seconds between py-spy dumps of each server process."""
    pyspy_record: bool = False
    """Also record a speedscope profile of each server process."""
    nats: bool = True
    """Sample the NATS consumers (queue depth, redeliveries)."""
    nats_interval_s: PositiveFloat = 1.0
    """Seconds between reads of the NATS consumers."""
    attribution_threshold_s: NonNegativeFloat = 1.0
    """A root blocker held this long gets its client thread's stack dumped."""


class ReportOptions(_Model):
    """What the report shows."""

    title: str | None = None
    """Title of report.html; none: the scenario name."""
    html: bool = True
    """Write report.html."""
    markdown: bool = True
    """Write report.md (short, for a pull request)."""
    top_statements: PositiveInt = 10
    """Root-blocker statements listed."""


def _valid_threshold(text: str) -> str:
    parse_threshold(text)
    return text


ThresholdText = Annotated[str, AfterValidator(_valid_threshold)]


class ThresholdCheck(_Model):
    """A threshold with options; ``check`` has the same syntax as the one-line form."""

    check: str
    """e.g. "latency_p95_s <= 1.2x baseline"."""
    tolerance: NonNegativeFloat | None = None
    """Noise allowance, a fraction of the limit (0.1 = 10 %)."""
    tolerance_abs: NonNegativeFloat = 0.0
    """Noise allowance in the metric's unit; the larger of the two applies."""
    variants: list[str] = []
    """Variant names or patterns (fnmatch: "*=true,*") it applies to; empty: all."""

    @model_validator(mode="after")
    def _parses(self) -> Self:
        parse_threshold(self.check, self.tolerance, self.tolerance_abs, self.variants)
        return self


def _threshold_form(value: Any) -> str:
    return "mapping" if isinstance(value, dict | ThresholdCheck) else "text"


ThresholdSpec = Annotated[
    Union[Annotated[ThresholdText, Tag("text")], Annotated[ThresholdCheck, Tag("mapping")]],  # noqa: UP007
    Discriminator(_threshold_form),
]


def to_threshold(spec: str | ThresholdCheck, variants: Sequence[str] = ()) -> Threshold:
    """Return the parsed Threshold of a scenario entry (``variants`` scopes a one-line entry)."""
    if isinstance(spec, str):
        return parse_threshold(spec, variants=variants)
    return parse_threshold(spec.check, spec.tolerance, spec.tolerance_abs, spec.variants or variants)


def _distinct(values: list[Scalar]) -> list[Scalar]:
    texts = [_text(v) for v in values]
    doubles = sorted({t for t in texts if texts.count(t) > 1})
    if doubles:
        raise ValueError(f"each value once; repeated: {', '.join(doubles)}")
    return values


class VariantSpec(_Model):
    """One named variant: flags (and workload parameters) that differ from the target's."""

    name: Name
    """Names its run folder: letters, digits and . _ = , + : @ - (no spaces, no '/')."""
    baseline: bool = False
    """The variant others are compared to; none marked: the first."""
    preset: str | None = None
    """Replaces the target's preset for this variant."""
    flags: dict[str, Scalar] = {}
    """Flags of the reference server for this variant, over the target's (see Flags below)."""
    params: dict[str, Scalar] = {}
    """Workload parameters: {concurrency: 5} (every workload with that key) or {pull_workers.pollers: 2}."""
    thresholds: list[ThresholdSpec] = []
    """Thresholds of this variant only (in addition to the scenario's)."""

    @field_validator("thresholds")
    @classmethod
    def _unscoped(cls, value: list[str | ThresholdCheck]) -> list[str | ThresholdCheck]:
        if any(isinstance(t, ThresholdCheck) and t.variants for t in value):
            raise ValueError("a variant's own thresholds apply to it; remove 'variants'")
        return value


class Scenario(_Model):
    """An experiment: a target, the load, what to sample, and the variants to compare."""

    name: Name
    """Names the run folder (reports/<name>-<UTC time>/)."""
    description: str = ""
    """What the scenario shows and what outcome to expect (shown in the report)."""
    target: Target = EmbeddedTarget()
    """The server under load: kind embedded (the default) or external."""
    workloads: Annotated[list[Workload], Field(min_length=1)]
    """One or more workloads, run at the same time (kind: batched_post or pull_workers)."""
    warm_up_s: NonNegativeFloat = 5.0
    """Seconds of sampling before the load starts."""
    cool_down_s: NonNegativeFloat = 2.0
    """Seconds of sampling after the load ends."""
    sampling: Sampling = Sampling()
    """What the samplers observe and how often."""
    variants: list[VariantSpec] = []
    """Named variants; exactly one may say baseline: true (else the first is the baseline)."""
    matrix: dict[str, Annotated[list[Scalar], Field(min_length=1), AfterValidator(_distinct)]] = {}
    """Cartesian product instead of variants: FLAG_NAME, preset, or a workload parameter -> values.
    The first combination is the baseline; names read like JOB_LOG_PERSIST_ENABLED=true,concurrency=5."""
    repetitions: PositiveInt = 1
    """Runs of each variant (the report shows their spread)."""
    thresholds: list[ThresholdSpec] = []
    """Gate thresholds for all variants (a mapping entry may scope itself with 'variants')."""
    report: ReportOptions = ReportOptions()
    """What the report shows."""

    @field_validator("target", mode="before")
    @classmethod
    def _embedded_by_default(cls, value: Any) -> Any:
        if isinstance(value, dict) and "kind" not in value:
            return {"kind": "embedded", **value}
        return value

    @field_validator("variants")
    @classmethod
    def _one_baseline(cls, variants: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in variants]
        doubles = sorted({n for n in names if names.count(n) > 1})
        if doubles:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(doubles)}")
        if sum(v.baseline for v in variants) > 1:
            raise ValueError("more than one variant says baseline: true")
        return variants

    def expand(self) -> list[Variant]:
        """Return the variants to run, baseline first-marked, flags resolved and parameters applied.

        Raises ScenarioError (a ConfigError with the key path) for an unknown flag, flag value,
        preset or workload parameter.
        """
        external = isinstance(self.target, ExternalTarget)
        if isinstance(self.target, ExternalTarget):
            _at(("target", "base_url"), check_target, self.target.base_url, self.target.allow_remote)
        target_preset = self.target.preset if isinstance(self.target, EmbeddedTarget) else None
        specs = list(self._specs())
        variants = []
        for path, spec in specs:
            flags: dict[str, str] = {}
            if isinstance(self.target, EmbeddedTarget):
                flags = self._flags(path, spec)
            elif spec.flags or spec.preset:
                raise ScenarioError(path, "flags and presets need an embedded target "
                                          "(contend cannot set the flags of an external server)")
            at = path if path == ("matrix",) else (*path, "params")
            workloads = _apply(self.workloads, spec.params, at)
            own = [to_threshold(t, (spec.name,)) for t in spec.thresholds]
            shared = [t for t in map(to_threshold, self.thresholds) if t.applies_to(spec.name)]
            variants.append(Variant(name=spec.name, flags=flags, workloads=tuple(workloads),
                                    baseline=spec.baseline, repetitions=self.repetitions,
                                    preset=spec.preset or target_preset,
                                    params=dict(spec.params),
                                    thresholds=(*shared, *own), external=external))
        if not any(v.baseline for v in variants):
            variants[0] = dataclasses.replace(variants[0], baseline=True)
        names = [v.name for v in variants]
        for i, entry in enumerate(self.thresholds):
            scope = entry.variants if isinstance(entry, ThresholdCheck) else []
            for pattern in scope:
                if not any(matches_variant(n, (pattern,)) for n in names):
                    raise ScenarioError(("thresholds", i, "variants"),
                                        f"{pattern!r} matches no variant{did_you_mean(pattern, names)}",
                                        hint=f"the variants: {', '.join(names)}")
        return variants

    def thresholds_by_variant(self) -> dict[str, tuple[Threshold, ...]]:
        """Return each variant's thresholds (the scenario's that apply to it, then its own)."""
        return {v.name: v.thresholds for v in self.expand()}

    def _specs(self) -> list[tuple[tuple[str | int, ...], VariantSpec]]:
        if self.variants and self.matrix:
            raise ScenarioError(("matrix",), "give either 'variants' or 'matrix', not both")
        if self.variants:
            return [(("variants", i), v) for i, v in enumerate(self.variants)]
        if not self.matrix:
            return [(("target",), VariantSpec(name="default", baseline=True))]
        for key, values in self.matrix.items():
            if key != "preset" and not key.isupper():
                for value in values:
                    _apply(self.workloads, {key: value}, ("matrix",))
        combos = itertools.product(*self.matrix.values())
        specs: list[tuple[tuple[str | int, ...], VariantSpec]] = []
        for i, combo in enumerate(combos):
            chosen = dict(zip(self.matrix, combo, strict=True))
            name = ",".join(f"{k}={_text(v)}" for k, v in chosen.items())
            preset = chosen.pop("preset", None)
            try:
                spec = VariantSpec.model_validate({
                    "name": name, "baseline": i == 0, "preset": preset,
                    "flags": {k: v for k, v in chosen.items() if k.isupper()},
                    "params": {k: v for k, v in chosen.items() if not k.isupper()},
                })
            except ValidationError:
                raise ScenarioError(("matrix",), f"the variant name {name!r} cannot name a folder",
                                    hint="use values without spaces, '/' or '~'") from None
            specs.append((("matrix",), spec))
        return specs

    def _flags(self, path: tuple[str | int, ...], spec: VariantSpec) -> dict[str, str]:
        assert isinstance(self.target, EmbeddedTarget)
        target = self.target
        preset = spec.preset or target.preset
        matrix = path == ("matrix",)
        overrides: dict[str, str] = {}
        for name, value, at in [
            ("WEB_CONCURRENCY", target.web_concurrency, ("target", "web_concurrency")),
            ("ML_WORKER_CONCURRENCY", target.worker_concurrency, ("target", "worker_concurrency")),
            *[(k, v, ("target", "flags", k)) for k, v in target.flags.items()],
            *[(k, v, ("matrix", k) if matrix else (*path, "flags", k)) for k, v in spec.flags.items()],
        ]:
            if value is None:
                continue
            text = _text(value)
            if name not in flag_names():
                raise ScenarioError(at, f"unknown flag {name!r}{did_you_mean(name, flag_names())}",
                                    hint="run `contend flags` to list every flag and its values")
            _at(at, resolve_flags, None, {name: text})
            overrides[name] = text
        where = (*path, "preset") if spec.preset else ("target", "preset")
        resolved: dict[str, str] = _at(where, resolve_flags, preset, overrides)
        return resolved


@dataclasses.dataclass(frozen=True)
class Variant:
    """One variant to run: every flag resolved, the workloads with its parameters applied."""

    name: str
    flags: dict[str, str]
    """Every flag of the reference server (empty for an external target)."""
    workloads: tuple[BatchedPost | PullWorkers, ...]
    baseline: bool
    repetitions: int
    preset: str | None = None
    """The preset its flags start from (the variant's, else the target's)."""
    params: dict[str, Scalar] = dataclasses.field(default_factory=dict)
    """The workload parameters this variant sets (a matrix sweep's x axis)."""
    thresholds: tuple[Threshold, ...] = ()
    external: bool = False


class ScenarioError(ConfigError):
    """A ConfigError about one key of the scenario; ``path`` is that key's location."""

    def __init__(self, path: Sequence[str | int], message: str, hint: str | None = None) -> None:
        super().__init__(f"{key_path(path)}: {message}", hint=hint)
        self.path = tuple(path)
        self.detail = message


def _at(path: Sequence[str | int], fn: Any, *args: Any) -> Any:
    """Call ``fn`` and re-raise its ConfigError as a ScenarioError located at ``path``."""
    try:
        return fn(*args)
    except ConfigError as error:
        raise ScenarioError(path, error.message, error.hint or None) from None


def _apply(workloads: Sequence[BatchedPost | PullWorkers], params: Mapping[str, Scalar],
           path: tuple[str | int, ...]) -> list[BatchedPost | PullWorkers]:
    """Return the workloads with ``params`` set (``key`` on every workload that has it, ``kind.key``
    on that kind only), each re-validated."""
    result = list(workloads)
    for key, value in params.items():
        kind, _, name = key.rpartition(".")
        hits = [i for i, w in enumerate(result)
                if name in type(w).model_fields and name != "kind" and kind in ("", w.kind)]
        if not hits:
            known = sorted({f for w in result for f in type(w).model_fields if f != "kind"})
            raise ScenarioError((*path, key),
                                f"no workload has a parameter {key!r}{did_you_mean(name, known)}",
                                hint=f"parameters of these workloads: {', '.join(known)}")
        for i in hits:
            w = result[i]
            try:
                result[i] = type(w).model_validate({**w.model_dump(exclude_unset=True), "kind": w.kind,
                                                    name: value})
            except ValidationError as error:
                raise ScenarioError((*path, key),
                                    f"{_plain(error.errors()[0]['msg'])} (setting {name}={value!r} "
                                    f"on the {w.kind} workload)") from None
    return result


def _text(value: Scalar) -> str:
    """Return a flag or parameter value as written in a variant name and passed to the server."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe_variants(scenario: Scenario) -> list[str]:
    """Return the lines `contend validate` prints: the scenario, then one line per variant."""
    defaults = {flag.name: flag.default for flag in FLAGS}
    variants = scenario.expand()
    runs = len(variants) * scenario.repetitions
    lines = [f"scenario {scenario.name}: {len(variants)} variant(s) x {scenario.repetitions} "
             f"repetition(s) = {runs} run(s)"]
    for v in variants:
        parts = [v.name + (" (baseline)" if v.baseline else "")]
        if v.preset:
            parts.append(f"preset {v.preset}")
        changed = [f"{k}={x}" for k, x in v.flags.items() if defaults.get(k) != x]
        if changed:
            parts.append("flags " + ",".join(changed))
        if v.params:
            parts.append("params " + ",".join(f"{k}={_text(x)}" for k, x in v.params.items()))
        parts.append(f"{len(v.thresholds)} threshold(s)")
        lines.append("  " + "  ".join(parts))
    return lines


def key_path(path: Sequence[str | int]) -> str:
    """Return ``workloads[0].concurrency`` for ``("workloads", 0, "concurrency")``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


# --- loading -------------------------------------------------------------------------------------


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
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", hint="give the path of a scenario YAML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it ({error})") from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Return the validated scenario in ``text``; errors name ``source`` and the line."""
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
        line = lines[_known_prefix(error.path, lines)]
        raise ConfigError(f"{source}:{line}: {key_path(error.path)}: {error.detail}",
                          hint=error.hint or DOCS_HINT) from None
    return scenario


def dump_scenario(scenario: Scenario) -> str:
    """Return the scenario as YAML with every default filled in (the run folder's scenario.yaml)."""
    return yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _read_yaml(text: str, source: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """Return the YAML data and the line (1-based) of every key and list item, by key path."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{source}: the file is empty", hint=DOCS_HINT)
        lines: dict[tuple[str | int, ...], int] = {(): node.start_mark.line + 1}
        _index(node, (), lines, source)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: invalid YAML: {error.problem or error.context}",
                          hint="check the indentation and the quoting around this line") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML: {error}") from None
    finally:
        loader.dispose()


def _index(node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int],
           source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*path, key.value)
            if here in lines:
                raise ConfigError(f"{source}:{key.start_mark.line + 1}: {key_path(here)}: duplicate key "
                                  f"(first at line {lines[here]})", hint="remove one of the two")
            lines[here] = key.start_mark.line + 1
            _index(value, here, lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _index(item, (*path, i), lines, source)


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
            what = _plain(err["msg"])
            if not isinstance(got, dict | list) and kind != "value_error":
                what += f" (got {got!r})"
        found.append((lines.get(known, 1), shown, what, hint))
    found.sort(key=lambda f: (f[0], "unknown key" not in f[2]))
    line, shown, what, hint = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return ConfigError(f"{source}:{line}: {key_path(shown)}: {what}{more}", hint=hint)


def _plain(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


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


# --- the reference page --------------------------------------------------------------------------


def schema() -> dict[str, Any]:
    """Return the JSON Schema of a scenario file (for editors, and `contend schema`)."""
    result = Scenario.model_json_schema()
    result["title"] = "contend scenario"
    # The workload models document their fields in attribute docstrings without asking pydantic
    # to publish them; read them from the source so editors and the reference page show them.
    for model in (BatchedPost, PullWorkers):
        props = result["$defs"][model.__name__]["properties"]
        for key, doc in _attribute_docs(model).items():
            props[key].setdefault("description", doc)
    return result


def _attribute_docs(model: type) -> dict[str, str]:
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(model))).body[0]
    assert isinstance(body, ast.ClassDef)
    docs = {}
    for stmt, after in itertools.pairwise(body.body):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def schema_markdown() -> str:
    """Return docs/scenarios.md: one table per section of the scenario, generated from the schema."""
    full = schema()
    defs: dict[str, Any] = full.get("$defs", {})
    out = [
        "# Scenario reference",
        "",
        "<!-- Generated by `contend schema --markdown > docs/scenarios.md`; edit contend/scenario.py. -->",
        "",
        "A scenario is a YAML file; `contend validate FILE` checks it and lists its variants,",
        "`contend schema` prints the JSON Schema (point your editor's YAML extension at it).",
        "A threshold is one line, `<metric> <op> <number>` or `<metric> <op> <factor>x baseline|previous`,",
        "optionally ending in `±<n>%`; [ci-gating.md](ci-gating.md) explains them, and",
        "[records.md](records.md) lists the metrics.",
        "",
        "```yaml",
        EXAMPLE.strip(),
        "```",
        "",
        "Variants come from a `variants:` list (named flag sets; the one with `baseline: true`, else the",
        "first, is the baseline) or from a `matrix:`, the cartesian product of its keys' values, in",
        "the order written. A matrix key is a flag (upper case), `preset`, or a workload parameter:",
        "`concurrency` sets every workload that has it, `batched_post.concurrency` only that kind.",
        "The first combination is the baseline, and each variant is named after its values, e.g.",
        "`JOB_LOG_PERSIST_ENABLED=true,concurrency=5`. A variant's flags start from its preset (the",
        "variant's, else the target's), then the target's `web_concurrency`/`worker_concurrency` and",
        "`flags`, then its own. YAML's `on`/`off`/`yes`/`no` are read as words, not booleans.",
        "",
    ]
    order = ["Scenario"]
    # sections in the order the scenario's keys refer to them
    for name in [*re.findall(r'"#/\$defs/(\w+)"', json.dumps(full["properties"])), *defs]:
        order += [name] if name not in order else []
    sections = [(name, full if name == "Scenario" else defs[name]) for name in order]
    for title, section in sections:
        if "properties" not in section:
            continue
        out += [f"## {title}", ""]
        if section.get("description"):
            out += [" ".join(section["description"].split()), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        required = set(section.get("required", []))
        for key, prop in section["properties"].items():
            default = "required" if key in required else (
                "see below" if isinstance(prop.get("default"), dict) and prop["default"]
                else f"`{_json(prop['default'])}`" if "default" in prop else "")
            desc = " ".join(prop.get("description", "").split()).replace("|", "\\|")
            out.append(f"| `{key}` | {_type(prop).replace('|', ' or ')} | {default} | {desc} |")
        out.append("")
    out += ["## Flags of the reference server", "",
            "Keys of `flags:` and upper-case keys of `matrix:`; `contend flags` prints the same list.", "",
            "| flag | values | default | meaning |", "|---|---|---|---|"]
    out += [f"| `{f.name}` | {f.allowed.replace('|', ' or ')} | `{f.default}` | {f.meaning} |" for f in FLAGS]
    out += ["", "## Presets", "", "| preset | flags it sets | what it is |", "|---|---|---|"]
    for name, (meaning, values) in PRESETS.items():
        out.append(f"| `{name}` | {', '.join(f'{k}={v}' for k, v in values.items())} | {meaning} |")
    return "\n".join(out) + "\n"


def _type(prop: Mapping[str, Any]) -> str:
    if "$ref" in prop:
        name = str(prop["$ref"]).rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "const" in prop:
        return f"`{_json(prop['const'])}`"
    if "enum" in prop:
        return " or ".join(f"`{_json(v)}`" for v in prop["enum"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " or ".join(dict.fromkeys(_type(p) for p in prop[key]))
    kind = prop.get("type", "any")
    bounds = [f"{sign} {_json(prop[b])}" for b, sign in
              (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<=")) if b in prop]
    kind += (" " + ", ".join(bounds)) if bounds else ""
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"mapping to {_type(prop['additionalProperties'])}"
    return str(kind)


def _json(value: Any) -> str:
    return json.dumps(value)


EXAMPLE = """
name: log-persist
description: 50 results x 10 concurrent POSTs, job log persistence on vs off
target:
  preset: pr-1261
  worker_concurrency: 8
workloads:
  - kind: batched_post
    batch: 50
    concurrency: 10
    rounds: 1
variants:
  - name: logs-on
    flags: {JOB_LOG_PERSIST_ENABLED: true}
  - name: logs-off
    baseline: true
    flags: {JOB_LOG_PERSIST_ENABLED: false}
thresholds:
  - post_ok_ratio == 1
  - edges_max < 5
  - {check: "latency_p95_s <= 1.2x baseline", tolerance: 0.1, variants: [logs-on]}
"""
