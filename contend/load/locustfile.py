"""The user classes of a ``locustfile`` workload, run by contend's load processes (docs/your-load.md).

Imported only by ``contend.load.child`` (it imports locust). ``user_classes`` loads the file and
returns its user classes, each wrapped so that it stops after its ``iterations`` or its
``duration_s`` (and says so to the hub, like contend's own users); ``record_requests`` turns each of
locust's request events into one request record of the node.
"""

from __future__ import annotations

import locust  # noqa: F401  first: gevent's monkey-patching must precede the other imports

# isort: split
import inspect
import os
import time
from collections.abc import Callable
from typing import Any, cast

from locust import User
from locust.env import Environment
from locust.exception import CatchResponseError, StopUser
from locust.user.task import TaskSet
from locust.util.load_locustfile import load_locustfile

from contend.errors import ConfigError
from contend.load import users
from contend.load.config import Locustfile
from contend.load.plan import TOKEN_ENV, Plan, PlannedWorkload
from contend.load.records import request_record
from contend.load.users import Node, error_class

_LOADED: dict[str, list[type[User]]] = {}


def set_environment(plan: Plan, planned: PlannedWorkload) -> None:
    """Give the user classes what the target knows, through this process's environment."""
    os.environ["CONTEND_BASE_URL"] = plan.base_url
    os.environ["CONTEND_JOB_IDS"] = ",".join(str(j) for j in planned.job_ids)
    token = os.environ.get(TOKEN_ENV, "")
    if token:
        os.environ["CONTEND_TOKEN"] = token


class Budget:
    """When the users of this process stop: after ``iterations`` task runs each, or at the deadline."""

    def __init__(self, w: Locustfile, user_done: Callable[[], None]) -> None:
        self.iterations = w.iterations
        self.duration_s = w.duration_s
        self.deadline: float | None = None
        self.done_runs = 0
        self.user_done = user_done

    def spent(self, user: User) -> bool:
        now = time.monotonic()
        if self.deadline is None and self.duration_s is not None:
            self.deadline = now + self.duration_s  # from the first task of this process
        runs = getattr(user, "_contend_runs", 0)
        return (self.iterations is not None and runs >= self.iterations) or (
            self.deadline is not None and now >= self.deadline)

    def stop(self, user: User) -> None:
        if not getattr(user, "_contend_done", False):
            user._contend_done = True  # type: ignore[attr-defined]
            self.user_done()
        raise StopUser()


def _budgeted(task: Any, budget: Budget) -> Callable[[User], None]:
    def run(user: User) -> None:
        if budget.spent(user):
            budget.stop(user)
        if inspect.isclass(task) and issubclass(task, TaskSet):
            task(user).run()  # type: ignore[no-untyped-call]
        else:
            task(user)
        user._contend_runs = getattr(user, "_contend_runs", 0) + 1  # type: ignore[attr-defined]
        budget.done_runs += 1
        if users.NODE is not None:
            users.NODE.iterations += 1
        if budget.spent(user):
            budget.stop(user)

    run.__name__ = getattr(task, "__name__", "task")
    return run


def user_classes(planned: PlannedWorkload, budget: Budget) -> list[type[User]]:
    """Return the workload's user classes (loaded once per process), wrapped with ``budget``.

    The wrapped classes keep their names: the master hands users out to the workers by name.
    """
    w = planned.workload
    assert isinstance(w, Locustfile)
    if w.path in _LOADED:
        return _LOADED[w.path]
    found, _shapes = load_locustfile(w.path)
    if not found:
        raise ConfigError(f"{w.path} defines no locust user class")
    missing = [name for name in w.user_classes if name not in found]
    if missing:
        raise ConfigError(f"{w.path} has no user class {', '.join(missing)}",
                          hint=f"its user classes: {', '.join(sorted(found))}")
    chosen = [found[name] for name in (w.user_classes or sorted(found))]
    classes: list[type[User]] = []
    for cls in chosen:
        body = {"abstract": False, "__module__": cls.__module__}
        wrapped = cast(type[User], type(cls.__name__, (cls,), body))
        # Set after the class is made: locust's metaclass would add the base's own tasks to a
        # ``tasks`` given in the class body.
        wrapped.tasks = [_budgeted(t, budget) for t in cls.tasks]
        classes.append(wrapped)
    _LOADED[w.path] = classes
    return classes


def _sent(response: Any) -> int:
    body = getattr(getattr(response, "request", None), "body", None)
    return len(body) if isinstance(body, bytes | str) else 0


def record_requests(environment: Environment, node: Node) -> None:
    """Make every request event of ``environment`` one record of ``node`` (kind ``request``)."""

    def on_request(request_type: str, name: str, response_time: float, response_length: int,
                   exception: BaseException | None = None, response: Any = None,
                   start_time: float | None = None, **kw: Any) -> None:
        seconds = max(0.0, float(response_time or 0)) / 1000
        t0 = float(start_time) if start_time is not None else time.time() - seconds
        status = int(getattr(response, "status_code", 0) or 0)
        error: str | None = None
        if exception is not None:
            if isinstance(exception, CatchResponseError):
                error = str(exception)[:120] or "CatchResponseError"
            elif status >= 400:
                error = f"HTTP {status}"
            else:
                error = error_class(exception)
        node.record(request_record(
            t0=t0, t1=t0 + seconds, kind="request", status=status, sent=_sent(response),
            recv=int(response_length or 0), error=error, job=None, worker=node.worker,
            name=name, method=request_type))

    environment.events.request.add_listener(on_request)  # type: ignore[no-untyped-call]
