"""`contend run`: perform a scenario, variant by variant, and leave a run folder with its report.

For each variant and repetition: a fresh stack with that variant's flags and a fresh database,
fixtures, samplers and load side by side, stop. The samplers run through four phases: warm-up,
load (first request to last response), drain (until the result workers have nothing left to do,
contend/sample/drain.py) and cool-down; each phase's start and end, on the samplers' clock, go into
the variant's meta.json. Raw records land in the run folder as they are taken, so an interrupted run
still reports (marked partial), and a variant whose server dies is recorded as failed and the run
goes on with the next one. While the samplers run, ``contend.live`` follows the records: the findings
go to the live display as they first appear, and a threshold with ``abort: true`` that fails stops
the variant there (its load stopped, no drain), recorded as ``stopped``.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from contend import __version__
from contend.errors import ContendError, Interrupted, StackError
from contend.gate import gate_run
from contend.live import LiveFigures, LiveFinding, Stopped, decided
from contend.load import LoadProgress, LoadTarget
from contend.load.command import check_paths, run_workloads
from contend.redact import redact_message
from contend.run_targets import command_target, embedded_target, external_target
from contend.runfolder import run_folder
from contend.sample.drain import drain
from contend.sample.final import FINAL_STATE, probe_final_state
from contend.sample.runner import SamplerConfig, SamplerSet
from contend.scenario import CommandTarget, EmbeddedTarget, Scenario, Variant
from contend.stack import Stack
from contend.stack.command import CommandStack
from contend.stack.refserver import RefServerOptions


class RunObserver(Protocol):
    """What the live display is told while a run goes on."""

    def variant_started(self, index: int, total: int, name: str) -> None: ...
    def phase(self, text: str) -> None: ...
    def load_progress(self, progress: LoadProgress, samples_dir: Path) -> None: ...
    def variant_finished(self, name: str, status: str, reason: str | None) -> None: ...
    def findings(self, findings: Sequence[LiveFinding], new: Sequence[LiveFinding]) -> None: ...


@dataclass
class VariantOutcome:
    name: str
    folder: Path
    status: str = "ok"
    reason: str | None = None
    stopped: Stopped | None = None
    """The ``abort: true`` threshold that stopped the variant, if one did."""
    first_finding_s: dict[str, float] = field(default_factory=dict)
    """Seconds from the load's start to the first finding of each kind."""


PHASES = ("warm_up", "load", "drain", "cool_down")
"""The phases the samplers observe; a variant's meta.json also times the set-up and tear-down around
them (``stack_up``, ``samplers_up``, ``samplers_down``, ``final_counts``, ``stack_down``): together,
where the time to a verdict goes."""


