"""contend's command line: each command parses, builds a config, calls one library function.

Errors are mapped here, once: a ContendError prints as ``Error: ...`` plus a hint, and the exit
code comes from ``contend.errors.exit_code``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from contend import __version__
from contend.cli_load import load, load_worker
from contend.errors import ConfigError, ContendError, ExitCode, Interrupted, exit_code
from contend.runfolder import DEFAULT_REPORTS, run_folder


def _raise_interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}")


def fail(error: BaseException) -> NoReturn:
    """Print one line (and a hint) for ``error`` and exit with its code."""
    if isinstance(error, ContendError):
        click.echo(f"Error: {error.message}", err=True)
        if error.hint:
            click.echo(f"Hint: {error.hint}", err=True)
    elif isinstance(error, KeyboardInterrupt):
        click.echo("Error: interrupted", err=True)
    sys.exit(int(exit_code(error)))


class ContendGroup(click.Group):
    """The command group, mapping contend's errors itself: ``CliRunner`` sees what a user sees."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ContendError, KeyboardInterrupt) as error:
            fail(error)


@click.group(cls=ContendGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="contend")
def cli() -> None:
    """contend: load tests and row-lock contention diagnostics for Postgres-backed job systems.

    It starts a reference Antenna-like server (Postgres, NATS JetStream, Django web tier and
    result workers), drives it with batched-POST or pull-worker load, samples blocker chains,
    idle-in-transaction holders, queues and py-spy stacks, and writes a report and a verdict.

    Exit codes: 0 ok, 1 thresholds failed, 2 usage or config error, 3 runtime error,
    130 interrupted.
    """


cli.add_command(load)
cli.add_command(load_worker)


def main() -> None:
    """Entry point of the ``contend`` console script."""
    signal.signal(signal.SIGTERM, _raise_interrupted)
    # Ctrl-C must stop contend even when it was started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as usage:
        usage.show()
        sys.exit(int(ExitCode.USAGE))
    except click.exceptions.Abort:
        fail(Interrupted("interrupted"))
    except (ContendError, KeyboardInterrupt) as error:
        fail(error)


