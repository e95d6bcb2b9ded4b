"""All samplers of a run, in ONE child process of their own, writing records as they go.

Never inside locust (gevent would freeze on a blocking psycopg call, locust #1588) and never in
the CLI's main thread: ``SamplerSet`` starts ``python -m contend.sample.runner`` through
``ManagedProcess``. The DSN reaches the child through its environment, never argv (it may hold a
password). In the child, Postgres ticks run on the main thread at ``pg_interval_s``; py-spy, NATS
and the on-demand attribution dumps run on their own threads so a slow dump never delays a tick.
py-spy dumps when a tick shows what stacks can explain (lock waiters, a session idle in its
transaction: ``pyspy.stack_triggers``) or attribution asks for a root's thread, and every target
on a slow baseline; the Postgres loop asks through ``PySpySampler.request``.
SIGTERM stops the loops, flushes and closes every file, and the process exits within a second.

Files, under ``<out_dir>/samples/`` (docs/records.md): pg_ticks.jsonl, pg_backends.jsonl,
pyspy.jsonl, attribution.jsonl, nats.jsonl, waitgraph.jsonl (the cross-layer wait-for graph),
``pyspy-record-<role>-<pid>.speedscope.json`` when ``pyspy_record`` is on, and sampler.log
(warnings: missing privileges, py-spy not permitted).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from contend.errors import ChildExit, ConfigError, SamplerError, StackError
from contend.jsonl import JsonlWriter
from contend.redact import redact_message
from contend.sample import attribution, crosslayer, namespaces, nats, pg, pyspy
from contend.stack.process import Lifecycle, ManagedProcess

log = logging.getLogger("contend.sample")

CHILD_DSN_ENV = "CONTEND_SAMPLER_DSN"
CHILD_SECRETS_ENV = "CONTEND_SAMPLER_SECRETS"
"""Newline-separated values the sampler process masks (``SamplerConfig.secrets``)."""
CONFIG_FILE = "sampler-config.json"
READY_FILE = ".sampler-ready"


class SamplerConfig(BaseModel):
    """What to sample and how often; the scenario format exposes these same names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dsn: SecretStr | None = Field(default=None, exclude=True)
    """The DSN itself; passed to the child in its environment, never written anywhere."""
    dsn_env: str = "CONTEND_DSN"
    """Else the environment variable that holds the DSN (read by the child)."""
    pg_interval_s: float = Field(default=0.1, gt=0)
    pyspy_interval_s: float = Field(default=5.0, gt=0)
    """Least seconds between two requested dumps of one process (waiters, idle holders)."""
    pyspy_max_per_s: float = Field(default=0.5, gt=0)
    """Requested dumps a second, all processes together (the budget; see PySpySampler)."""
    pyspy_baseline_s: float = Field(default=30.0, gt=0)
    """Seconds between dumps of every target whatever happens (the quiet times' stacks)."""
    pyspy_nonblocking: bool = True
    """Read stacks without pausing the target (``py-spy dump --nonblocking``); failed reads are counted."""
    pyspy_wait_s: float = Field(default=0.5, ge=0)
    """A lock wait this long asks for the stacks of its client, its blockers' and the roots'."""
    pyspy_idle_in_tx_s: float = Field(default=1.0, ge=0)
    """A session idle in its transaction this long asks for its client's stacks."""
    pyspy_pids: dict[str, list[int]] = Field(default_factory=dict)
    """Role -> pids to dump, e.g. ``{"web": [...], "worker": [...]}``."""
    pyspy_patterns: dict[str, str] = Field(default_factory=dict)
    """Role -> regular expression on the command line, for external targets."""
    secret_envs: list[str] = Field(default_factory=list)
    """Variables (names) whose values are masked in every record, e.g. the API token's."""
    secrets: list[SecretStr] = Field(default_factory=list, exclude=True)
    """Values masked in every record (the embedded server's token): they reach the sampler process
    through its own environment, never the config file or contend's environment."""
    pyspy_record: bool = False
    """Also record the whole run as speedscope JSON (idle threads kept), one file per pid."""
    nats_monitor_url: str | None = None
    nats_interval_s: float = Field(default=1.0, gt=0)
    attribution_threshold_s: float = Field(default=1.0, ge=0)
    app_timeouts: dict[str, float] = Field(default_factory=dict)
    """Timeouts (ms) the application sets on its own connections, e.g. ``{"statement_timeout": 30000}``:
    Postgres shows no session's settings to another, so the wait-for graph's findings would not know them."""
    locals_interval_s: float = Field(default=5.0, gt=0)
    """Least seconds between two py-spy dumps with locals for the wait-for graph (they cost more)."""
    locals_waiter_age_s: float = Field(default=1.0, ge=0)
    """A lock waiter this old (or a root blocker idle in transaction) asks for a dump with locals."""


