"""The pipeline-wide and per-vertex settings of a spec: limits, buffer storage, scaling, sink
retries, watermarks, side inputs and the lifecycle (each merged from the pipeline's defaults and the vertex's
overrides where both exist)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from framework.spec.registry import sources
from framework.spec.types import (
    BUFFER_MAX,
    BUFFER_WHY,
    DAY,
    HOUR,
    WEEK,
    WINDOW_WHY,
    Backlog,
    Duration,
    Model,
    Number,
    RetryDelay,
    RetryFactor,
    WholeNumber,
    within,
    within_seconds,
)


class RateLimit(Model):
    """`limits.rateLimit`: messages per second a vertex reads, **shared by all its replicas**
    (their tokens come from one JetStream KV entry, framework/runtime/ratelimit.py). After a start,
    a resume or a quiet spell the limit ramps linearly from `min` to `max` over `rampUp`."""

    max: Annotated[WholeNumber, within(1, 10_000_000, "messages per second")]
    min: Annotated[WholeNumber, within(1, 10_000_000, "messages per second")] | None = Field(
        None, description="where the ramp starts (default: max, no ramp)")
    ramp_up: Annotated[Duration, within_seconds(0, DAY)] = Field(0.0, description="from min to max")

    @model_validator(mode="after")
    def _min_le_max(self) -> RateLimit:
        if self.min is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self

    def at(self, since_ramp: float) -> int:
        """The limit `since_ramp` seconds after the ramp (re)started."""
        low = self.max if self.min is None else self.min
        if self.ramp_up <= 0 or since_ramp >= self.ramp_up:
            return self.max
        return max(1, int(low + (self.max - low) * max(0.0, since_ramp) / self.ramp_up))


class Limits(Model):
    read_batch_size: Annotated[WholeNumber, within(1, 10_000, "a batch is held in memory and acknowledged "
                                                   "together")] | None = None
    buffer_max_length: Backlog | None = None
    buffer_usage_limit: Annotated[WholeNumber, within(1, 100, "a percentage")] | None = None
    read_timeout: Annotated[Duration, within_seconds(0.01, HOUR, low_why="a shorter wait makes an idle vertex "
                                                     "spin")] | None = None
    ack_wait: Annotated[Duration, within_seconds(1.0, DAY, low_why="JetStream would redeliver messages still "
                                                 "being processed")] | None = None
    rate_limit: RateLimit | None = None

    def merged(self, override: Limits | None) -> ResolvedLimits:
        values = {k: v for k, v in DEFAULT_LIMITS.model_dump().items()}
        for layer in (self, override):
            if layer is not None:
                values.update({k: v for k, v in layer.model_dump().items() if v is not None})
        return ResolvedLimits(**values)


class ResolvedLimits(BaseModel):
    """Limits after pipeline defaults and vertex overrides are applied."""

    model_config = ConfigDict(frozen=True)

    read_batch_size: int = 500
    buffer_max_length: int = 30_000
    buffer_usage_limit: int = 80
    read_timeout: float = 1.0
    ack_wait: float = 30.0
    rate_limit: RateLimit | None = None

    @property
    def buffer_soft_limit(self) -> int:
        """Messages a buffer may hold before writers treat it as full."""
        return max(1, self.buffer_max_length * self.buffer_usage_limit // 100)


DEFAULT_LIMITS = ResolvedLimits()


class Storage(str, Enum):  # noqa: UP042 - str mixin: str() and format() stay as they were
    file = "file"
    memory = "memory"


MIN_MAX_BYTES = 1 << 20  # the server's default max payload: a buffer must hold at least one message
MAX_MAX_BYTES = 1 << 50
MAX_MAX_AGE_S = 10 * 365 * 86400.0


class Buffers(Model):
    """How the pipeline's JetStream streams are stored (`spec.buffers`, overridden field by field
    in `vertices[].buffers`): replicas and storage of every buffer, dead-letter stream and KV
    bucket; maxAge and maxBytes of buffers and dead-letter streams (never of KV buckets: a
    side-input value must not expire)."""

    replicas: Literal[1, 3, 5] | None = Field(None, description="JetStream replicas (needs a cluster of as many "
                                                               "servers)")
    storage: Storage | None = None
    max_age: Duration | None = Field(None, gt=0, le=MAX_MAX_AGE_S,
                                     description="JetStream deletes messages older than this, processed or not")
    max_bytes: ByteSize | None = Field(None, le=MAX_MAX_BYTES,
                                       description="per stream; a writer that meets it waits as at a full buffer")

    @field_validator("replicas", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML `yes`/`true` would otherwise pass as 1
            raise ValueError("replicas is a number: 1, 3 or 5")
        return value

    @field_validator("max_bytes")
    @classmethod
    def _holds_a_message(cls, value: int | None) -> int | None:
        if value is not None and value < MIN_MAX_BYTES:
            raise ValueError(f"must be at least 1MiB ({MIN_MAX_BYTES} bytes), so that a buffer can hold one message "
                             "of the server's default max payload; got " + f"{value}")
        return value

    def merged(self, override: Buffers | None) -> ResolvedBuffers:
        values = DEFAULT_BUFFERS.model_dump()
        for layer in (self, override):
            if layer is not None:
                values.update({k: v for k, v in layer.model_dump().items() if v is not None})
        return ResolvedBuffers(**values)


class ResolvedBuffers(BaseModel):
    """Buffer settings after the pipeline's and a vertex's `buffers` are merged; None = unlimited."""

    model_config = ConfigDict(frozen=True)

    replicas: int = 1
    storage: Storage = Storage.file
    max_age: float | None = None
    max_bytes: int | None = None


DEFAULT_BUFFERS = ResolvedBuffers()


class Retry(Model):
    """How often a failing UDF call is retried before the message goes to the dead-letter stream."""

    attempts: Annotated[WholeNumber, within(1, 100)] = 3
    interval: RetryDelay = 0.05
    factor: RetryFactor = 2.0
    cap: RetryDelay = 2.0


class Backoff(Model):
    interval: RetryDelay = 0.05
    factor: RetryFactor = 2.0
    cap: RetryDelay = 5.0
    steps: Annotated[WholeNumber, within(0, 1_000_000, "onFailure: retry retries without end anyway")] = Field(
        3, description="retries before onFailure applies (retry: never applies)")
    jitter: Annotated[Number, within(0.0, 1.0)] = Field(
        0.0, description="each delay is scaled by a random 1 ± jitter")


class OnFailure(str, Enum):  # noqa: UP042 - str mixin: str() and format() stay as they were
    retry = "retry"
    fallback = "fallback"
    drop = "drop"


class RetryStrategy(Model):
    backoff: Backoff = Field(default_factory=Backoff)
    on_failure: OnFailure = OnFailure.retry


# A replica of a reading vertex keeps up to 4 pull requests waiting on the vertex's consumer (its
# reader tops up in quarters of 2 batches), and a buffer's consumer serves at most 512 (max_waiting).
MAX_REPLICAS = 128
Replicas = Annotated[WholeNumber, within(0, MAX_REPLICAS, "each replica keeps up to 4 pull requests waiting "
                                         "on the vertex's consumer, which serves at most 512")]


class Scale(Model):
    """Autoscaling on the lag of the vertex's consumer, with KEDA's meaning for every field."""

    min: Replicas = 0
    max: Annotated[Replicas, within(1, MAX_REPLICAS)] = 1
    lag_threshold: Backlog = 100
    activation_lag_threshold: Annotated[WholeNumber, within(0, BUFFER_MAX, BUFFER_WHY)] = 0
    polling_interval: Annotated[Duration, within_seconds(0.1, HOUR)] = 15.0
    cooldown_period: Annotated[Duration, within_seconds(0, DAY)] = 300.0
    scale_down_stabilization: Annotated[Duration, within_seconds(0, HOUR, "the most a Kubernetes "
                                        "HorizontalPodAutoscaler accepts")] = 60.0

    @model_validator(mode="after")
    def _min_le_max(self) -> Scale:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Resources(Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class IdleSource(Model):
    threshold: Annotated[Duration, within_seconds(0.001, DAY)]
    increment_by: Annotated[Duration, within_seconds(0.001, DAY)]


# Sources that stamp event time on arrival unless told otherwise (a connector registered as
# `live`): when they take no input, event time passes as the wall clock does, so they follow an
# idle rule by default (docs/watermarks.md).
DEFAULT_IDLE_SOURCE = IdleSource(threshold=5.0, increment_by=5.0)


class WatermarkConfig(Model):
    max_delay: Annotated[Duration, within_seconds(0, WEEK, WINDOW_WHY)] = 0.0
    idle_source: IdleSource | None = Field(None,
                                           description="default for http, nats, mqtt and generator sources: "
                                                       "{threshold: 5s, incrementBy: 5s}; null turns it off")
    publisher_timeout: Annotated[Duration, within_seconds(0.1, HOUR)] = 10.0

    def idle_rule(self, source_kind: str) -> IdleSource | None:
        """`idleSource` when the spec sets it (null: none), else the default for live sources."""
        if "idle_source" in self.model_fields_set:
            return self.idle_source
        return DEFAULT_IDLE_SOURCE if sources()[source_kind].live else None


class Lifecycle(Model):
    """`spec.lifecycle`: whether the pipeline's sources read (Running) or not (Paused; the other
    vertices drain their buffers). Written into the pipeline's lifecycle KV bucket by `provision`
    when the spec sets it, so that it wins over an earlier `natsflow pause/resume`; workers follow
    the bucket (framework/runtime/phase.py)."""

    desired_phase: Literal["Running", "Paused"] = "Running"
    pause_grace_period: Annotated[Duration, within_seconds(0, DAY)] = Field(
        30.0, description="how long `natsflow pause` waits for the buffers to drain")