def _no_password_in_argv(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from contend.redact import redact_dsn

    source = ctx.get_parameter_source(param.name or "")
    if value and source == click.core.ParameterSource.COMMANDLINE and redact_dsn(value) != value:
        raise ConfigError("the --dsn on the command line holds a password (argv is visible to every user)",
                          hint="export CONTEND_DSN='postgresql://...' instead and drop --dsn")
    return value


def dsn_option(required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The shared ``--dsn`` option; a DSN with a password must come from CONTEND_DSN, not argv."""
    return click.option(
        "--dsn",
        envvar="CONTEND_DSN",
        show_envvar=True,
        required=required,
        callback=_no_password_in_argv,
        help="Postgres DSN of an external server, without a password; a DSN with a password "
        "goes in the CONTEND_DSN variable (argv is visible to every user of the machine).",
    )


@cli.command()
@dsn_option()
@click.option("--reports", type=click.Path(path_type=Path), default=DEFAULT_REPORTS, show_default=True,
              help="Folder that receives the run folder.")
@click.option("--refserver/--no-refserver", default=True, show_default=True,
              help="Also start the reference Antenna-like server (web tier and result workers).")
@click.option("--preset", default="pr-1261", show_default=True,
              help="Flag preset of the reference server (see `contend flags`).")
@click.option("--flag", "flag_pairs", multiple=True, metavar="NAME=VALUE",
              help="Override one flag of the preset; repeatable.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="async_api jobs created in STARTED.")
@click.option("--images", type=click.IntRange(min=0), default=100, show_default=True,
              help="Source images (and NATS tasks) per job.")
@click.option("--web-concurrency", type=click.IntRange(min=1), default=None,
              help="Web processes (default: the WEB_CONCURRENCY flag).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Result worker processes (default: the ML_WORKER_CONCURRENCY flag).")
@click.option("--keep-data", is_flag=True,
              help="Keep Postgres' data directory and the NATS store on stop (logs are always kept).")
@click.option("--flags-from-env", is_flag=True,
              help="Take each flag of `contend flags` set in the environment (over the preset; --flag wins).")
@click.option("--token-env", metavar="NAME",
              help="Variable holding the API key to create (default: a throw-away key, printed).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Once up, write where the server is to this file, in the fixtures format of a "
              "command target (base_url, job_ids, pipeline_slug, dsn without password, pyspy_pids, "
              "token_env), and print nothing else on stdout.")
def up(dsn: str | None, reports: Path, refserver: bool, preset: str, flag_pairs: tuple[str, ...],
       jobs: int, images: int, web_concurrency: int | None, workers: int | None, keep_data: bool,
       flags_from_env: bool, token_env: str | None, json_path: Path | None) -> None:
    """Start the stack in the foreground and print how to connect; Ctrl-C stops everything.

    The same information is written as JSON to stack.json in the run folder. With --json, a
    command target can drive this server as a black box (scenarios/byo-refserver.yaml).
    """
    import os

    from contend.flags import flag_names, parse_overrides
    from contend.stack import RefServerOptions, Stack

    options = None
    if token_env and not os.environ.get(token_env):
        raise ConfigError(f"--token-env {token_env}: the variable is not set",
                          hint="export it with a 40-hex key, e.g. from python -c 'import secrets; "
                          "print(secrets.token_hex(20))'")
    if json_path is not None and refserver and not token_env:
        raise ConfigError("--json needs --token-env: a command target reads the API key from that variable")
    if refserver:
        from_env = {name: os.environ[name] for name in flag_names() if flags_from_env and name in os.environ}
        options = RefServerOptions(preset=preset, flags={**from_env, **parse_overrides(flag_pairs)},
                                   jobs=jobs, images_per_job=images, web_concurrency=web_concurrency,
                                   worker_concurrency=workers, token_env=token_env)
        options.resolved_flags()  # a bad flag is a usage error before anything starts
    if json_path is not None:
        with Stack(run_folder("up", reports), dsn=dsn, refserver=options, keep_data=keep_data) as stack:
            _write_target_json(json_path, stack.info(), token_env)
            with contextlib.suppress(KeyboardInterrupt, Interrupted):
                while True:
                    time.sleep(3600)
        return
    folder = run_folder("up", reports)
    started = time.monotonic()
    with Stack(folder, dsn=dsn, refserver=options, keep_data=keep_data) as stack:
        for line in stack.reaped:
            click.echo(f"stopped a leftover of an earlier run: {line}", err=True)
        info_path = stack.write_info()
        info = stack.info()
        click.echo(f"contend stack up in {time.monotonic() - started:.1f} s (run folder {folder})")
        click.echo(f"  Postgres  {info['postgres']['dsn']}  (server {info['postgres']['version']})")
        click.echo(f"  NATS      {info['nats']['url']}  (monitoring {info['nats']['monitor_url']})")
        if ref := info.get("refserver"):
            click.echo(f"  API       {ref['url']}/api/v2/  (pipeline {ref['pipeline_slug']})")
            click.echo(f"  token     {ref['token']}  (throw-away, this stack only)")
            click.echo(f"  images    {ref['images_url']}  (each task's image_url)")
            click.echo(f"  jobs      {', '.join(map(str, ref['job_ids']))}")
            click.echo(f"  flags     {' '.join(f'{k}={v}' for k, v in ref['flags'].items())}")
        click.echo(f"  details   {info_path}")
        click.echo("Press Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        except Interrupted:
            pass
    click.echo("stack stopped")


def _write_target_json(path: Path, info: dict[str, Any], token_env: str | None) -> None:
    """Write how to reach the stack for a command target's fixtures (no token, no DSN password)."""
    from contend.redact import redact_dsn

    ref = info.get("refserver") or {}
    data = {"base_url": ref.get("url"), "job_ids": ref.get("job_ids", []),
            "pipeline_slug": ref.get("pipeline_slug"), "token_env": token_env,
            "dsn": info["postgres"]["dsn"] if info["postgres"]["embedded"] else None,
            "pyspy_pids": {"web": ref.get("pids", {}).get("web", []),
                           "worker": ref.get("pids", {}).get("workers", [])},
            "flags": ref.get("flags", {})}
    if data["dsn"] is not None and redact_dsn(data["dsn"]) != data["dsn"]:
        data["dsn"] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


@cli.command()
def flags() -> None:
    """List the reference server's flags (default, allowed values, meaning) and the presets."""
    from contend.flags import FLAGS, PRESETS

    for flag in FLAGS:
        click.echo(f"{flag.name}  default {flag.default}  allowed {flag.allowed}")
        click.echo(f"    {flag.meaning}")
    click.echo("\nPresets (--preset NAME; flags not named keep their default):")
    for name, (meaning, values) in PRESETS.items():
        click.echo(f"{name}  {meaning}")
        click.echo("    " + " ".join(f"{k}={v}" for k, v in values.items()))


@cli.command()
def doctor() -> None:
    """Check what contend needs and print the fix for each failed check."""
    from contend.doctor import run_checks

    failed = 0
    for check in run_checks():
        mark = "ok  " if check.ok else "FAIL"
        click.echo(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok:
            failed += 1
            click.echo(f"       fix: {check.fix}")
    if failed:
        raise click.exceptions.Exit(int(ExitCode.RUNTIME))
    click.echo("all checks passed")


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@cli.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def validate(file: Path) -> None:
    """Check a scenario file and list the variants it expands to (exit 2 on a mistake)."""
    from contend.scenario import describe_variants, load_scenario

    scenario = load_scenario(file)
    click.echo(f"OK {file}")
    for line in describe_variants(scenario):
        click.echo(line)


@cli.command()
@click.option("--markdown", is_flag=True, help="Print the scenario reference page (docs/scenarios.md).")
def schema(markdown: bool) -> None:
    """Print the JSON Schema of scenario files (for editors), or the reference page."""
    from contend.scenario import schema as scenario_schema
    from contend.scenario import schema_markdown

    click.echo(schema_markdown() if markdown else json.dumps(scenario_schema(), indent=2), nl=not markdown)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--baseline", type=click.Path(path_type=Path, exists=True),
              help="summary.json (or the run folder) of an earlier run, for 'x previous' thresholds.")
@click.option("--junit", type=click.Path(path_type=Path, dir_okay=False),
              help="Write JUnit XML here (one test case per threshold and variant).")
def gate(run_dir: Path, baseline: Path | None, junit: Path | None) -> None:
    """Check a run's thresholds (from its scenario.yaml): exit 1 when one failed, 0 when all passed.

    When GITHUB_STEP_SUMMARY is set, a markdown table is appended to that file.
    """
    _gate(run_dir, baseline, junit)


def _gate(run_dir: Path, baseline: Path | None, junit: Path | None,
          out: Callable[[str], None] = click.echo) -> None:
    """Apply the gate (JUnit, the GitHub step summary when $GITHUB_STEP_SUMMARY is set), print its
    table, and raise ThresholdsFailed when a threshold failed."""
    import os

    from contend.gate import apply_gate, raise_if_failed, render_table

    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    result = apply_gate(run_dir, baseline, junit=junit,
                        step_summary=Path(step_summary) if step_summary else None)
    for line in render_table(result):
        out(line)
    raise_if_failed(result)


@cli.command()
@click.argument("scenario_file", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--reports", type=click.Path(path_type=Path), default=DEFAULT_REPORTS, show_default=True,
              help="Folder that receives the run folder.")
@click.option("--baseline", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="summary.json of an earlier run, for thresholds relative to it.")
@click.option("--junit", type=click.Path(path_type=Path), help="Also write the gate's verdict as JUnit XML.")
@click.option("--fail-fast", is_flag=True,
              help="Stop after the first variant that fails a threshold (the report is marked partial).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the run folder and the summary as JSON on stdout (progress stays on stderr).")
@click.option("--keep-data", is_flag=True,
              help="Keep each variant's Postgres data directory and NATS store (logs are always kept).")
def run(scenario_file: Path, reports: Path, baseline: Path | None, junit: Path | None,
        fail_fast: bool, as_json: bool, keep_data: bool) -> None:
    """Perform a scenario: every variant on a fresh stack, load and samplers side by side.

    Writes reports/<scenario>-<UTC time>/ with raw records, summary.json, report.html and
    report.md, then applies the scenario's thresholds (exit 1 when one fails). Ctrl-C stops
    cleanly and still writes a report, marked partial.
    """
    from contend.display import RunDisplay, planned
    from contend.run import run_scenario, stop_after_failing_variant
    from contend.scenario import load_scenario

    scenario = load_scenario(scenario_file)
    after = stop_after_failing_variant(baseline) if fail_fast else None
    stop = threading.Event()

    def graceful(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            _raise_interrupted(signum, frame)
        stop.set()
        click.echo(f"{signal.Signals(signum).name}: stopping this variant and writing the report "
                   "(press Ctrl-C again to stop at once)", err=True)

    signal.signal(signal.SIGINT, graceful)
    signal.signal(signal.SIGTERM, graceful)
    plans = {variant.name: planned(variant.workloads) for variant in scenario.expand()}
    with RunDisplay(plans=plans) as display:
        result = run_scenario(scenario, reports, source=scenario_file.read_text(), observer=display,
                              after_variant=after, stop=stop, keep_data=keep_data)
    click.echo(f"run folder: {result.run_dir} ({result.status})", err=True)
    click.echo(f"report:     {result.run_dir / 'report.html'}", err=True)
    if stop.is_set():
        raise Interrupted("interrupted: the report covers what ran", hint=f"see {result.run_dir}")
    if as_json:
        summary = json.loads((result.run_dir / "summary.json").read_text())
        echo_json({"run_dir": str(result.run_dir), "status": result.status, "summary": summary})
    _gate(result.run_dir, baseline, junit, out=(lambda line: click.echo(line, err=True))
          if as_json else click.echo)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def report(run_dir: Path, as_json: bool) -> None:
    """Re-render summary.json, report.html and report.md of RUN_DIR from its raw records.

    Works on a partial run (stopped early, or killed) as well.
    """
    from contend.report import write_report

    paths = write_report(run_dir)
    _echo_paths(paths, as_json)


@cli.command()
@click.argument("run_a", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("run_b", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the comparison [default: reports/compare-<UTC timestamp>].")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def compare(run_a: Path, run_b: Path, out: Path | None, as_json: bool) -> None:
    """Compare two runs: every variant of RUN_B (and RUN_A) against RUN_A's baseline.

    For example the same scenario before and after a code change of an external server.
    """
    from contend.report import write_comparison

    paths = write_comparison(run_a, run_b, out or run_folder("compare"))
    _echo_paths(paths, as_json)


def _echo_paths(paths: Any, as_json: bool) -> None:
    if as_json:
        echo_json({"summary": paths.summary, "html": paths.html, "markdown": paths.markdown})
        return
    click.echo(f"report    {paths.html}")
    click.echo(f"markdown  {paths.markdown}")
    click.echo(f"summary   {paths.summary}")


def _app_timeouts(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    from contend.diagnosis.findings import TIMEOUTS

    found = {}
    for value in values:
        name, _, ms = value.partition("=")
        if name not in TIMEOUTS or not ms.replace(".", "", 1).isdigit():
            raise click.BadParameter(f"{value!r}: give NAME=MS with NAME one of {', '.join(TIMEOUTS)}, "
                                     "e.g. statement_timeout=30000")
        found[name] = float(ms)
    return found


@cli.command()
@dsn_option(required=True)
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between two snapshots.")
@click.option("--json", "as_json", is_flag=True,
              help="Stream each snapshot's tick metrics as one JSON line (docs/records.md, pg_ticks), "
                   "with the findings.")
@click.option("--pyspy-pid", "pyspy_pids", type=int, multiple=True, metavar="PID",
              help="A server process to read with py-spy for the cross-layer findings (repeatable).")
@click.option("--pyspy-pattern", metavar="REGEX",
              help="Read with py-spy every process whose command line matches REGEX.")
@click.option("--app-timeout", "app_timeouts", multiple=True, metavar="NAME=MS", callback=_app_timeouts,
              help="A timeout your application sets on its own connections, e.g. statement_timeout=30000 "
                   "(repeatable): Postgres shows no session's settings to another, so findings would "
                   "only know the server's defaults.")
def watch(dsn: str, interval: float, as_json: bool, pyspy_pids: tuple[int, ...],
          pyspy_pattern: str | None, app_timeouts: dict[str, float]) -> None:
    """Watch the blocker forest of a Postgres database live, read-only, until Ctrl-C.

    Shows each root blocker with its state, transaction age and query, its waiters below it, the
    idle-in-transaction holders and the tick metrics (docs/metrics.md). With --pyspy-pid or
    --pyspy-pattern it also reads those server processes' stacks while backends wait, and shows the
    findings of the wait-for graph over their threads: cross-layer deadlocks, Python lock convoys,
    idle-in-transaction holders blocked in the application. Needs a role with pg_monitor to see
    other roles' sessions, and says so when it lacks it. Ctrl-C or SIGTERM ends the watch with exit
    code 0.
    """
    from contend.sample.watch import watch as watch_database

    # SIGTERM ends a watch like Ctrl-C does: the normal way to stop it, so exit 0.
    with contextlib.suppress(Interrupted):
        watch_database(dsn, interval=interval, as_json=as_json, pyspy_pids=pyspy_pids,
                       pyspy_pattern=pyspy_pattern, app_timeouts=app_timeouts)
