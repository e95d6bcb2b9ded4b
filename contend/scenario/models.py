"""The scenario schema: the frozen pydantic models a scenario file is validated into.

A scenario is YAML (read by ``contend.scenario.loader``) validated into a frozen ``Scenario``;
``Scenario.expand()`` turns its ``variants`` list or its ``matrix`` into ``Variant`` objects (flags
resolved, workload parameters applied, thresholds attached; ``contend.scenario.variants``), one per
variant, that ``contend run`` executes ``repetitions`` times each.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self, Union

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

from contend.flags import FLAGS
from contend.load.config import BatchedPost, CommandLoad, Locustfile, PullWorkers, Workload
from contend.scenario.variants import (
    KeyPath,
    Scalar,
    ScenarioError,
    Variant,
    apply_params,
    command_flags,
    located,
    matrix_combinations,
    value_text,
    variant_flags,
)
from contend.stack.command import ENV_NAME, Command, Ready
from contend.target import check_target
from contend.thresholds import Threshold, did_you_mean, matches_variant, parse_threshold

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


def _variable_name(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(ENV_NAME, value):
        raise ValueError("give the name of an environment variable (such as MY_TOKEN), "
                         "never the secret itself")
    return value


AppTimeout = Literal["lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout",
                     "transaction_timeout"]


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
    app_timeouts: dict[AppTimeout, NonNegativeFloat] = {}
    """Timeouts (ms) your application sets on its own connections, e.g. {statement_timeout: 30000}:
    Postgres shows no session's settings to another, so without them a finding can only name the
    server's defaults as what ends a deadlock."""
    allow_remote: bool = False
    """Send load to a non-loopback host (never do this against production)."""

    _names_a_variable = field_validator("token_env", "dsn_env")(_variable_name)


class CommandTarget(_Model):
    """Your own server, started and stopped by your commands for every variant (docs/external-target.md).

    The commands get your environment plus the variant's flags and CONTEND_TARGET_DIR (a folder of
    the run for their own files; ``{target_dir}`` in an argument becomes it).
    """

    kind: Literal["command"]
    up: Command | None = None
    """Starts the server (required): [docker, compose, up, -d], or a process that stays in the foreground."""
    ready: Ready | None = None
    """How contend knows the server is up (required): {url: ...} answering 2xx, or {command: [...]}."""
    fixtures: Command | None = None
    """Prints JSON on stdout: job_ids, and optionally base_url, token_env, pipeline_slug, dsn (without a
    password), pyspy_pids; none: the workloads name their job and the target its base_url."""
    down: Command | None = None
    """Stops the server; runs after every variant, on failure, Ctrl-C and SIGTERM too. Then up's process
    group is stopped (SIGTERM, then SIGKILL); none: only that."""
    cwd: str | None = None
    """Folder the commands run in, relative to the folder contend runs in; none: that folder."""
    flags: dict[str, Scalar] = {}
    """Environment variables of every variant's commands (a variant's own flags win)."""
    base_url: str | None = None
    """Where the load goes, http(s)://host[:port]; none: the base_url the fixtures print."""
    token_env: str | None = None
    """Environment variable holding the API token; none: the fixtures' token_env, else ANTENNA_TOKEN, then
    CONTEND_TOKEN."""
    dsn_env: str | None = "CONTEND_DSN"
    """Environment variable holding the monitoring DSN; a dsn the fixtures print (no password) wins."""
    pyspy_pids: dict[str, list[PositiveInt]] = {}
    """Server processes for py-spy by role (the fixtures' pyspy_pids are added)."""
    pyspy_patterns: dict[str, str] = {}
    """Server processes for py-spy by role and a regular expression on their command line."""
    app_timeouts: dict[AppTimeout, NonNegativeFloat] = {}
    """Timeouts (ms) your application sets on its own connections, e.g. {statement_timeout: 30000}:
    Postgres shows no session's settings to another, so without them a finding can only name the
    server's defaults as what ends a deadlock."""
    postgres_log: str | None = None
    """Your Postgres server's log file (default stderr format, log_line_prefix starting '%m [%p] '), read
    for each variant's statement timeouts, deadlocks and logged lock waits; none: those counts are unknown."""
    allow_remote: bool = False
    """Send load to a non-loopback host (never do this against production)."""

    _names_a_variable = field_validator("token_env", "dsn_env")(_variable_name)

    def problems(self, workloads: Sequence[Workload]) -> list[ScenarioError]:
        """Return one error per missing or unsafe piece, each at its key."""
        missing: list[tuple[KeyPath, str]] = []
        if self.up is None:
            missing.append((("target", "up"), "the command that starts your server, e.g. "
                            "up: [docker, compose, up, -d] (a list; a string needs shell: true)"))
        if self.ready is None:
            missing.append((("target", "ready"), "how contend knows the server is up, e.g. "
                            "ready: {url: 'http://127.0.0.1:8000/api/v2/', timeout_s: 300}"))
        if self.base_url is None and self.fixtures is None:
            missing.append((("target", "base_url"), "where the load goes; give base_url, "
                            "or a fixtures command that prints it"))
        if self.dsn_env is None and self.fixtures is None:
            missing.append((("target", "dsn_env"), "the variable holding a monitoring DSN "
                            "(or a fixtures command that prints a dsn)"))
        for i, w in enumerate(workloads if self.fixtures is None else ()):
            if isinstance(w, BatchedPost) and w.job is None:
                missing.append((("workloads", i, "job"), "the job the POSTs go to; "
                                "set it, or give the target a fixtures command that prints job_ids"))
            if isinstance(w, PullWorkers) and w.pipeline_slug is None:
                missing.append((("workloads", i, "pipeline_slug"), "the pipeline the pollers ask for; "
                                "set it, or give the target a fixtures command that prints pipeline_slug"))
        found = [ScenarioError(path, f"missing: {text}") for path, text in missing]
        urls = [(("target", "base_url"), self.base_url),
                (("target", "ready", "url"), self.ready.url if self.ready else None)]
        for path, url in urls:
            if url is not None:
                try:
                    located(path, check_target, url, self.allow_remote)
                except ScenarioError as error:
                    found.append(error)
        return found


