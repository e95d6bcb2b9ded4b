"""Antenna's own code, unmodified, under ``contend watch``: the cross-layer deadlock before PR #1261.

Runs only when CONTEND_ANTENNA_DIR names an Antenna checkout (docs/antenna-local.md): the parent of
ae14c7b0 (PR #1261) shows the deadlock. CONTEND_ANTENNA_WORK names a work folder to keep between
runs (its venv takes minutes to install); else a temporary one is used.

Antenna sets no application_name, so the finding needs contend to map each Postgres backend to its
Python thread without one: the thread in Job.save by the socket it waits on, the request threads in
JobViewSet.result by elimination (a candidate set, every candidate inside ATOMIC_REQUESTS'
transaction and waiting for the same log handler's lock).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contend.stack.process import reap_orphans
from tests.conftest import alive, wait_for

SCRIPT = Path(__file__).parents[1] / "scripts" / "antenna_local.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("CONTEND_ANTENNA_DIR"),
        reason="set CONTEND_ANTENNA_DIR to an Antenna checkout to run Antenna's own code "
               "(docs/antenna-local.md)",
    ),
]


@pytest.fixture(scope="module")
def antenna(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Antenna up through scripts/antenna_local.py; yield its work folder; always stopped."""
    work = Path(os.environ.get("CONTEND_ANTENNA_WORK") or tmp_path_factory.mktemp("antenna"))
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "up.out", "w")  # noqa: SIM115 - open while the stack runs
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "up", str(work)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # A first run installs Antenna's requirements (minutes) before the stack starts (about 1 min).
        wait_for(lambda: (work / "run" / "stack.json").exists() or not alive(proc.pid),
                 timeout=1500, interval=1)
        assert (work / "run" / "stack.json").exists(), (work / "up.out").read_text()[-3000:]
        yield work
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reap_orphans()  # a child's children the parent-death signal does not reach
        log.close()


def _names(finding: dict[str, Any]) -> set[str]:
    """Return every function named by a finding: its threads' functions and their paths, and the
    functions of the candidate threads of a backend mapped by elimination."""
    candidates = [t for c in finding.get("candidates") or () for t in c["threads"]]
    threads = [*finding.get("threads", []), *candidates]
    names = set()
    for thread in threads:
        names.add(str(thread.get("function")))
        names.update(part.strip() for part in str(thread.get("path") or "").split("->"))
    return names


def test_watch_names_antennas_cross_layer_deadlock(antenna: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "reproduce", str(antenna)],
                         capture_output=True, text=True, check=False, timeout=600)
    print(out.stdout, out.stderr)  # the figures, for the record (pytest -s)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((antenna / "run" / "summary.json").read_text())
    # The pile-up itself: requests stuck behind the job row.
    assert summary["blocked_max"] >= 2, summary
    deadlocks = [f for f in summary["findings"] if f["kind"] == "cross_layer_deadlock"]
    names = set().union(*map(_names, deadlocks)) if deadlocks else set()
    # The view that holds the job row, and the log handler or save that waits for it.
    assert any(n.endswith("result") for n in names), (summary["finding_kinds"], sorted(names))
    assert any(n.endswith(("emit", "save")) for n in names), (summary["finding_kinds"], sorted(names))
