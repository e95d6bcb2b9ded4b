"""contend's one exception tree, and the one function that turns an outcome into an exit code.

    ContendError                      every error contend reports to a user (one line + a hint)
    ├── ConfigError                   bad input: arguments, scenario file, environment   -> exit 2
    │   └── UnsafeTargetError         a non-loopback target without --allow-remote
    ├── RuntimeFailure                something failed while working                     -> exit 3
    │   ├── StackError                a process of the stack did not come up or died
    │   ├── LoadError                 the load generator failed
    │   └── SamplerError              a sampler could not observe what it must
    ├── Interrupted                   Ctrl-C or SIGTERM                                  -> exit 130
    └── ThresholdsFailed              the run worked, but a gate threshold failed        -> exit 1

Exit codes of contend's own child processes (load, samplers) are ``ChildExit``.

The CLI prints any ContendError as ``Error: <message>`` and, on the next line, ``Hint: <hint>``;
never a traceback. The exit codes are documented in the README.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    THRESHOLDS_FAILED = 1
    USAGE = 2
    RUNTIME = 3
    INTERRUPTED = 130


class ChildExit(enum.IntEnum):
    """Exit codes of contend's own child processes, returned by the child and read by its parent.

    The load hub and workers (``contend.load.child``, read by ``contend.load.launcher``) and the
    sampler runner (``contend.sample.runner``); a negative code is the signal that stopped a child.
    """

    OK = 0
    NO_TOKEN = 1
    """The load process found no API token in its environment."""
    REFUSED = 2
    """A load worker refused the master's target (not loopback and remote not allowed)."""
    FAILED = 3
    """The sampler runner failed; its log says why."""
    NO_WORKERS = 4
    """Not every load worker joined the master in time."""
    PARTIAL = 5
    """The load was stopped before its plan was done; its records are complete up to then."""


class ContendError(Exception):
    """Base of every error contend reports to a user."""

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(ContendError):
    """Bad input: command-line arguments, a scenario file, the environment."""


class UnsafeTargetError(ConfigError):
    hint = "contend sends load only to loopback; pass --allow-remote if you really mean this host"


class RuntimeFailure(ContendError):
    """Something failed while contend was working."""


class StackError(RuntimeFailure):
    """A process of the stack did not come up, or died."""


class LoadError(RuntimeFailure):
    """The load generator failed."""


class SamplerError(RuntimeFailure):
    """A sampler could not observe what it must."""


class Interrupted(ContendError):
    """The user pressed Ctrl-C, or contend received SIGTERM."""

    hint = "everything contend started has been stopped"


class ThresholdsFailed(ContendError):
    """The run worked, but at least one gate threshold failed."""

    hint = "see the gate table above, or report.html in the run folder"


def exit_code(error: BaseException | None) -> ExitCode:
    """Return the process exit code for an outcome: None for success, else the error raised."""
    if error is None:
        return ExitCode.OK
    if isinstance(error, ThresholdsFailed):
        return ExitCode.THRESHOLDS_FAILED
    if isinstance(error, ConfigError):
        return ExitCode.USAGE
    if isinstance(error, Interrupted | KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.RUNTIME
