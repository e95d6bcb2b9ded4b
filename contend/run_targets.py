"""What a run needs to reach each kind of target: the load's target and the samplers' config.

An embedded stack hands over its URL, token and pids; an external server is named by the scenario
(secrets by the names of variables); a command target runs the user's up, ready and fixtures with a
variant's flags and its down always follows.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from contend.errors import ConfigError, StackError
from contend.load import LoadTarget
from contend.load.launcher import read_token_for
from contend.load.plan import DEFAULT_TOKEN_VARS
from contend.sample.runner import SamplerConfig
from contend.scenario import CommandTarget, ExternalTarget, Scenario, Variant
from contend.stack import Stack
from contend.stack.command import CommandStack, Fixtures
from contend.target import check_target


def _sampler_settings(scenario: Scenario) -> dict[str, Any]:
    sampling = scenario.sampling
    return {
        "pg_interval_s": sampling.pg_interval_s,
        "pyspy_interval_s": sampling.pyspy_interval_s,
        "pyspy_max_per_s": sampling.pyspy_max_per_s,
        "pyspy_baseline_s": sampling.pyspy_baseline_s,
        "pyspy_nonblocking": sampling.pyspy_nonblocking,
        "pyspy_record": sampling.pyspy and sampling.pyspy_record,
        "nats_interval_s": sampling.nats_interval_s,
        "attribution_threshold_s": sampling.attribution_threshold_s,
    }


def embedded_target(scenario: Scenario, stack: Stack) -> tuple[LoadTarget, SamplerConfig]:
    """The load's target and the samplers' config of a started embedded stack; writes stack.json."""
    info = stack.info()
    ref = info["refserver"]
    # The run folder keeps how the stack was reached, but not the token (reports get shared).
    (stack.run_dir / "stack.json").write_text(
        json.dumps({**info, "refserver": {**ref, "token": "(not kept)"}}, indent=2) + "\n")
    # The token travels in the load target; the launcher gives it to the load processes through
    # their own environment only (never contend's, never argv).
    load_target = LoadTarget(base_url=ref["url"], token=SecretStr(ref["token"]), job_ids=ref["job_ids"],
                             pipeline_slug=ref["pipeline_slug"])
    sampling = scenario.sampling
    sampler = SamplerConfig(
        dsn=SecretStr(stack.dsn),
        nats_monitor_url=info["nats"]["monitor_url"] if sampling.nats else None,
        pyspy_pids={"web": ref["pids"]["web"], "worker": ref["pids"]["workers"]} if sampling.pyspy else {},
        secrets=[SecretStr(ref["token"])],
        # The reference server sets statement_timeout on its own connections, where no other
        # session can read it: the wait-for graph's findings need it to say what ends a deadlock.
        app_timeouts={"statement_timeout": float(ms)}
        if (ms := (ref.get("flags") or {}).get("DB_STATEMENT_TIMEOUT_MS")) is not None else {},
        **_sampler_settings(scenario),
    )
    return load_target, sampler


def external_target(scenario: Scenario, target: ExternalTarget) -> tuple[LoadTarget, SamplerConfig]:
    """The load's target and the samplers' config of a server the scenario names by URL and variables."""
    pyspy = scenario.sampling.pyspy
    if target.dsn_env is None:
        raise ConfigError("target.dsn_env is empty: contend needs a monitoring DSN to sample Postgres",
                          hint="set target.dsn_env to a variable holding a DSN of a role with pg_monitor")
    load_target = LoadTarget(base_url=target.base_url, token_env=target.token_env,
                             allow_remote=target.allow_remote)
    sampler = SamplerConfig(
        dsn_env=target.dsn_env,
        pyspy_pids=target.pyspy_pids if pyspy else {},
        pyspy_patterns=target.pyspy_patterns if pyspy else {},
        secret_envs=[target.token_env] if target.token_env else list(DEFAULT_TOKEN_VARS),
        app_timeouts={str(k): v for k, v in target.app_timeouts.items()},
        **_sampler_settings(scenario),
    )
    return load_target, sampler


@contextlib.contextmanager
def command_target(scenario: Scenario, target: CommandTarget, variant: Variant, folder: Path,
                   stop: threading.Event, on_phase: Callable[[str], None] | None
                   ) -> Iterator[tuple[CommandStack, LoadTarget, SamplerConfig]]:
    """Run the target's up, ready and fixtures with this variant's flags; down always follows."""
    assert target.up is not None and target.ready is not None  # expand() refused it otherwise
    if target.token_env:
        read_token_for(LoadTarget(base_url="http://localhost", token_env=target.token_env))
    if on_phase:
        on_phase("starting the target (up, ready, fixtures)")
    secrets = [target.token_env or "", *DEFAULT_TOKEN_VARS, target.dsn_env or ""]
    with CommandStack(folder, up=target.up, ready=target.ready, fixtures=target.fixtures,
                      down=target.down, cwd=Path(target.cwd).resolve() if target.cwd else None,
                      flags=variant.flags, secret_envs=[s for s in secrets if s],
                      stop_event=stop) as command:
        got = command.fixtures or Fixtures(job_ids=[])
        base_url = got.base_url or target.base_url
        if base_url is None:
            raise StackError("the fixtures printed no base_url and the target has none",
                             hint='let the fixtures print "base_url", or set target.base_url')
        load_target = LoadTarget(base_url=base_url, token_env=got.token_env or target.token_env,
                                 job_ids=got.job_ids, pipeline_slug=got.pipeline_slug,
                                 allow_remote=target.allow_remote)
        check_target(base_url, target.allow_remote)
        pyspy = scenario.sampling.pyspy
        pids = {role: [*target.pyspy_pids.get(role, []), *got.pyspy_pids.get(role, [])]
                for role in {*target.pyspy_pids, *got.pyspy_pids}}
        if got.dsn is None and target.dsn_env is None:
            raise ConfigError("no monitoring DSN: the fixtures printed none and target.dsn_env is empty")
        sampler = SamplerConfig(
            dsn=SecretStr(got.dsn) if got.dsn else None,
            dsn_env=target.dsn_env or "CONTEND_DSN",
            pyspy_pids=pids if pyspy else {},
            pyspy_patterns=target.pyspy_patterns if pyspy else {},
            secret_envs=[*command.secret_envs],
            app_timeouts={str(k): v for k, v in target.app_timeouts.items()},
            **_sampler_settings(scenario),
        )
        with _server_log(target.postgres_log, folder.parent / "stack" / "postgres" / "postgres.log"):
            yield command, load_target, sampler


@contextlib.contextmanager
def _server_log(source: str | None, copy: Path) -> Iterator[None]:
    """Copy what the server's log gains while the variant runs to where the analysis reads it."""
    if source is None:
        yield
        return
    path = Path(source).expanduser()
    try:
        start = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read target.postgres_log {source}: {exc.strerror}",
                          hint="name a log file your Postgres writes, or leave postgres_log out") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError), path.open("rb") as log:
            log.seek(start if path.stat().st_size >= start else 0)  # rotated: read it from its start
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(log.read())
