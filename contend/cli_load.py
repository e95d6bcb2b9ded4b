"""The `contend load` commands (load alone: no stack, no samplers) and `contend load-worker`.

contend.cli adds them to its group, which maps their errors to one line and an exit code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from contend.runfolder import run_folder


def _load_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every ``contend load`` command shares (the token only ever comes from the environment)."""
    options = [
        click.option("--url", required=True, help="Base URL of the Antenna-like server, e.g. http://127.0.0.1:8000."),
        click.option("--allow-remote", is_flag=True, help="Allow a target that is not on loopback."),
        click.option("--token-env", metavar="NAME",
                     help="Variable holding the API token [default: ANTENNA_TOKEN, then CONTEND_TOKEN]."),
        click.option("--load-workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Local locust worker processes (0: one standalone process)."),
        click.option("--remote-workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Also wait for this many `contend load-worker` processes (needs --master-bind)."),
        click.option("--master-bind", metavar="HOST:PORT", help="Where the master listens for workers."),
        click.option("--out", type=click.Path(path_type=Path, file_okay=False),
                     help="Run folder; records go to OUT/load/ [default: reports/load-<kind>-<UTC time>]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_load_command(kind: str, params: dict[str, Any], url: str, allow_remote: bool, token_env: str | None,
                      load_workers: int, remote_workers: int, master_bind: str | None, out: Path | None,
                      target_extra: dict[str, Any]) -> None:
    from rich.console import Console

    from contend.load import LoadTarget, make_plan, run_load
    from contend.load.config import CommandLoad, workload_from
    from contend.load.launcher import read_token_for
    from contend.load.table import summary_table

    workload = workload_from({"kind": kind, **{k: v for k, v in params.items() if v is not None}})
    assert not isinstance(workload, CommandLoad), "contend load sends contend's own workloads"
    target = LoadTarget(base_url=url, token_env=token_env, allow_remote=allow_remote, **target_extra)
    plan = make_plan([workload], target)  # every input checked before a run folder exists
    if plan.needs_token:
        read_token_for(target)
    folder = out or run_folder(f"load-{kind.replace('_', '-')}")
    console = Console(stderr=True)
    last: list[Any] = [0.0, ""]

    def progress(p: Any) -> None:
        if p.elapsed_s - last[0] >= 5 or p.state != last[1]:
            last[:] = [p.elapsed_s, p.state]
            p95 = "-" if p.p95_s is None else f"{p.p95_s:.3f} s"
            console.print(f"[{p.elapsed_s:6.1f} s] {p.state}: ok {p.requests_ok}, "
                          f"failed {p.requests_failed}, in flight {p.in_flight}, p95 {p95}", highlight=False)

    summary = run_load([workload], target, folder / "load", load_workers=load_workers, progress=progress,
                       remote_workers=remote_workers, master_bind=master_bind)
    Console().print(summary_table(summary))
    click.echo(f"records in {folder / 'load'}")


@click.group()
def load() -> None:
    """Send load alone (no stack, no samplers): batched result POSTs, ADC-like pull workers, a locustfile.

    The API token is read from ANTENNA_TOKEN (or CONTEND_TOKEN, or --token-env), never from argv.
    Only loopback targets are accepted unless --allow-remote is given.
    """


@load.command("batched-post")
@_load_options
@click.option("--job", type=int, required=True, help="Job id every POST goes to.")
@click.option("--batch", type=int, help="Results per POST [default: 50].")
@click.option("--concurrency", type=int, help="Parallel POSTs [default: 10].")
@click.option("--rounds", type=int, help="Waves; each waits for all its POSTs [default: 3].")
@click.option("--duration", "duration_s", type=float,
              help="Instead of --rounds: a closed loop for this many seconds.")
@click.option("--arrival-rate", type=float, help="Open model: POSTs started per second (with --duration).")
@click.option("--body", type=click.Choice(["error", "realistic"]), help="Result entries [default: error].")
@click.option("--timeout", "timeout_s", type=float, help="Per-request timeout in seconds [default: 120].")
@click.option("--pipeline", help="Pipeline slug (realistic bodies).")
@click.option("--image-ids", help="Comma-separated image ids of the job (realistic bodies).")
def batched_post(url: str, allow_remote: bool, token_env: str | None, load_workers: int, remote_workers: int,
                 master_bind: str | None, out: Path | None, job: int, pipeline: str | None,
                 image_ids: str | None, **params: Any) -> None:
    """Antenna's load script: BATCH results per POST, CONCURRENCY in parallel, ROUNDS waves."""
    images = {job: [i.strip() for i in image_ids.split(",") if i.strip()]} if image_ids else {}
    _run_load_command("batched_post", {**params, "job": job}, url, allow_remote, token_env, load_workers,
                      remote_workers, master_bind, out, {"pipeline_slug": pipeline, "image_ids": images})


@load.command("pull-workers")
@_load_options
@click.option("--pipeline", "pipeline_slug", required=True, help="Pipeline slug the pollers ask for.")
@click.option("--pollers", type=int, help="GPU processes [default: 4].")
@click.option("--loaders", type=int, help="/tasks/ loaders per poller [default: 4].")
@click.option("--batch-size", type=int, help="/tasks/ batch_size [default: 24].")
@click.option("--duration", "duration_s", type=float, help="Seconds to run [default: 60].")
@click.option("--per-image", "per_image_s", type=float, help="Inference seconds per image [default: 0.05].")
@click.option("--cold-start", "cold_start_s", type=float, help="First-batch inference seconds [default: 2].")
@click.option("--seed", type=int, help="Seed of the inference-time model [default: 0].")
@click.option("--load-images", is_flag=True, default=None,
              help="Download each task's image before inference, 8 at a time per loader, as ADC does.")
def pull_workers(url: str, allow_remote: bool, token_env: str | None, load_workers: int, remote_workers: int,
                 master_bind: str | None, out: Path | None, **params: Any) -> None:
    """ADC's GPU workers: poll jobs, reserve tasks, infer, post one result per image."""
    _run_load_command("pull_workers", params, url, allow_remote, token_env, load_workers, remote_workers,
                      master_bind, out, {})


@load.command("locustfile")
@_load_options
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--user-class", "user_classes", multiple=True, help="A user class to run (repeat); none: all.")
@click.option("--users", type=int, help="Users, spread over the classes by weight [default: 1].")
@click.option("--spawn-rate", type=float, help="Users started per second [default: all at once].")
@click.option("--iterations", type=int, help="Task runs per user, then it stops.")
@click.option("--duration", "duration_s", type=float, help="Instead of --iterations: seconds to run.")
@click.option("--job-ids", help="Comma-separated job ids, for CONTEND_JOB_IDS of the user classes.")
def locustfile(url: str, allow_remote: bool, token_env: str | None, load_workers: int, remote_workers: int,
               master_bind: str | None, out: Path | None, path: Path, user_classes: tuple[str, ...],
               job_ids: str | None, **params: Any) -> None:
    """Your own locustfile's user classes, each request one record (docs/your-load.md)."""
    jobs = [int(j) for j in job_ids.split(",") if j.strip()] if job_ids else []
    _run_load_command("locustfile", {**params, "path": str(path), "user_classes": list(user_classes)}, url,
                      allow_remote, token_env, load_workers, remote_workers, master_bind, out,
                      {"job_ids": jobs})


@click.command("load-worker")
@click.option("--master", required=True, metavar="HOST:PORT",
              help="The master of `contend load --master-bind`.")
@click.option("--allow-remote", is_flag=True, help="Allow the master's target even if it is not on loopback.")
@click.option("--token-env", metavar="NAME",
              help="Variable holding the API token [default: ANTENNA_TOKEN, then CONTEND_TOKEN].")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for this worker's log [default: reports/load-worker-<UTC timestamp>].")
def load_worker(master: str, allow_remote: bool, token_env: str | None, out: Path | None) -> None:
    """Join a load master on another machine; its records go to the master's run folder."""
    from contend.load.launcher import run_remote_worker

    run_remote_worker(master, out or run_folder("load-worker"), allow_remote=allow_remote,
                      token_env=token_env)
