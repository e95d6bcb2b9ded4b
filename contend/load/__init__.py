"""contend's load engine: workload models and the launcher that runs locust in child processes.

Importing this package never imports locust (locust monkey-patches the interpreter with gevent).
"""

from contend.load.config import BatchedPost, PullWorkers, Workload

__all__ = ["BatchedPost", "PullWorkers", "Workload"]
