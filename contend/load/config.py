"""The workload configuration: what load to send, shared unchanged with the scenario format.

Field names are a contract: a scenario embeds these models as they are. Every model is frozen and
rejects unknown keys. The API token is never a field; it comes from the environment.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from contend.errors import ConfigError

NonNegativeFloat = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class BatchedPost(BaseModel):
    """Antenna's reproduction script (section 6.1): N results per POST, C in parallel, R waves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["batched_post"] = "batched_post"
    batch: PositiveInt = 50
    """Results per POST."""
    concurrency: PositiveInt = 10
    """Parallel POSTs (users)."""
    rounds: PositiveInt | None = 3
    """Waves; a wave waits for all of its requests, like the script."""
    duration_s: PositiveFloat | None = None
    """Instead of rounds: a closed loop for this long (or the open model's length)."""
    arrival_rate: PositiveFloat | None = None
    """Open model: POSTs started per second, regardless of responses (needs duration_s)."""
    body: Literal["error", "realistic"] = "error"
    detections_per_image: NonNegativeInt = 2
    classifications_per_detection: NonNegativeInt = 2
    timeout_s: PositiveFloat = 120.0
    job: PositiveInt | None = None
    """None: the first job of the target."""

    @model_validator(mode="before")
    @classmethod
    def _duration_replaces_rounds(cls, data: object) -> object:
        # rounds has a default (3); giving duration_s alone means "by duration", not "both".
        if isinstance(data, dict) and data.get("duration_s") is not None and "rounds" not in data:
            return {**data, "rounds": None}
        return data

    @model_validator(mode="after")
    def _one_driver(self) -> Self:
        if (self.rounds is None) == (self.duration_s is None):
            raise ValueError("give exactly one of rounds or duration_s")
        if self.arrival_rate is not None and self.duration_s is None:
            raise ValueError("arrival_rate needs duration_s (an open model runs for a duration)")
        return self


class PullWorkers(BaseModel):
    """ADC-like GPU workers (section 7): poll jobs, reserve tasks, infer, post one result per image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pull_workers"] = "pull_workers"
    pollers: PositiveInt = 4
    """GPU processes."""
    loaders: PositiveInt = 4
    """Task loaders per poller."""
    batch_size: PositiveInt = 24
    """The /tasks/ batch_size."""
    prefetch: PositiveInt = 4
    posters: PositiveInt = 2
    max_pending: PositiveInt = 5
    tasks_timeout_s: PositiveFloat = 30.0
    result_timeout_s: PositiveFloat = 60.0
    idle_sleep_s: NonNegativeFloat = 5.0
    cold_start_s: NonNegativeFloat = 2.0
    """Seeded inference-time model: first batch of a poller."""
    per_image_s: NonNegativeFloat = 0.05
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.2
    """Relative spread of inference times (0.2 = +-20 %)."""
    seed: NonNegativeInt = 0
    pipeline_slug: str | None = None
    """None: the target's pipeline."""
    duration_s: PositiveFloat = 60.0
    load_images: bool = False
    """Each loader downloads its tasks' images before handing the batch on, as ADC's DataLoader
    processes do (no token sent; loopback only unless allowed); a failed image becomes an error result."""
    image_threads: PositiveInt = 8
    """Concurrent image downloads per loader (ADC: a pool of 8 threads)."""
    image_timeout_s: PositiveFloat = 30.0


class Locustfile(BaseModel):
    """Your own locustfile: its user classes run in contend's load processes (docs/your-load.md).

    They reach the target through ``host`` (the target's base URL) and the environment:
    CONTEND_BASE_URL, CONTEND_TOKEN (when the target has one) and CONTEND_JOB_IDS (comma-separated).
    Every request they make becomes one request record, named as locust names it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["locustfile"]
    path: str
    """The locustfile, relative to the scenario file."""
    user_classes: list[str] = []
    """User classes to run (their class names); empty: every user class of the file."""
    users: PositiveInt = 1
    """Users, spread over the classes by their weight (or fixed_count)."""
    spawn_rate: PositiveFloat | None = None
    """Users started per second; none: all at once."""
    duration_s: PositiveFloat | None = None
    """Run for this long (each user ends after the task it is in); give this or iterations."""
    iterations: PositiveInt | None = None
    """Task runs per user, then the user stops; give this or duration_s."""

    @model_validator(mode="after")
    def _one_driver(self) -> Self:
        if (self.iterations is None) == (self.duration_s is None):
            raise ValueError("give exactly one of duration_s or iterations")
        return self


class CommandLoad(BaseModel):
    """Any program as the load (docs/your-load.md): its output is kept, its exit code counts.

    It gets CONTEND_BASE_URL, CONTEND_TOKEN (when the target has one), CONTEND_JOB_IDS and
    CONTEND_REQUEST_RECORDS, a path where it may write request records (docs/records.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["command"]
    run: Annotated[list[str], Field(min_length=1)]
    """The program and its arguments, e.g. [python, load.py, --users, "10"] (no shell)."""
    cwd: str | None = None
    """Folder it runs in, relative to the scenario file; none: the scenario file's folder."""
    env: dict[str, str] = {}
    """More environment variables (over contend's own environment); never put a secret here."""
    timeout_s: PositiveFloat = 600.0
    """Longest run; a program still running then is stopped and its variant fails."""


Workload = Annotated[BatchedPost | PullWorkers | Locustfile | CommandLoad, Field(discriminator="kind")]
AnyWorkload = BatchedPost | PullWorkers | Locustfile | CommandLoad
LocustWorkload = BatchedPost | PullWorkers | Locustfile
"""The workloads the load processes run (a command runs on its own)."""


def workload_from(data: dict[str, object]) -> AnyWorkload:
    """Return the workload described by ``data`` (keys as in a scenario), or raise a one-line ConfigError."""
    try:
        return TypeAdapter(Workload).validate_python(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or str(data.get("kind", "workload"))
        message = str(first["msg"]).removeprefix("Value error, ")
        more = len(error.errors()) - 1
        hint = f"and {more} more problem(s)" if more else None
        raise ConfigError(f"{where}: {message}", hint=hint) from None