Target = Annotated[EmbeddedTarget | ExternalTarget | CommandTarget, Field(discriminator="kind")]


class Sampling(_Model):
    """What the samplers observe and how often (contend's SamplerConfig)."""

    pg_interval_s: PositiveFloat = 0.1
    """Postgres activity and blocker-graph tick."""
    pyspy: bool = True
    """Sample the server's Python stacks with py-spy."""
    pyspy_interval_s: PositiveFloat = 5.0
    """Least seconds between two dumps of one server process asked for by lock waits or idle holders."""
    pyspy_max_per_s: PositiveFloat = 0.5
    """Such dumps per second, all processes together: the py-spy budget under constant contention."""
    pyspy_baseline_s: PositiveFloat = 30.0
    """Seconds between dumps of every server process whatever happens (the quiet times' stacks)."""
    pyspy_nonblocking: bool = True
    """Read stacks without pausing the server (a paused lock holder lengthens every wait behind it)."""
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
    abort: bool = False
    """Stop the variant (its load, no drain) the moment this threshold fails; only for a growing
    metric under an absolute upper bound (docs/ci-gating.md, "Stopping a variant early")."""

    @model_validator(mode="after")
    def _parses(self) -> Self:
        parse_threshold(self.check, self.tolerance, self.tolerance_abs, self.variants, self.abort)
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
    return parse_threshold(spec.check, spec.tolerance, spec.tolerance_abs, spec.variants or variants,
                           spec.abort)


