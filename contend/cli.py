"""contend's command line: each command parses, builds a config, calls one library function.

Errors are mapped here, once: a ContendError prints as ``Error: ...`` plus a hint, and the exit
code comes from ``contend.errors.exit_code``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from contend import __version__
from contend.errors import ContendError, ExitCode, Interrupted, exit_code
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="contend")
def cli() -> None:
    """contend: load tests and row-lock contention diagnostics for Postgres-backed job systems.

    It starts a reference Antenna-like server (Postgres, NATS JetStream, Django web tier and
    result workers), drives it with batched-POST or pull-worker load, samples blocker chains,
    idle-in-transaction holders, queues and py-spy stacks, and writes a report and a verdict.

    Exit codes: 0 ok, 1 thresholds failed, 2 usage or config error, 3 runtime error,
    130 interrupted.
    """


def main() -> None:
    """Entry point of the ``contend`` console script."""
    signal.signal(signal.SIGTERM, _raise_interrupted)
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


def dsn_option(required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The shared ``--dsn`` option; the DSN (with its password) may also come from CONTEND_DSN."""
    return click.option(
        "--dsn",
        envvar="CONTEND_DSN",
        show_envvar=True,
        required=required,
        help="Postgres DSN of an external server. Prefer the CONTEND_DSN variable: "
        "a password in argv is visible to every user of the machine.",
    )


@cli.command()
@dsn_option()
@click.option("--reports", type=click.Path(path_type=Path), default=DEFAULT_REPORTS, show_default=True,
              help="Folder that receives the run folder.")
@click.option("--refserver/--no-refserver", default=True, show_default=True,
              help="Also start the reference Antenna-like server (web tier and result workers).")
def up(dsn: str | None, reports: Path, refserver: bool) -> None:
    """Start the stack in the foreground and print how to connect; Ctrl-C stops everything.

    The same information is written as JSON to stack.json in the run folder.
    """
    from contend.stack import Stack

    folder = run_folder("up", reports)
    started = time.monotonic()
    with Stack(folder, dsn=dsn) as stack:
        for line in stack.reaped:
            click.echo(f"stopped a leftover of an earlier run: {line}", err=True)
        info_path = stack.write_info()
        info = stack.info()
        click.echo(f"contend stack up in {time.monotonic() - started:.1f} s (run folder {folder})")
        click.echo(f"  Postgres  {info['postgres']['dsn']}  (server {info['postgres']['version']})")
        click.echo(f"  NATS      {info['nats']['url']}  (monitoring {info['nats']['monitor_url']})")
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
    import os

    from contend.errors import ThresholdsFailed
    from contend.gate import gate_run, render_junit, render_markdown, render_table

    result = gate_run(run_dir, baseline)
    for line in render_table(result):
        click.echo(line)
    if junit is not None:
        junit.write_text(render_junit(result))
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a") as out:
            out.write(render_markdown(result))
    if not result.passed:
        raise ThresholdsFailed(f"{len(result.failed)} of {len(result.checks)} thresholds failed")


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
