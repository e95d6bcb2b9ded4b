"""contend's load engine: workload models and the launcher that runs locust in child processes.

Importing this package never imports locust (locust monkey-patches the interpreter with gevent);
only ``contend.load.child``, run as a separate process, and the users it runs
(``contend.load.users``) do.
"""

from contend.load.config import BatchedPost, PullWorkers, Workload
from contend.load.launcher import LoadProgress, LoadRun, LoadTarget, make_plan, run_load
from contend.load.records import KindTotals, LoadSummary, read_records

__all__ = [
    "BatchedPost",
    "KindTotals",
    "LoadProgress",
    "LoadRun",
    "LoadSummary",
    "LoadTarget",
    "PullWorkers",
    "Workload",
    "make_plan",
    "read_records",
    "run_load",
]
