"""All samplers in their own child process: records appear while it runs, SIGTERM stops it fast."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest
from pydantic import SecretStr

from contend.errors import ConfigError
from contend.sample.backends import read_ticks
from contend.sample.runner import CHILD_SECRETS_ENV, SamplerConfig, SamplerSet
from contend.stack import Stack
from tests.conftest import Contention, alive, wait_for


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


SECRET = "contend-test-secret-0b9917d0"


@pytest.mark.slow
@pytest.mark.timing  # 10 Hz ticks, stopped within 5 s
def test_sampler_set_records_everything_and_stops_on_sigterm(
    stack: Stack, sample_dsn: str, tmp_path: Path
) -> None:
    target = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"])
    config = SamplerConfig(
        dsn=sample_dsn, pg_interval_s=0.1, pyspy_interval_s=0.5, pyspy_pids={"web": [target.pid]},
        pyspy_record=True, nats_monitor_url=stack.nats.monitor_url, attribution_threshold_s=0.3,
        secrets=[SecretStr(SECRET)],
    )
    samples = tmp_path / "samples"
    try:
        # The row queue is complete before sampling starts, so the root is attributed blocking 3.
        with Contention(sample_dsn, waiters=3) as c:
            holder_pid = c.holder_pid
            with SamplerSet(config, tmp_path) as sampler:
                child = psutil.Process(sampler.process.pid)
                assert "postgresql://" not in " ".join(child.cmdline())  # the DSN is never in argv
                # The values to mask reach the sampler through its own environment only.
                assert child.environ()[CHILD_SECRETS_ENV] == SECRET
                assert SECRET not in (samples / "sampler-config.json").read_text()
                assert SECRET not in os.environ.values()
                # Records reach the disk while the sampler runs (flushed every write).
                ticks = samples / "pg_ticks.jsonl"
                contended = wait_for(lambda: [t for t in lines(ticks) if t["blocked"] == 3])
                attributed = wait_for(lambda: lines(samples / "attribution.jsonl"), timeout=20)
                # A baseline dump at start, then one asked for by the lock waiters (every target:
                # this test's own connections do not name their client).
                wait_for(lambda: {"baseline", "lock waiters"} <= {
                    d["reason"] for d in lines(samples / "pyspy.jsonl") if d["pid"] == target.pid},
                    timeout=20)
                wait_for(lambda: len(lines(ticks)) >= 5)
                stopping = time.monotonic()
            stopped_in = time.monotonic() - stopping
    finally:
        target.kill()
        target.wait(10)
    assert stopped_in < 5.0
    assert not alive(child)
    # 1 holder + 3 queued waiters: edges 1 + 1 + 2 = 4, depth 3 (see test_sample_pg).
    assert (contended[0]["edges"], contended[0]["depth"]) == (4, 3)
    assert attributed[0]["backend_pid"] == holder_pid and attributed[0]["blocks"] == 3
    assert attributed[0]["client_pid"] == psutil.Process().pid  # this test process holds the row
    ticks = lines(samples / "pg_ticks.jsonl")
    assert len(ticks) >= 5 and all(t["cost_ms"] > 0 for t in ticks)
    gaps = sorted(b["t"] - a["t"] for a, b in itertools.pairwise(ticks))
    assert 0.05 < gaps[len(gaps) // 2] < 0.2  # 10 Hz
    rebuilt = list(read_ticks(samples / "pg_backends.jsonl"))  # written by change, read back per tick
    assert {t for t, _ in rebuilt} <= {t["t"] for t in ticks} and len(rebuilt) >= 5
    dumps = lines(samples / "pyspy.jsonl")
    # The target, and this test process when attribution asked for the root's thread.
    assert {(d["pid"], d["role"]) for d in dumps} <= {(target.pid, "web"), (psutil.Process().pid, "client")}
    assert all(d["nonblocking"] for d in dumps)
    web = [d for d in dumps if d["pid"] == target.pid and not d.get("error")]
    assert any(f["name"] == "<module>" for d in web for t in d["threads"] for f in t["frames"])
    speedscope = json.loads((samples / f"pyspy-record-web-{target.pid}.speedscope.json").read_text())
    assert "speedscope" in speedscope["$schema"]
    config_file = (samples / "sampler-config.json").read_text()
    assert "dsn" not in json.loads(config_file) and "postgresql://" not in config_file


def test_missing_dsn_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTEND_SAMPLE_TEST_DSN", raising=False)
    with pytest.raises(ConfigError, match="CONTEND_SAMPLE_TEST_DSN"):
        SamplerSet(SamplerConfig(dsn_env="CONTEND_SAMPLE_TEST_DSN"), tmp_path).start()


def test_config_is_frozen_and_strict() -> None:
    config = SamplerConfig()
    assert (config.pg_interval_s, config.pyspy_interval_s, config.nats_interval_s) == (0.1, 5.0, 1.0)
    with pytest.raises(ValueError):
        SamplerConfig(pg_interval=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        config.model_copy(update={}).__setattr__("pg_interval_s", 1.0)


@pytest.mark.integration
def test_sampler_reconnects_when_its_backend_is_terminated(sample_dsn: str, tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    with SamplerSet(SamplerConfig(dsn=sample_dsn, pg_interval_s=0.1), tmp_path):
        wait_for(lambda: lines(samples / "pg_ticks.jsonl"))
        with psycopg.connect(sample_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'contend-sampler' AND datname = current_database()"
            ).fetchall()
        assert killed == [(True,)]
        cut = time.time()
        wait_for(lambda: [t for t in lines(samples / "pg_ticks.jsonl") if t["t"] > cut + 0.5], timeout=20)
    assert "connection lost" in (samples / "sampler.log").read_text()


@pytest.mark.integration
def test_a_tiny_cpu_budget_lowers_the_rate_and_the_report_says_so(sample_dsn: str, tmp_path: Path) -> None:
    from contend.analysis.reading import load_variant

    config = SamplerConfig(dsn=sample_dsn, pg_interval_s=0.1, cpu_budget_pct=0.01)
    ticks = tmp_path / "samples" / "pg_ticks.jsonl"
    with SamplerSet(config, tmp_path):
        # The first window's ticks cost far more than 0.01 % of a core: 1 Hz from then on.
        wait_for(lambda: [t for t in lines(ticks) if t["interval_s"] == 1.0], timeout=30)
        wait_for(lambda: len([t for t in lines(ticks) if t["interval_s"] == 1.0]) >= 2, timeout=30)
    recorded = lines(ticks)
    assert recorded[0]["interval_s"] == 0.1
    slow = [t for t in recorded if t["interval_s"] == 1.0]
    assert slow[-1]["t"] - slow[-2]["t"] > 0.5
    notes = load_variant(tmp_path).notes
    assert any("over its CPU budget" in n and "10 Hz lowered to 1 Hz from" in n for n in notes), notes
