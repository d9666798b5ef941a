"""The `udf:` block of a vertex: which kind of handler (map, flatmap, batchMap, mapStream,
reduce with its window) or foreign program it runs, with its retries, timeout and environment."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from framework.spec.settings import Retry
from framework.spec.types import (
    MINUTE,
    WEEK,
    WINDOW_WHY,
    CallTimeout,
    Duration,
    Flag,
    Handler,
    Model,
    Secret,
    WholeNumber,
    WindowLength,
    chosen,
    exactly_one_of,
    within,
    within_seconds,
)


class BatchMap(Handler):
    max_batch_size: Annotated[WholeNumber, within(1, 10_000, "one handler call gets the whole batch")] = 64
    max_wait: Annotated[Duration, within_seconds(0, MINUTE, "the first datum of a batch waits this long")] = 0.05


class FixedWindow(Model):
    length: WindowLength


# Every message is in length/slide sliding windows at once, each its own state and output.
MAX_WINDOWS_PER_MESSAGE = 1000


class SlidingWindow(Model):
    length: WindowLength
    slide: WindowLength

    @model_validator(mode="after")
    def _slide_le_length(self) -> SlidingWindow:
        if self.slide > self.length:
            raise ValueError(f"slide ({self.slide}s) must not exceed length ({self.length}s)")
        if self.length / self.slide > MAX_WINDOWS_PER_MESSAGE:
            raise ValueError(f"length / slide must be at most {MAX_WINDOWS_PER_MESSAGE} (every message "
                             f"belongs to that many windows at once; here {self.length / self.slide:.0f})")
        return self


class SessionWindow(Model):
    timeout: WindowLength


class WindowSpec(Model):
    fixed: FixedWindow | None = None
    sliding: SlidingWindow | None = None
    session: SessionWindow | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> WindowSpec:
        exactly_one_of(self, "window")
        return self

    @property
    def kind(self) -> str:
        return chosen(self)


class ReduceOptions(Model):
    """How a reduce vertex groups its input: the window, keys and partitions (a Python `reduce`
    handler or a Numaflow SDK reducer, `udf.numaflow.reduce`)."""

    window: WindowSpec
    keyed: Flag = True
    allowed_lateness: Annotated[Duration, within_seconds(0, WEEK, WINDOW_WHY)] = 0.0
    partitions: Annotated[WholeNumber, within(1, 256, "each partition is a buffer stream of its own")] = 1
    lease_ttl: Annotated[Duration, within_seconds(1, 10 * MINUTE, "a dead replica's partitions wait this long",
                                                  low_why="renewals every ttl/4 must get through")] = Field(
        10.0, description="how long a partition's owner may go silent before another replica "
                                            "takes the partition over (docs/watermarks.md)")


class Reduce(ReduceOptions, Handler):
    """`udf.reduce`: a Python handler called once per window and key."""


# "command": a natsflow-protocol program (command and/or container); "numaflow": a Numaflow SDK program
UDF_KINDS = ("map", "flatmap", "batchMap", "mapStream", "reduce", "numaflow", "command")


class Container(Model):
    """A vertex program in its own image, for `natsflow render` (it follows docs/protocol.md)."""

    image: str = Field(min_length=1)
    command: list[str] | None = Field(None, min_length=1, description="default: the image's entrypoint")
    args: list[str] | None = None


class NumaflowProgram(Model):
    """A program written with a Numaflow SDK (pynumaflow, numaflow-go, -java, -rs), run unmodified:
    natsflow plays Numaflow's data plane and speaks the SDK's gRPC service over a Unix socket
    (docs/numaflow.md). `command` runs it locally (`natsflow run`/`up`); `container` renders it as
    a sidecar of the vertex pod sharing the socket folder."""

    command: list[str] | None = Field(None, min_length=1, description="how `natsflow run` starts the program")
    container: Container | None = Field(None, description="the program's image, for `natsflow render`")
    env: dict[str, Secret] = Field(default_factory=dict)
    startup_timeout: Annotated[Duration, within_seconds(1, 10 * MINUTE, "the SDK writes its server-info file "
                                                        "when its gRPC server is up")] = 60.0

    @model_validator(mode="after")
    def _runnable(self) -> NumaflowProgram:
        if not self.command and self.container is None:
            raise ValueError("a numaflow program needs a command (local runs), a container (render), or both")
        return self


class SourceTransformer(Model):
    """`source.transformer`: a Numaflow source transformer program (`SourceTransformer`) that
    rewrites each record as it enters the pipeline: value, keys, event time, tags (for the source's
    edge conditions), or drops it."""

    numaflow: NumaflowProgram


class NumaflowUdf(NumaflowProgram):
    """`udf.numaflow`: a Numaflow map, batch map or map stream (which one the SDK's server-info file
    says), or with `reduce:` a reducer / reduce streamer over natsflow's windows."""

    reduce: ReduceOptions | None = None


class Udf(Model):
    map: Handler | None = None
    flatmap: Handler | None = None
    batch_map: BatchMap | None = None
    map_stream: Handler | None = None
    reduce: Reduce | None = None
    numaflow: NumaflowUdf | None = None
    command: list[str] | None = Field(None, min_length=1)
    container: Container | None = None
    env: dict[str, Secret] = Field(default_factory=dict)
    retry: Retry = Field(default_factory=Retry)
    timeout: CallTimeout = Field(300.0, description="longest handler call (a map call, a batchMap chunk, a "
                              "mapStream step, a reduce window); longer: its inputs are dead-lettered")

    @model_validator(mode="after")
    def _exactly_one(self) -> Udf:
        # `command` (run locally) and `container` (rendered) may both describe one foreign program.
        chosen = [k for k in UDF_KINDS if self._sets(k)]
        if len(chosen) != 1:
            raise ValueError(f"a udf must set exactly one of: {', '.join(UDF_KINDS)} (found {len(chosen)})")
        return self

    def handler_of(self, kind: str) -> Handler | None:
        return {"map": self.map, "flatmap": self.flatmap, "batchMap": self.batch_map,
                "mapStream": self.map_stream, "reduce": self.reduce}.get(kind)

    @property
    def windowing(self) -> ReduceOptions | None:
        """The reduce options of a reducing vertex (a Python reduce or a Numaflow reducer), else None."""
        if self.reduce is not None:
            return self.reduce
        return self.numaflow.reduce if self.numaflow is not None else None

    @property
    def is_program(self) -> bool:
        """A program of its own (any language) rather than a Python handler run by the worker."""
        return bool(self.command) or self.container is not None

    @property
    def kind(self) -> str:
        return next(k for k in UDF_KINDS if self._sets(k))

    def _sets(self, kind: str) -> bool:
        if kind == "numaflow":
            return self.numaflow is not None
        return self.handler_of(kind) is not None or (kind == "command" and self.is_program)

    @property
    def handler(self) -> Handler | None:
        return self.handler_of(self.kind)


# What `natsflow import numaflow` writes as the `command:` of a program it only knows the image of:
# `natsflow run` refuses to start it (framework/spec/handlers.py), `render` uses the container.
COMMAND_PLACEHOLDER = "TODO-fill-in-the-command"
