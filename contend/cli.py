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
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from contend import __version__
from contend.errors import ContendError, ExitCode, Interrupted, exit_code

DEFAULT_REPORTS = Path("reports")


def run_folder(name: str, root: Path = DEFAULT_REPORTS) -> Path:
    """Return a new run folder ``<root>/<name>-<UTC timestamp>`` (created)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = root / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{name}-{stamp}-{n}"
    path.mkdir(parents=True)
    return path


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