class Phases:
    """Start and end of each phase of a variant (``time.time()``, the samplers' clock), saved as they pass.

    ``save`` is called after each change, so a killed run keeps the phases it went through.
    """

    def __init__(self, save: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.save = save
        self.clock = clock
        self.phases: dict[str, dict[str, Any]] = {}
        self.jobs_done: dict[str, float | None] = {}

    def begin(self, name: str) -> None:
        self.phases[name] = {"start": round(self.clock(), 6), "end": None}
        self.save()

    def end(self, name: str, at: float | None = None, **details: Any) -> None:
        end = self.clock() if at is None else at
        self.phases[name].update(end=round(end, 6), **details)
        self.save()

    def seconds(self) -> dict[str, float]:
        """Each phase's length, the per-phase time breakdown of the variant."""
        return {name: round(p["end"] - p["start"], 3)
                for name, p in self.phases.items() if p.get("end") is not None}

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phases": self.phases, "phase_s": self.seconds()}
        if self.jobs_done:
            out["jobs_done"] = self.jobs_done
        return out


@dataclass
class RunResult:
    run_dir: Path
    status: str
    outcomes: list[VariantOutcome] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def _folders(variants: list[Variant]) -> list[tuple[Variant, int, str]]:
    plan = []
    for variant in variants:
        for k in range(1, variant.repetitions + 1):
            plan.append((variant, k, variant.name if variant.repetitions == 1 else f"{variant.name}~r{k}"))
    return plan


def _safe_dirname(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=,~" else "_" for c in name)


class _Watch:
    """Halts one variant when a process of its stack dies (remembering which) or the run is stopped."""

    def __init__(self, stack: Stack | CommandStack | None, run_stop: threading.Event,
                 logs: str = "stack/") -> None:
        self.stack = stack
        self.logs = logs
        self.run_stop = run_stop
        self.halt = threading.Event()
        self.died: str | None = None
        self.stopped: Stopped | None = None

    def check(self) -> None:
        dead = self.stack.dead() if self.stack is not None else None
        if dead and self.died is None:
            self.died = f"{dead} died during the load (see its log under {self.logs})"
            self.halt.set()
        if self.run_stop.is_set():
            self.halt.set()


def run_variant(
    scenario: Scenario, variant: Variant, folder: Path, *, observer: RunObserver | None,
    stop: threading.Event, phases: Phases | None = None, keep_data: bool = False,
) -> VariantOutcome:
    """Run one variant (one repetition) in ``folder``; return how it ended.

    An embedded target gets a fresh stack (new database, this variant's flags); an external target
    is only loaded and observed. ``phases`` receives the start and end of each phase.
    """
    phases = phases or Phases()
    target = scenario.target
    command: CommandStack | None = None
    with contextlib.ExitStack() as scope:
        phases.begin("stack_up")
        if isinstance(target, EmbeddedTarget):
            if observer:
                observer.phase("starting the stack")
            options = RefServerOptions(preset=None, flags=variant.flags, jobs=target.jobs,
                                       images_per_job=target.images_per_job)
            stack: Stack | None = scope.enter_context(Stack(folder / "stack", refserver=options,
                                                            keep_data=keep_data))
            assert stack is not None
            load_target, sampler = embedded_target(scenario, stack)
        elif isinstance(target, CommandTarget):
            stack = None
            command, load_target, sampler = scope.enter_context(
                command_target(scenario, target, variant, folder / "target", stop,
                               observer.phase if observer else None))
        else:
            stack = None
            load_target, sampler = external_target(scenario, target)
        phases.end("stack_up")
        watch = _Watch(stack, stop) if command is None else _Watch(command, stop, logs="target/")
        load_failed: str | None = None

        def on_progress(progress: LoadProgress) -> None:
            watch.check()
            if observer:
                observer.load_progress(progress, folder / "samples")

        phases.begin("samplers_up")
        figures = LiveFigures(folder)
        with SamplerSet(sampler, folder), _following(figures, variant, phases, watch, observer):
            phases.end("samplers_up")
            phases.begin("warm_up")
            _pause(scenario.warm_up_s, watch, observer, "warm-up")
            phases.end("warm_up")
            if not watch.halt.is_set():
                if observer:
                    observer.phase("load")
                phases.begin("load")
                _, load_failed = run_workloads(variant.workloads, load_target, folder / "load",
                                               progress=on_progress, stop=watch.halt)
                phases.end("load")
            if not watch.halt.is_set():
                _drain(scenario, stack, sampler, load_target, watch, observer, phases)
            phases.begin("cool_down")
            _pause(scenario.cool_down_s, watch, observer, "cool-down")
            phases.end("cool_down")
            phases.begin("samplers_down")
        phases.end("samplers_down")
        _compress(folder / "samples" / BACKENDS)
        if stack is not None and not watch.halt.is_set():
            phases.begin("final_counts")
            _probe_final_state(stack, load_target.job_ids, folder, observer, stop)
            phases.end("final_counts")
        if stack is not None and observer:
            observer.phase("stopping the stack")
        phases.begin("stack_down")
    if "stack_down" in phases.phases:
        phases.end("stack_down")
    _poll(figures, variant, phases, watch, observer)  # the records the samplers wrote last
    first = figures.first_finding_s()
    if watch.died or load_failed:
        return VariantOutcome(variant.name, folder, "failed", watch.died or load_failed,
                              first_finding_s=first)
    if watch.stopped:
        return VariantOutcome(variant.name, folder, "stopped", watch.stopped.text(), watch.stopped, first)
    return VariantOutcome(variant.name, folder, first_finding_s=first)


LIVE_INTERVAL_S = 0.25
"""How often the live figures read the records (a tick is 0.1 s, a py-spy round a few seconds)."""


def _poll(figures: LiveFigures, variant: Variant, phases: Phases, watch: _Watch,
          observer: RunObserver | None) -> None:
    """Read the new records: show the findings, and halt the variant when an abort threshold failed."""
    new = figures.poll(phases.phases)
    if observer is not None:
        observer.findings(list(figures.findings.values()), new)
    if watch.stopped is None and "drain" not in phases.seconds() and (stop := decided(variant.thresholds,
                                                                                        figures)):
        watch.stopped = stop
        watch.halt.set()


@contextlib.contextmanager
def _following(figures: LiveFigures, variant: Variant, phases: Phases, watch: _Watch,
               observer: RunObserver | None) -> Iterator[None]:
    """Poll the live figures on a thread of their own while the block runs."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(LIVE_INTERVAL_S):
            _poll(figures, variant, phases, watch, observer)

    thread = threading.Thread(target=loop, name="live-figures", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


BACKENDS = "pg_backends.jsonl"


def _compress(path: Path) -> None:
    """Gzip a finished record file in place (``.gz`` added): one line per backend per tick is the
    bulk of a run folder (68 MB in a log-persist variant) and compresses about tenfold."""
    if not path.exists():
        return
    with path.open("rb") as src, gzip.open(path.with_name(path.name + ".gz"), "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    path.unlink()


def _drain(scenario: Scenario, stack: Stack | None, sampler: SamplerConfig, load_target: LoadTarget,
           watch: _Watch, observer: RunObserver | None, phases: Phases) -> None:
    """Wait, samplers running, until the result workers are done (or the drain times out)."""
    if observer:
        observer.phase("drain")
    phases.begin("drain")
    # A watcher thread halts the drain when a process of the stack dies or the run is stopped.
    done = threading.Event()

    def watch_loop() -> None:
        while not done.wait(0.5):
            watch.check()

    watcher = threading.Thread(target=watch_loop, name="drain-watch", daemon=True)
    watcher.start()
    try:
        result, jobs = drain(
            timeout_s=scenario.drain_timeout_s,
            fixed_s=scenario.drain_wait_s,
            dsn=stack.dsn if stack is not None else None,
            monitor_url=stack.nats.monitor_url if stack is not None and stack.nats is not None
            else sampler.nats_monitor_url,
            job_ids=load_target.job_ids,
            stop=watch.halt,
        )
    except ContendError as error:  # the load's records stand; the drain is reported as unobserved
        phases.end("drain", method="failed", timed_out=False, error=error.message)
        return
    finally:
        done.set()
        watcher.join()
    details = result.as_dict()
    del details["start"], details["end"]
    phases.jobs_done = jobs
    phases.end("drain", at=result.end, **details)


def _probe_final_state(stack: Stack, job_ids: Sequence[int], folder: Path, observer: RunObserver | None,
                       stop: threading.Event) -> None:
    """Record each job's counts against the rows its results wrote (lost updates); never fails the variant."""
    if observer:
        observer.phase("final counts")
    monitor = stack.nats.monitor_url if stack.nats is not None else None
    try:
        probe_final_state(stack.dsn, job_ids, folder / FINAL_STATE, nats_monitor_url=monitor, stop=stop)
    except Exception as error:  # the load's records stand without these counts; the analysis notes it
        _write_json(folder / FINAL_STATE, {"error": redact_message(error)})


def _pause(seconds: float, watch: _Watch, observer: RunObserver | None, label: str) -> None:
    if seconds <= 0:
        return
    if observer:
        observer.phase(label)
    deadline = time.monotonic() + seconds
    while not watch.halt.is_set() and time.monotonic() < deadline:
        watch.check()
        watch.halt.wait(min(0.5, max(0.0, deadline - time.monotonic())))


def stop_after_failing_variant(baseline: Path | None = None) -> Callable[[Path, VariantOutcome], bool]:
    """Return an ``after_variant`` for ``run_scenario`` that ends the run after the first variant
    failing one of its thresholds (``contend run --fail-fast``); the report is written first, so the
    gate reads that variant's summary."""
    def passes_so_far(run_dir: Path, outcome: VariantOutcome) -> bool:
        from contend.report import write_report

        write_report(run_dir)
        return not any(check.variant == outcome.name for check in gate_run(run_dir, baseline).failed)

    return passes_so_far


def run_scenario(
    scenario: Scenario,
    reports: Path,
    *,
    source: str | None = None,
    observer: RunObserver | None = None,
    stop: threading.Event | None = None,
    after_variant: Callable[[Path, VariantOutcome], bool] | None = None,
    keep_data: bool = False,
) -> RunResult:
    """Perform every variant of ``scenario`` and write the run folder; return where and how it ended.

    ``after_variant`` may return False to end the run early (the gate's early abort). Setting
    ``stop`` ends the current variant cleanly and the run as ``partial``, report included; an
    Interrupted or KeyboardInterrupt raised inside does the same, then propagates. ``keep_data``
    keeps each variant's Postgres data directory and NATS store (else only their logs stay).
    """
    stop = stop or threading.Event()
    check_paths(scenario.workloads)
    run_dir = run_folder(scenario.name, reports)
    (run_dir / "scenario.yaml").write_text(
        source if source is not None else yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
    )
    variants = scenario.expand()
    plan = _folders(variants)
    meta: dict[str, Any] = {
        "scenario": scenario.name,
        "contend_version": __version__,
        "python": platform.python_version(),
        "postgres": None,
        "nats": None,
        "cpus": os.cpu_count(),
        "started": _now(),
        "ended": None,
        "status": "running",
        "baseline": next(v.name for v in variants if v.baseline),
        "variants": [v.name for v in variants],
        "sweep": _swept_parameter(variants),
        "description": scenario.description,
        # Who writes this folder: a report of a "running" run whose writer is gone says "interrupted".
        "pid": os.getpid(),
        "host": platform.node(),
    }
    _write_json(run_dir / "meta.json", meta)
    result = RunResult(run_dir, "complete")
    try:
        for index, (variant, repetition, label) in enumerate(plan, start=1):
            if stop.is_set():
                result.status = "partial"
                break
            folder = run_dir / "variants" / _safe_dirname(label)
            folder.mkdir(parents=True)
            vmeta: dict[str, Any] = {
                "name": variant.name, "flags": variant.flags, "params": variant.params,
                "repetition": repetition, "started": _now(), "ended": None,
                "status": "running", "reason": None,
            }
            _write_json(folder / "meta.json", vmeta)
            if observer:
                observer.variant_started(index, len(plan), label)
            phases = Phases()
            phases.save = functools.partial(_save_variant_meta, folder, vmeta, phases)
            try:
                outcome = run_variant(scenario, variant, folder, observer=observer, stop=stop, phases=phases,
                                      keep_data=keep_data)
            except (Interrupted, KeyboardInterrupt):
                vmeta.update(status="partial", reason="interrupted", ended=_now(), **phases.meta())
                _write_json(folder / "meta.json", vmeta)
                raise
            except ContendError as error:
                outcome = VariantOutcome(variant.name, folder, "failed", error.message)
            if outcome.status == "failed":
                result.status = "partial"  # a run with a failed variant did not measure all it planned
            if stop.is_set() and outcome.status == "ok":
                outcome.status, outcome.reason = "partial", "interrupted"
                result.status = "partial"
            _record_versions(meta, folder)
            vmeta.update(status=outcome.status, reason=outcome.reason, ended=_now(), **phases.meta(),
                         first_finding_s=outcome.first_finding_s,
                         stopped=outcome.stopped.record() if outcome.stopped else None)
            _write_json(folder / "meta.json", vmeta)
            result.outcomes.append(outcome)
            if observer:
                observer.variant_finished(label, outcome.status, outcome.reason)
            if after_variant is not None and not after_variant(run_dir, outcome):
                result.status = "partial"
                break
    except (Interrupted, KeyboardInterrupt):
        result.status = "partial"
        raise
    finally:
        meta.update(status=result.status, ended=_now())
        _write_json(run_dir / "meta.json", meta)
        rendering = time.monotonic()
        try:
            _render(run_dir)
        finally:
            meta["report_s"] = round(time.monotonic() - rendering, 3)
            _write_json(run_dir / "meta.json", meta)
    return result


def _save_variant_meta(folder: Path, vmeta: dict[str, Any], phases: Phases) -> None:
    _write_json(folder / "meta.json", {**vmeta, **phases.meta()})


def _swept_parameter(variants: list[Variant]) -> str | None:
    """Return the workload parameter whose value differs between variants (a matrix sweep), if any."""
    for key in dict.fromkeys(k for v in variants for k in v.params):
        if len({str(v.params.get(key)) for v in variants}) > 1:
            return key
    return None


def _record_versions(meta: dict[str, Any], folder: Path) -> None:
    info_path = folder / "stack" / "stack.json"
    if meta["postgres"] is None and info_path.exists():
        info = json.loads(info_path.read_text())
        meta["postgres"] = info["postgres"]["version"]
        meta["nats"] = info["nats"]["version"]


def _render(run_dir: Path) -> None:
    from contend.report import write_report

    try:
        write_report(run_dir)
    except Exception as error:  # the raw records are the result; a report failure must not hide them
        raise StackError(f"the run finished but its report failed: {error}",
                         hint=f"the raw records are in {run_dir}; retry: contend report {run_dir}") from error