def _distinct(values: list[Scalar]) -> list[Scalar]:
    texts = [value_text(v) for v in values]
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
    """The server under load: kind embedded (the default), external, or command (your own stack)."""
    workloads: Annotated[list[Workload], Field(min_length=1)]
    """One or more workloads, run at the same time (kind: batched_post, pull_workers, locustfile, command)."""
    warm_up_s: NonNegativeFloat = 5.0
    """Seconds of sampling before the load starts."""
    drain_timeout_s: NonNegativeFloat = 120.0
    """Longest wait, after the last POST response, for the result workers to finish (the drain);
    a drain that takes longer is cut there and reported as timed out."""
    drain_wait_s: NonNegativeFloat = 10.0
    """The drain of an external target whose result queue cannot be observed: a fixed wait."""
    cool_down_s: NonNegativeFloat = 2.0
    """Seconds of sampling after the drain ends."""
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

    @field_validator("workloads")
    @classmethod
    def _one_locustfile(cls, workloads: list[Workload]) -> list[Workload]:
        if sum(isinstance(w, Locustfile) for w in workloads) > 1:
            raise ValueError("at most one locustfile workload (list several user_classes of one file)")
        return workloads

    def resolved(self, folder: Path) -> Scenario:
        """Return the scenario with its workloads' files and folders made absolute against ``folder``
        (the scenario file's): a locustfile's path, a command's cwd."""
        workloads: list[Workload] = []
        for w in self.workloads:
            if isinstance(w, Locustfile):
                w = w.model_copy(update={"path": str(folder / w.path)})
            elif isinstance(w, CommandLoad):
                w = w.model_copy(update={"cwd": str(folder / (w.cwd or "."))})
            workloads.append(w)
        return self.model_copy(update={"workloads": workloads})

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
        target = self.target
        external = not isinstance(target, EmbeddedTarget)
        if isinstance(target, ExternalTarget):
            located(("target", "base_url"), check_target, target.base_url, target.allow_remote)
        if isinstance(target, CommandTarget) and (problems := target.problems(self.workloads)):
            raise ScenarioError(problems[0].path, problems[0].detail, also=problems[1:])
        target_preset = target.preset if isinstance(target, EmbeddedTarget) else None
        variants = []
        for path, spec in self._specs():
            flags: dict[str, str] = {}
            if isinstance(target, EmbeddedTarget):
                flags = variant_flags(path, target_preset=target.preset, own_preset=spec.preset,
                                      web_concurrency=target.web_concurrency,
                                      worker_concurrency=target.worker_concurrency,
                                      target_flags=target.flags, own_flags=spec.flags)
            elif spec.preset:
                raise ScenarioError((*path, "preset"), "presets need an embedded target "
                                    "(a command target takes flags: environment variables of its commands)")
            elif isinstance(target, CommandTarget):
                flags = command_flags(path, target.flags, spec.flags)
            elif spec.flags:
                raise ScenarioError(path, "flags need an embedded or a command target "
                                          "(contend cannot set the flags of an external server)")
            at = path if path == ("matrix",) else (*path, "params")
            workloads = apply_params(self.workloads, spec.params, at)
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

    def _specs(self) -> list[tuple[KeyPath, VariantSpec]]:
        if self.variants and self.matrix:
            raise ScenarioError(("matrix",), "give either 'variants' or 'matrix', not both")
        if self.variants:
            return [(("variants", i), v) for i, v in enumerate(self.variants)]
        if not self.matrix:
            return [(("target",), VariantSpec(name="default", baseline=True))]
        specs: list[tuple[KeyPath, VariantSpec]] = []
        for data in matrix_combinations(self.matrix, self.workloads):
            try:
                spec = VariantSpec.model_validate(data)
            except ValidationError:
                raise ScenarioError(("matrix",), f"the variant name {data['name']!r} cannot name a folder",
                                    hint="use values without spaces, '/' or '~'") from None
            specs.append((("matrix",), spec))
        return specs


def describe_variants(scenario: Scenario) -> list[str]:
    """Return the lines `contend validate` prints: the scenario, then one line per variant."""
    defaults = {flag.name: flag.default for flag in FLAGS}
    variants = scenario.expand()
    runs = len(variants) * scenario.repetitions
    lines = [f"scenario {scenario.name}: {len(variants)} variant(s) x {scenario.repetitions} "
             f"repetition(s) = {runs} run(s)"]
    target = scenario.target
    if isinstance(target, CommandTarget):
        steps = ["up", "ready", *(["fixtures"] if target.fixtures else []),
                 "down" if target.down else "down: stop up's process group"]
        lines.append(f"  target: commands {', '.join(steps)}, in {target.cwd or 'the current folder'}")
        defaults = {}
    for v in variants:
        parts = [v.name + (" (baseline)" if v.baseline else "")]
        if v.preset:
            parts.append(f"preset {v.preset}")
        changed = [f"{k}={x}" for k, x in v.flags.items() if defaults.get(k) != x]
        if changed:
            parts.append("flags " + ",".join(changed))
        if v.params:
            parts.append("params " + ",".join(f"{k}={value_text(x)}" for k, x in v.params.items()))
        parts.append(f"{len(v.thresholds)} threshold(s)")
        lines.append("  " + "  ".join(parts))
    return lines
