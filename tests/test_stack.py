"""The stack lifecycle: real Postgres and NATS processes come up, and nothing survives them."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import psutil
import psycopg
import pytest

from contend.errors import ConfigError
from contend.stack import Stack
from contend.stack.process import reap_orphans, state_dir
from tests.conftest import CONTEND, stack_processes, wait_for

pytestmark = pytest.mark.integration  # every test here starts processes


def test_stack_serves_postgres_and_nats(stack: Stack) -> None:
    with psycopg.connect(stack.dsn) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('max_connections', 'track_activity_query_size', 'compute_query_id', 'listen_addresses')"
        ).fetchall())
    assert int(settings["max_connections"]) >= 200
    assert int(settings["track_activity_query_size"]) >= 8192
    assert settings["compute_query_id"] == "on"
    assert settings["listen_addresses"] == "127.0.0.1"
    info = stack.info()
    assert info["nats"]["url"].startswith("nats://127.0.0.1:")
    assert set(info["pids"]) == {"postgres", "nats-server"}
    assert (stack.run_dir / "postgres" / "postgres.log").exists()
    assert (stack.run_dir / "nats" / "nats.log").exists()


def test_stack_stops_everything_on_success_and_on_exception(tmp_path: Path) -> None:
    with Stack(tmp_path / "ok"):
        assert len(stack_processes(tmp_path / "ok")) >= 2
    assert stack_processes(tmp_path / "ok") == []
    # A lean folder: the servers' logs stay, their data (pgdata, the JetStream store) goes.
    assert (tmp_path / "ok" / "postgres" / "postgres.log").exists()
    assert not (tmp_path / "ok" / "postgres" / "pgdata").exists()
    assert not (tmp_path / "ok" / "nats" / "nats-store").exists()

    with pytest.raises(RuntimeError), Stack(tmp_path / "boom"):
        assert stack_processes(tmp_path / "boom")
        raise RuntimeError("a failure inside the run")
    assert stack_processes(tmp_path / "boom") == []


def test_keep_data_keeps_the_data_directories(tmp_path: Path) -> None:
    with Stack(tmp_path, keep_data=True) as stack:
        data = stack.postgres.folder / "pgdata"  # type: ignore[union-attr]
        location = stack.run_dir / "postgres" / "pgdata.location"  # root: the data lives elsewhere
        if location.exists():
            data = Path(location.read_text().strip())
    assert (tmp_path / "nats" / "nats-store").is_dir()
    assert data.is_dir() or location.exists()


def test_external_dsn_uses_that_server_and_starts_no_postgres(stack: Stack, tmp_path: Path) -> None:
    with Stack(tmp_path / "ext", dsn=stack.dsn) as external:
        assert external.dsn == stack.dsn
        assert "postgres" not in external.pids()
        assert external.info()["postgres"]["dsn"] == "(from CONTEND_DSN / --dsn)"
        with psycopg.connect(external.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert stack_processes(tmp_path / "ext") == []


def test_unreachable_external_dsn_is_a_config_error_without_the_password(tmp_path: Path) -> None:
    closed = "postgresql://someone:s3cret@127.0.0.1:1/db"
    with pytest.raises(ConfigError) as caught, Stack(tmp_path / "bad", dsn=closed):
        pass
    assert "s3cret" not in caught.value.message
    assert stack_processes(tmp_path / "bad") == []


def _start_up(reports: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen([*CONTEND, "up", "--reports", str(reports), "--no-refserver"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info_file = wait_for(lambda: next(reports.glob("up-*/stack.json"), None), timeout=60)
    assert isinstance(info_file, Path)
    info = json.loads(info_file.read_text())
    return proc, info


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_contend_up_stops_everything_on_ctrl_c_and_sigterm(tmp_path: Path, sig: signal.Signals) -> None:
    proc, info = _start_up(tmp_path)
    assert "postgres" in info["pids"] and "nats-server" in info["pids"]
    assert stack_processes(tmp_path)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "contend stack up in" in out and "stack stopped" in out
    assert stack_processes(tmp_path) == []


def test_sigkilled_contend_leaves_nothing_running(tmp_path: Path) -> None:
    proc, _ = _start_up(tmp_path)
    assert stack_processes(tmp_path)
    proc.kill()
    proc.wait()
    # The kernel kills each child when contend dies (PDEATHSIG); Postgres' backends follow their postmaster.
    wait_for(lambda: stack_processes(tmp_path) == [], timeout=20)
    # The next start finds the dead run's registry entries and clears them.
    reap_orphans()
    owners = [json.loads(entry.read_text())["owner_pid"] for entry in state_dir().glob("*.json")]
    assert proc.pid not in owners


def test_next_start_stops_a_registered_orphan(tmp_path: Path) -> None:
    """The registry fallback (where PDEATHSIG is missing): an orphan whose owner is gone is stopped."""
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    owner = subprocess.Popen(["true"])
    owner.wait()
    entry = state_dir() / f"{orphan.pid}.json"
    entry.write_text(json.dumps({
        "name": "sleep", "pid": orphan.pid, "started": psutil.Process(orphan.pid).create_time(),
        "owner_pid": owner.pid, "owner_started": 0.0, "argv": ["sleep"],
    }))
    stopped = reap_orphans()
    assert stopped == [f"sleep (pid {orphan.pid})"]
    assert orphan.wait(timeout=10) == -signal.SIGTERM
    assert not entry.exists()
