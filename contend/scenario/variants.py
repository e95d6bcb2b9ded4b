"""Variant expansion: the ``Variant`` a run executes, and the steps that build it from a scenario.

``Scenario.expand()`` (in ``models``) walks its variant specs through these functions: the matrix
becomes named combinations, flags resolve (preset, then the target's, then the variant's own), and
workload parameters are set and re-validated. Every mistake is a ``ScenarioError`` that carries the
key path, so the loader can point at the line. Nothing here imports the pydantic scenario models.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from contend.errors import ConfigError
from contend.flags import flag_names, resolve_flags
from contend.load.config import AnyWorkload
from contend.stack.command import ENV_NAME
from contend.thresholds import Threshold, did_you_mean

Scalar = bool | int | float | str
_WORD = re.compile(r"[\w.=,+:@*/-]+")
KeyPath = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One variant to run: every flag resolved, the workloads with its parameters applied."""

    name: str
    flags: dict[str, str]
    """Every flag of the reference server; a command target's environment variables; empty for an
    external target."""
    workloads: tuple[AnyWorkload, ...]
    baseline: bool
    repetitions: int
    preset: str | None = None
    """The preset its flags start from (the variant's, else the target's)."""
    params: dict[str, Scalar] = dataclasses.field(default_factory=dict)
    """The workload parameters this variant sets (a matrix sweep's x axis)."""
    thresholds: tuple[Threshold, ...] = ()
    external: bool = False


class ScenarioError(ConfigError):
    """A ConfigError about one key of the scenario; ``path`` is that key's location."""

    def __init__(self, path: Sequence[str | int], message: str, hint: str | None = None,
                 also: Sequence[ScenarioError] = ()) -> None:
        super().__init__(f"{key_path(path)}: {message}", hint=hint)
        self.path = tuple(path)
        self.detail = message
        self.also = tuple(also)
        """More errors found at the same time (each missing piece of a command target)."""


def key_path(path: Sequence[str | int]) -> str:
    """Return ``workloads[0].concurrency`` for ``("workloads", 0, "concurrency")``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        word = str(part) if _WORD.fullmatch(str(part)) else repr(part)  # ' ', 'a b', '' stay visible
        text += f".{word}" if text else word
    return text or "(top level)"


def plain_message(msg: str) -> str:
    """Return a pydantic error message without its ``Value error, `` prefix."""
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def value_text(value: Scalar) -> str:
    """Return a flag or parameter value as written in a variant name and passed to the server."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def located(path: Sequence[str | int], fn: Any, *args: Any) -> Any:
    """Call ``fn`` and re-raise its ConfigError as a ScenarioError located at ``path``."""
    try:
        return fn(*args)
    except ConfigError as error:
        raise ScenarioError(path, error.message, error.hint or None) from None


def apply_params(workloads: Sequence[AnyWorkload], params: Mapping[str, Scalar],
                 path: KeyPath) -> list[AnyWorkload]:
    """Return the workloads with ``params`` set (``key`` on every workload that has it, ``kind.key``
    on that kind only), each re-validated."""
    result = list(workloads)
    for key, value in params.items():
        kind, _, name = key.rpartition(".")
        hits = [i for i, w in enumerate(result)
                if name in type(w).model_fields and name != "kind" and kind in ("", w.kind)]
        if not hits:
            known = sorted({f for w in result for f in type(w).model_fields if f != "kind"})
            raise ScenarioError((*path, key),
                                f"no workload has a parameter {key!r}{did_you_mean(name, known)}",
                                hint=f"parameters of these workloads: {', '.join(known)}")
        for i in hits:
            w = result[i]
            try:
                result[i] = type(w).model_validate({**w.model_dump(exclude_unset=True), "kind": w.kind,
                                                    name: value})
            except ValidationError as error:
                raise ScenarioError((*path, key),
                                    f"{plain_message(error.errors()[0]['msg'])} (setting {name}={value!r} "
                                    f"on the {w.kind} workload)") from None
    return result


def matrix_combinations(matrix: Mapping[str, Sequence[Scalar]],
                        workloads: Sequence[AnyWorkload]) -> Iterator[dict[str, Any]]:
    """Yield one variant spec (as data) per combination of the matrix, the first the baseline.

    Each workload parameter value is tried on the workloads first, so a bad one names its key.
    """
    for key, values in matrix.items():
        if key != "preset" and not key.isupper():
            for value in values:
                apply_params(workloads, {key: value}, ("matrix",))
    for i, combo in enumerate(itertools.product(*matrix.values())):
        chosen = dict(zip(matrix, combo, strict=True))
        name = ",".join(f"{k}={value_text(v)}" for k, v in chosen.items())
        preset = chosen.pop("preset", None)
        yield {"name": name, "baseline": i == 0, "preset": preset,
               "flags": {k: v for k, v in chosen.items() if k.isupper()},
               "params": {k: v for k, v in chosen.items() if not k.isupper()}}


def variant_flags(path: KeyPath, *, target_preset: str | None, own_preset: str | None,
                  web_concurrency: int | None, worker_concurrency: int | None,
                  target_flags: Mapping[str, Scalar], own_flags: Mapping[str, Scalar]
                  ) -> dict[str, str]:
    """Return every flag of one variant of an embedded target: its preset (the variant's, else the
    target's), then the target's concurrency fields and flags, then the variant's own flags."""
    matrix = path == ("matrix",)
    overrides: dict[str, str] = {}
    for name, value, at in [
        ("WEB_CONCURRENCY", web_concurrency, ("target", "web_concurrency")),
        ("ML_WORKER_CONCURRENCY", worker_concurrency, ("target", "worker_concurrency")),
        *[(k, v, ("target", "flags", k)) for k, v in target_flags.items()],
        *[(k, v, ("matrix", k) if matrix else (*path, "flags", k)) for k, v in own_flags.items()],
    ]:
        if value is None:
            continue
        text = value_text(value)
        if name not in flag_names():
            raise ScenarioError(at, f"unknown flag {name!r}{did_you_mean(name, flag_names())}",
                                hint="run `contend flags` to list every flag and its values")
        located(at, resolve_flags, None, {name: text})
        overrides[name] = text
    where = (*path, "preset") if own_preset else ("target", "preset")
    resolved: dict[str, str] = located(where, resolve_flags, own_preset or target_preset, overrides)
    return resolved


def command_flags(path: KeyPath, target_flags: Mapping[str, Scalar], own_flags: Mapping[str, Scalar]
                  ) -> dict[str, str]:
    """Return the flags of one variant of a command target (environment variables of its commands):
    the target's, then the variant's own."""
    matrix = path == ("matrix",)
    flags: dict[str, str] = {}
    for name, value, at in [
        *[(k, v, ("target", "flags", k)) for k, v in target_flags.items()],
        *[(k, v, ("matrix", k) if matrix else (*path, "flags", k)) for k, v in own_flags.items()],
    ]:
        if not re.fullmatch(ENV_NAME, name):
            raise ScenarioError(at, f"{name!r} cannot name an environment variable",
                                hint="letters, digits and _, not starting with a digit")
        flags[name] = value_text(value)
    return flags