class SamplerSet(Lifecycle):
    """The samplers of one run, in a child process: ``start()``/``stop()`` or a context manager.

    ``out_dir`` is the variant folder; records go to ``out_dir/samples/``.
    """

    def __init__(self, config: SamplerConfig, out_dir: Path, ready_timeout: float = 30.0) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.samples = self.out_dir / "samples"
        self.ready_timeout = ready_timeout
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        self.samples.mkdir(parents=True, exist_ok=True)
        (self.samples / READY_FILE).unlink(missing_ok=True)
        (self.samples / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2) + "\n")
        env = dict(os.environ)
        if self.config.secrets:
            env[CHILD_SECRETS_ENV] = "\n".join(s.get_secret_value() for s in self.config.secrets)
        if self.config.dsn is not None:
            env[CHILD_DSN_ENV] = self.config.dsn.get_secret_value()
        elif not env.get(self.config.dsn_env):
            raise ConfigError(
                f"no DSN for the samplers: {self.config.dsn_env} is not set",
                hint=f"export {self.config.dsn_env}=postgresql://... or pass the DSN in SamplerConfig",
            )
        self.process = ManagedProcess(
            "sampler", [sys.executable, "-m", "contend.sample.runner", str(self.samples)],
            self.samples / "sampler.log", ready=(self.samples / READY_FILE).exists,
            ready_timeout=self.ready_timeout, env=env,
        )
        try:
            self.process.start()
        except StackError as exc:
            raise SamplerError(f"the samplers did not start: {exc.message}", hint=exc.hint) from None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10.0)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()



# ---- the child process ----------------------------------------------------------------------


def _every(interval: float, stop: threading.Event, step: Callable[[], None], name: str) -> None:
    """Call ``step`` every ``interval`` seconds until ``stop``; an error is logged, not fatal."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            step()
        except SamplerError as exc:
            log.warning("%s: %s", name, exc.message)
        except Exception:  # a sampler thread must not take the others down
            log.exception("%s failed", name)
        stop.wait(max(0.0, interval - (time.monotonic() - started)))


def _reconnect(sampler: pg.PgSampler, dsn: str, stop: threading.Event) -> pg.PgSampler:
    """Return a PgSampler on a new connection, trying every second until it works or ``stop``."""
    with contextlib.suppress(psycopg.Error):
        sampler.conn.close()
    while not stop.is_set():
        try:
            return pg.PgSampler(pg.connect(dsn, connect_timeout=2))
        except (SamplerError, psycopg.Error):
            stop.wait(1.0)
    return sampler


def _timeouts(dsn: str, app_timeouts: dict[str, float]) -> dict[str, float]:
    """Return the timeouts of the application's sessions: the defaults of a new session, where the
    application's own settings (when known) override them; the defaults are left out when they
    cannot be read (said in the log)."""
    try:
        defaults = pg.session_timeouts(dsn)
    except SamplerError as exc:
        log.warning("postgres: %s", exc.message)
        defaults = {}
    return defaults | app_timeouts


def run_child(samples: Path, stop: threading.Event) -> None:
    """Run every configured sampler until ``stop`` is set; records go to ``samples``."""
    config = SamplerConfig.model_validate_json((samples / CONFIG_FILE).read_text())
    dsn = os.environ.get(CHILD_DSN_ENV) or os.environ.get(config.dsn_env)
    if not dsn:
        raise ConfigError(f"no DSN in {CHILD_DSN_ENV} or {config.dsn_env}")
    sampler = pg.PgSampler(pg.connect(dsn))
    secrets = [value for name in config.secret_envs if len(value := os.environ.get(name, "")) >= 4]
    secrets += [value for value in os.environ.get(CHILD_SECRETS_ENV, "").split("\n") if len(value) >= 4]
    writers = {
        name: JsonlWriter(samples / f"{name}.jsonl", mask=secrets)
        for name in ("pg_ticks", "pg_backends", "pyspy", "attribution", "nats", "waitgraph")
    }
    targets = {role: list(pids) for role, pids in config.pyspy_pids.items()}
    for role, pattern in config.pyspy_patterns.items():
        targets.setdefault(role, []).extend(attribution.pids_matching(pattern))
    cross = crosslayer.CrossLayer(
        [pid for pids in targets.values() for pid in pids], _timeouts(dsn, config.app_timeouts),
        writers["waitgraph"].write,
        waiter_age_s=config.locals_waiter_age_s, locals_interval_s=config.locals_interval_s,
        dumper=functools.partial(pyspy.dump, nonblocking=config.pyspy_nonblocking),
        budget=lambda dumps: spy.spend(dumps),  # rounds with locals share py-spy's budget
    )

    def dumped(records: list[dict[str, Any]]) -> None:
        writers["pyspy"].write(records)
        cross.disabled = spy.disabled
        cross.on_dumps(records)  # the graph is built whenever stacks are taken

    spy = pyspy.PySpySampler(
        targets,
        dumper=cross.reading_sockets(functools.partial(pyspy.dump, nonblocking=config.pyspy_nonblocking)),
        on_warning=lambda message: log.warning("py-spy: %s", message), write=dumped,
        min_interval_s=config.pyspy_interval_s, max_per_s=config.pyspy_max_per_s,
        baseline_s=config.pyspy_baseline_s,
        nonblocking=config.pyspy_nonblocking,
    )
    attributor = attribution.Attributor(config.attribution_threshold_s,
                                        dumper=spy.dump_now_for("attribution"),
                                        resolver=namespaces.resolver_in_our_namespace(cross.pids))
    todo: queue.Queue[tuple[dict[str, Any], list[dict[str, Any]]]] = queue.Queue()
    recorders = []
    threads = []

    def attribute() -> None:
        while not stop.is_set():
            try:
                tick, backends = todo.get(timeout=0.2)
            except queue.Empty:
                continue
            writers["attribution"].write(attribution.attribute_all(attributor, tick, backends))

    threads.append(threading.Thread(target=attribute, name="attribution", daemon=True))
    if any(targets.values()):
        threads.append(threading.Thread(target=spy.run, args=(stop,), name="py-spy", daemon=True))
        threads.append(threading.Thread(target=cross.run, args=(stop,), name="wait-for graph", daemon=True))
    nats_sampler = nats.NatsSampler(config.nats_monitor_url) if config.nats_monitor_url else None
    if nats_sampler is not None:
        threads.append(threading.Thread(
            target=_every, args=(config.nats_interval_s, stop,
                                 lambda: writers["nats"].write(nats_sampler.tick()), "nats"),
            name="nats", daemon=True))
    try:
        if config.pyspy_record:
            for role, pids in targets.items():
                for pid in pids:
                    stem = f"pyspy-record-{role}-{pid}"
                    out = samples / f"{stem}.speedscope.json"
                    recorder = pyspy.recorder(pid, out, samples / f"{stem}.log")
                    recorder.start()
                    recorders.append(recorder)
        for thread in threads:
            thread.start()
        (samples / READY_FILE).touch()
        ticker = pg.Ticker(config.pg_interval_s)
        while not stop.is_set():
            try:
                tick, backends = sampler.tick(late_ms=ticker.late_ms())
            except SamplerError as exc:
                log.warning("postgres: %s", exc.message)
            except psycopg.OperationalError as exc:
                log.warning("postgres: connection lost (%s); reconnecting", redact_message(exc))
                sampler = _reconnect(sampler, dsn, stop)
            else:
                writers["pg_ticks"].write([tick])
                writers["pg_backends"].write(backends)
                cross.observe(tick, backends)
                for reason, clients in pyspy.stack_triggers(
                        tick, backends, wait_s=config.pyspy_wait_s, idle_in_tx_s=config.pyspy_idle_in_tx_s):
                    spy.request(reason, clients)
                # Every tick, rootless ones too: the attributor ends a root's episode when it
                # sees a tick without it.
                todo.put((tick, backends if tick["roots"] else []))
            stop.wait(ticker.wait_s())
    finally:
        stop.set()
        spy.stop_waiting()
        for thread in threads:
            thread.join(timeout=3.0)
        for recorder in recorders:
            recorder.stop(timeout=10.0)
        for writer in writers.values():
            writer.close()
        if nats_sampler is not None:
            nats_sampler.close()
        with contextlib.suppress(psycopg.Error):
            sampler.conn.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the sampler child: ``python -m contend.sample.runner SAMPLES_DIR``."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per NATS read in sampler.log
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run_child(Path(argv[0]), stop)
    except (SamplerError, ConfigError) as exc:
        log.error("%s%s", exc.message, f" (hint: {exc.hint})" if exc.hint else "")
        return ChildExit.FAILED
    return ChildExit.OK


if __name__ == "__main__":
    sys.exit(main())
