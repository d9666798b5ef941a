"""Pipeline spec: pydantic models for the YAML file and the graph rules Numaflow users expect.

`load_pipeline(path)` is the one entry point: it parses, validates the models and the graph, and
raises `SpecError` whose message names the file, the field path and the reason for every problem.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .envsubst import EnvRef, substitute, unset_message

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _parse_duration(value: Any) -> float:
    """Durations are written `100ms`, `2s`, `5m`, `1h` or as a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 2s or 1m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 2s, 1m)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _check_name(value: str) -> str:
    if len(value) > 63 or not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (a Kubernetes DNS label, safe in NATS names)"
        )
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration)]
Name = Annotated[str, AfterValidator(_check_name)]


class Model(BaseModel):
    """Base for every spec model: camelCase keys, unknown keys rejected (typos must not pass)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


_SECRET_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_SECRET_SHAPE = "a string or {secretRef: {name: <Secret name>, key: <key in it>}}"


class SecretRef(Model):
    """A credential kept in a Kubernetes Secret instead of the pipeline file. Rendered pods get it
    as the environment variable `framework.secrets.env_name(ref)`; `natsflow run` reads the same."""

    name: str
    key: str


def _text_or_secret(value: Any) -> "str | SecretRef":
    """`Secret` fields: a non-empty string, or `{secretRef: {name, key}}` (errors at the field itself)."""
    if isinstance(value, SecretRef):
        return value
    if isinstance(value, str):
        if not value:
            raise ValueError(f"must not be empty (write {_SECRET_SHAPE})")
        return value
    if not (isinstance(value, dict) and list(value) == ["secretRef"] and isinstance(value["secretRef"], dict)):
        raise ValueError(f"expected {_SECRET_SHAPE}")
    ref = value["secretRef"]
    if sorted(ref) != ["key", "name"] or not all(isinstance(ref[k], str) for k in ref):
        raise ValueError(f"secretRef takes exactly name and key, both strings (got {', '.join(map(str, ref)) or 'none'})")
    if len(ref["name"]) > 253 or not _SECRET_NAME_RE.match(ref["name"]):
        raise ValueError(f"secretRef.name {ref['name']!r} is not a Kubernetes Secret name (lowercase letters, "
                         "digits, '-' and '.')")
    if len(ref["key"]) > 253 or not _SECRET_KEY_RE.match(ref["key"]):
        raise ValueError(f"secretRef.key {ref['key']!r} is not a Secret key (letters, digits, '-', '_' and '.')")
    return SecretRef(name=ref["name"], key=ref["key"])


# "a string or a secretRef": every credential field of a connector. Connectors never see a
# SecretRef: `framework.connectors.load_connector` hands them the value (framework/secrets.py).
Secret = Annotated[
    str | SecretRef,
    PlainValidator(_text_or_secret),
    # dumped as written, so a dumped pipeline reads back the same
    PlainSerializer(lambda v: v if isinstance(v, str) else {"secretRef": {"name": v.name, "key": v.key}}),
    WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1}, {
        "type": "object", "additionalProperties": False, "required": ["secretRef"],
        "properties": {"secretRef": {"type": "object", "additionalProperties": False, "required": ["name", "key"],
                                     "properties": {"name": {"type": "string"}, "key": {"type": "string"}}}}}]}),
]


class Handler(Model):
    handler: str

    @model_validator(mode="after")
    def _shape(self) -> "Handler":
        module, _, func = self.handler.partition(":")
        if not module or not func:
            raise ValueError(f"handler {self.handler!r} must look like 'package.module:function'")
        return self


class Limits(Model):
    read_batch_size: int | None = Field(None, alias="readBatchSize", ge=1, le=10_000)
    buffer_max_length: int | None = Field(None, alias="bufferMaxLength", ge=1)
    buffer_usage_limit: int | None = Field(None, alias="bufferUsageLimit", ge=1, le=100)
    read_timeout: Duration | None = Field(None, alias="readTimeout", gt=0)
    ack_wait: Duration | None = Field(None, alias="ackWait", gt=0)

    def merged(self, override: "Limits | None") -> "ResolvedLimits":
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

    @property
    def buffer_soft_limit(self) -> int:
        """Messages a buffer may hold before writers treat it as full."""
        return max(1, self.buffer_max_length * self.buffer_usage_limit // 100)


DEFAULT_LIMITS = ResolvedLimits()


# ---- sources ---------------------------------------------------------------------------------


class GeneratorSource(Model):
    rpu: int = Field(5, ge=1, description="messages per `duration`")
    duration: Duration = Field(1.0, gt=0)
    msg_size: int = Field(8, alias="msgSize", ge=0)
    key_count: int = Field(0, alias="keyCount", ge=0)
    value: int | None = None
    total: int | None = Field(None, ge=0, description="stop after this many messages (natsflow extension)")


class HttpAuth(Model):
    token: Secret


class HttpSource(Model):
    port: int = Field(8080, ge=0, le=65535)
    host: str = "0.0.0.0"
    auth: HttpAuth | None = None
    max_body_size: int = Field(1 << 20, alias="maxBodySize", ge=1)


class NatsSource(Model):
    url: Secret | None = None
    subject: str
    queue: str | None = None


class DeliverPolicy(str, Enum):
    all = "all"
    new = "new"
    last = "last"


class JetStreamSource(Model):
    url: Secret | None = None
    stream: str
    consumer: str | None = None
    deliver_policy: DeliverPolicy = Field(DeliverPolicy.all, alias="deliverPolicy")


class KafkaTls(Model):
    ca_file: str | None = Field(None, alias="caFile")
    cert_file: str | None = Field(None, alias="certFile")
    key_file: str | None = Field(None, alias="keyFile")
    insecure_skip_verify: bool = Field(False, alias="insecureSkipVerify")

    @model_validator(mode="after")
    def _pair(self) -> "KafkaTls":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile go together (a client certificate needs its key)")
        return self


class SaslMechanism(str, Enum):
    plain = "plain"
    scram_sha_256 = "scram-sha-256"
    scram_sha_512 = "scram-sha-512"


class KafkaSasl(Model):
    mechanism: SaslMechanism = SaslMechanism.plain
    username: Secret
    password: Secret


class KafkaConnection(Model):
    """What a Kafka source and sink share: where the brokers are and how to log in."""

    brokers: list[str] = Field(min_length=1, description="host:port bootstrap servers")
    topic: str = Field(min_length=1)
    tls: KafkaTls | None = None
    sasl: KafkaSasl | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="extra aiokafka client options")


class KafkaSource(KafkaConnection):
    consumer_group: str = Field(alias="consumerGroup", min_length=1)


class RabbitMqSource(Model):
    url: Secret = "amqp://guest:guest@127.0.0.1:5672/"
    queue: str = Field(min_length=1)
    prefetch: int = Field(500, ge=1, le=65535)


class MqttSource(Model):
    url: Secret = "mqtt://127.0.0.1:1883"
    topic: str = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    client_id: str | None = Field(None, alias="clientId", description="fixed session id (default from the vertex)")


class RedisStreamsSource(Model):
    url: Secret = "redis://127.0.0.1:6379/0"
    stream: str = Field(min_length=1)
    group: str = Field(min_length=1)
    consumer: str | None = Field(None, description="consumer name (default $NATSFLOW_REPLICA_ID or the hostname)")
    start_id: str = Field("0", alias="startId", description="where a new group starts: 0 = all, $ = new only")
    value_field: str = Field("value", alias="valueField", description="the field holding the payload")
    key_field: str | None = Field("key", alias="keyField", description="a field whose value is the message key")
    claim_idle: Duration = Field(60.0, alias="claimIdle", gt=0,
                                 description="take over entries another consumer left unacked this long")


SOURCE_KINDS = ("generator", "http", "nats", "jetstream", "kafka", "rabbitmq", "mqtt", "redisStreams")


class Source(Model):
    generator: GeneratorSource | None = None
    http: HttpSource | None = None
    nats: NatsSource | None = None
    jetstream: JetStreamSource | None = None
    kafka: KafkaSource | None = None
    rabbitmq: RabbitMqSource | None = None
    mqtt: MqttSource | None = None
    redisStreams: RedisStreamsSource | None = None  # noqa: N815 - the attribute is the kind's name
    event_time: Handler | None = Field(None, alias="eventTime")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        _exactly_one_of(self, "source", fields=SOURCE_KINDS)
        return self

    @property
    def kind(self) -> str:
        return _chosen(self, fields=SOURCE_KINDS)


# ---- UDFs ------------------------------------------------------------------------------------


class Retry(Model):
    """How often a failing UDF call is retried before the message goes to the dead-letter stream."""

    attempts: int = Field(3, ge=1, le=100)
    interval: Duration = 0.05
    factor: float = Field(2.0, ge=1.0)
    cap: Duration = 2.0


class BatchMap(Handler):
    max_batch_size: int = Field(64, alias="maxBatchSize", ge=1, le=10_000)
    max_wait: Duration = Field(0.05, alias="maxWait")


class FixedWindow(Model):
    length: Duration = Field(gt=0)


class SlidingWindow(Model):
    length: Duration = Field(gt=0)
    slide: Duration = Field(gt=0)

    @model_validator(mode="after")
    def _slide_le_length(self) -> "SlidingWindow":
        if self.slide > self.length:
            raise ValueError(f"slide ({self.slide}s) must not exceed length ({self.length}s)")
        return self


class SessionWindow(Model):
    timeout: Duration = Field(gt=0)


class WindowSpec(Model):
    fixed: FixedWindow | None = None
    sliding: SlidingWindow | None = None
    session: SessionWindow | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "WindowSpec":
        _exactly_one_of(self, "window")
        return self

    @property
    def kind(self) -> str:
        return _chosen(self)


class Reduce(Handler):
    window: WindowSpec
    keyed: bool = True
    allowed_lateness: Duration = Field(0.0, alias="allowedLateness")
    partitions: int = Field(1, ge=1, le=256)


UDF_KINDS = ("map", "flatmap", "batchMap", "mapStream", "reduce", "command")  # "command": command and/or container


class Container(Model):
    """A vertex program in its own image, for `natsflow render` (it follows docs/protocol.md)."""

    image: str = Field(min_length=1)
    command: list[str] | None = Field(None, min_length=1, description="default: the image's entrypoint")
    args: list[str] | None = None


class Udf(Model):
    map: Handler | None = None
    flatmap: Handler | None = None
    batch_map: BatchMap | None = Field(None, alias="batchMap")
    map_stream: Handler | None = Field(None, alias="mapStream")
    reduce: Reduce | None = None
    command: list[str] | None = Field(None, min_length=1)
    container: Container | None = None
    env: dict[str, Secret] = Field(default_factory=dict)
    retry: Retry = Field(default_factory=Retry)
    timeout: Duration = Field(300.0, gt=0, description="longest handler call (a map call, a batchMap chunk, a "
                              "mapStream step, a reduce window); longer: its inputs are dead-lettered")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Udf":
        # `command` (run locally) and `container` (rendered) may both describe one foreign program.
        chosen = [k for k in UDF_KINDS if self.handler_of(k) is not None or (k == "command" and self.is_program)]
        if len(chosen) != 1:
            raise ValueError(f"a udf must set exactly one of: {', '.join(UDF_KINDS)} (found {len(chosen)})")
        return self

    def handler_of(self, kind: str) -> "Handler | None":
        return {"map": self.map, "flatmap": self.flatmap, "batchMap": self.batch_map,
                "mapStream": self.map_stream, "reduce": self.reduce}.get(kind)

    @property
    def is_program(self) -> bool:
        """A program of its own (any language) rather than a Python handler run by the worker."""
        return bool(self.command) or self.container is not None

    @property
    def kind(self) -> str:
        return next(k for k in UDF_KINDS if self.handler_of(k) is not None or (k == "command" and self.is_program))

    @property
    def handler(self) -> "Handler | None":
        return self.handler_of(self.kind)


# ---- sinks -----------------------------------------------------------------------------------


class LogSink(Model):
    pass


class BlackholeSink(Model):
    pass


class NatsSink(Model):
    url: Secret | None = None
    subject: str


class JetStreamSink(Model):
    url: Secret | None = None
    stream: str
    subject: str


class KafkaSink(KafkaConnection):
    set_key: bool = Field(False, alias="setKey", description="the message's keys, joined by ':', as the record key")


class PostgresMode(str, Enum):
    insert = "insert"
    upsert = "upsert"


class PostgresSink(Model):
    dsn: Secret
    table: str = Field(min_length=1, description="table name, optionally schema.table")
    mode: PostgresMode = PostgresMode.insert
    key_columns: list[str] = Field(default_factory=list, alias="keyColumns")
    id_column: str | None = Field(None, alias="idColumn", description="column that gets the data id")
    header_columns: dict[str, str] = Field(default_factory=dict, alias="headerColumns",
                                           description="header name -> column, e.g. {Nf-Error: error}")

    @model_validator(mode="after")
    def _keys_for_upsert(self) -> "PostgresSink":
        if self.mode is PostgresMode.upsert and not self.key_columns:
            raise ValueError("mode upsert needs keyColumns (the columns of a unique index or primary key)")
        return self


class RedisSink(Model):
    url: Secret = "redis://127.0.0.1:6379/0"
    stream: str | None = None
    list: str | None = None
    max_len: int | None = Field(None, alias="maxLen", ge=1, description="trim the stream to about this length")

    @model_validator(mode="after")
    def _one_target(self) -> "RedisSink":
        if (self.stream is None) == (self.list is None):
            raise ValueError("set exactly one of stream or list")
        return self


class HttpMethod(str, Enum):
    post = "POST"
    put = "PUT"
    patch = "PATCH"


class HttpSink(Model):
    url: str = Field(pattern=r"^https?://")
    method: HttpMethod = HttpMethod.post
    headers: dict[str, Secret] = Field(default_factory=dict)
    timeout: Duration = Field(10.0, gt=0)
    concurrency: int = Field(16, ge=1, le=1000, description="requests in flight at once")


class Backoff(Model):
    interval: Duration = 0.05
    factor: float = Field(2.0, ge=1.0)
    cap: Duration = 5.0
    steps: int = Field(3, ge=0, description="retries before onFailure applies (retry: never applies)")
    jitter: float = Field(0.0, ge=0.0, le=1.0, description="each delay is scaled by a random 1 ± jitter")


class OnFailure(str, Enum):
    retry = "retry"
    fallback = "fallback"
    drop = "drop"


class RetryStrategy(Model):
    backoff: Backoff = Field(default_factory=Backoff)
    on_failure: OnFailure = Field(OnFailure.retry, alias="onFailure")


SINK_KINDS = ("log", "blackhole", "nats", "jetstream", "udsink", "kafka", "postgres", "redis", "http")


class Sink(Model):
    log: LogSink | None = None
    blackhole: BlackholeSink | None = None
    nats: NatsSink | None = None
    jetstream: JetStreamSink | None = None
    udsink: Handler | None = None
    kafka: KafkaSink | None = None
    postgres: PostgresSink | None = None
    redis: RedisSink | None = None
    http: HttpSink | None = None
    retry_strategy: RetryStrategy = Field(default_factory=RetryStrategy, alias="retryStrategy")
    timeout: Duration = Field(300.0, gt=0, description="longest write call; longer is a failed write under "
                              "retryStrategy")
    fallback: Sink | None = Field(None, description="where datums go that the sink gives up on (any sink kind)")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Sink":
        _exactly_one_of(self, "sink", fields=SINK_KINDS)
        if self.retry_strategy.on_failure is OnFailure.fallback and self.fallback is None:
            raise ValueError("retryStrategy.onFailure is fallback, so a fallback sink is required")
        if self.fallback is not None and self.fallback.fallback is not None:
            raise ValueError("a fallback sink cannot have a fallback of its own")
        return self

    @property
    def kind(self) -> str:
        return _chosen(self, fields=SINK_KINDS)


# ---- graph -----------------------------------------------------------------------------------


class Scale(Model):
    """Autoscaling on the lag of the vertex's consumer, with KEDA's meaning for every field."""

    min: int = Field(0, ge=0)
    max: int = Field(1, ge=1)
    lag_threshold: int = Field(100, alias="lagThreshold", ge=1)
    activation_lag_threshold: int = Field(0, alias="activationLagThreshold", ge=0)
    polling_interval: Duration = Field(15.0, alias="pollingInterval", ge=0.1)
    cooldown_period: Duration = Field(300.0, alias="cooldownPeriod", ge=0)
    scale_down_stabilization: Duration = Field(60.0, alias="scaleDownStabilization", ge=0)

    @model_validator(mode="after")
    def _min_le_max(self) -> "Scale":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Resources(Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class Vertex(Model):
    name: Name
    source: Source | None = None
    udf: Udf | None = None
    sink: Sink | None = None
    scale: Scale = Field(default_factory=Scale)
    limits: Limits | None = None
    resources: Resources | None = None
    output_schema: dict[str, Any] | None = Field(
        None, alias="outputSchema",
        description="JSON Schema of the payloads this vertex writes (documentation: `natsflow asyncapi`)")
    side_inputs: list[Name] = Field(default_factory=list, alias="sideInputs",
                                    description="names from spec.sideInputs this vertex reads")

    @model_validator(mode="after")
    def _one_kind(self) -> "Vertex":
        kinds = [k for k in ("source", "udf", "sink") if getattr(self, k) is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"a vertex is exactly one of source, udf or sink (found: {found})")
        return self

    @property
    def kind(self) -> Literal["source", "udf", "sink"]:
        return "source" if self.source else "udf" if self.udf else "sink"


class TagOperator(str, Enum):
    or_ = "or"
    and_ = "and"
    not_ = "not"


class TagCondition(Model):
    operator: TagOperator = TagOperator.or_
    values: list[str] = Field(min_length=1)

    def matches(self, tags: frozenset[str]) -> bool:
        if self.operator is TagOperator.or_:
            return any(v in tags for v in self.values)
        if self.operator is TagOperator.and_:
            return all(v in tags for v in self.values)
        return not any(v in tags for v in self.values)


class Conditions(Model):
    tags: TagCondition | None = None


class OnFull(str, Enum):
    retry_until_success = "retryUntilSuccess"
    discard_latest = "discardLatest"


class Edge(Model):
    from_: Name = Field(alias="from")
    to: Name
    conditions: Conditions | None = None
    on_full: OnFull = Field(OnFull.retry_until_success, alias="onFull")
    late: bool = Field(False, description="from a reduce: this edge receives only late messages")

    def accepts(self, tags: frozenset[str]) -> bool:
        if self.conditions is None or self.conditions.tags is None:
            return True
        return self.conditions.tags.matches(tags)


class Metadata(Model):
    name: Name
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class IdleSource(Model):
    threshold: Duration = Field(gt=0)
    increment_by: Duration = Field(alias="incrementBy", gt=0)


class WatermarkConfig(Model):
    max_delay: Duration = Field(0.0, alias="maxDelay")
    idle_source: IdleSource | None = Field(None, alias="idleSource")
    publisher_timeout: Duration = Field(10.0, alias="publisherTimeout", gt=0)


class SideInputTrigger(Model):
    schedule: str = Field(description="@every <duration>, @hourly/@daily/..., or a 5-field cron (UTC)")
    timeout: Duration = Field(60.0, gt=0, description="a run taking longer counts as failed; the old value stays")

    @field_validator("schedule")
    @classmethod
    def _parses(cls, value: str) -> str:
        from .schedule import parse_schedule  # noqa: PLC0415 - schedule parsing is its own module

        parse_schedule(value)
        return value


class SideInput(Handler):
    """A value computed by `handler()` on `trigger`, stored in KV and read live by vertices."""

    name: Name
    trigger: SideInputTrigger


class PipelineSpec(Model):
    limits: Limits = Field(default_factory=Limits)
    watermark: WatermarkConfig = Field(default_factory=WatermarkConfig)
    side_inputs: list[SideInput] = Field(default_factory=list, alias="sideInputs")
    vertices: list[Vertex] = Field(min_length=2)
    edges: list[Edge] = Field(min_length=1)


class Pipeline(Model):
    api_version: Literal["natsflow.io/v1"] = Field(alias="apiVersion")
    kind: Literal["Pipeline"]
    metadata: Metadata
    spec: PipelineSpec
    _env_refs: list[EnvRef] = PrivateAttr(default_factory=list)

    @property
    def env_refs(self) -> list[EnvRef]:
        """The `${VAR}` references of the file this pipeline was read from."""
        return self._env_refs

    # -- lookups used by the runtime --
    @property
    def name(self) -> str:
        return self.metadata.name

    def vertex(self, name: str) -> Vertex:
        for v in self.spec.vertices:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.spec.vertices)
        raise KeyError(f"pipeline {self.name!r} has no vertex {name!r} (vertices: {known})")

    def out_edges(self, name: str) -> list[Edge]:
        return [e for e in self.spec.edges if e.from_ == name]

    def in_edges(self, name: str) -> list[Edge]:
        return [e for e in self.spec.edges if e.to == name]

    def limits_for(self, name: str) -> ResolvedLimits:
        return self.spec.limits.merged(self.vertex(name).limits)

    def reading_vertices(self) -> list[Vertex]:
        """Vertices that own an inter-step buffer (every UDF and sink)."""
        return [v for v in self.spec.vertices if v.kind != "source"]


# ---- loading and graph validation ------------------------------------------------------------


class SpecError(ValueError):
    """A pipeline file that cannot run; `problems` holds (field path, reason) pairs."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        lines = [f"{file}: {path}: {reason}" if path else f"{file}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))


def load_pipeline(path: str | Path, *, check_handlers: bool = True, env: Mapping[str, str] | None = None,
                  allow_unset: bool = False) -> Pipeline:
    """Read, validate and return the pipeline in `path`; raise `SpecError` listing every problem.
    `${VAR}` references are replaced from `env` (default: this process's environment); see
    `parse_pipeline` for `allow_unset`."""
    path = Path(path)
    file = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(file, [("", f"cannot read file: {exc.strerror or exc}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError(file, [("", f"not valid YAML: {exc}")]) from None
    return parse_pipeline(raw, file=file, base_dir=path.parent, check_handlers=check_handlers, env=env,
                          allow_unset=allow_unset)


def parse_pipeline(
    raw: Any, *, file: str = "<pipeline>", base_dir: Path | None = None, check_handlers: bool = True,
    env: Mapping[str, str] | None = None, allow_unset: bool = False,
) -> Pipeline:
    """Validate a parsed pipeline document. An unset `${VAR}` without a default is an error naming
    the field, unless `allow_unset` (what `render` does: the pods substitute from their own
    environment), which keeps its `${VAR}` text, fine wherever any string is."""
    if not isinstance(raw, dict):
        raise SpecError(file, [("", "the file must hold a mapping with apiVersion, kind, metadata and spec")])
    sub = substitute(raw, os.environ if env is None else env)
    problems = sub.problems + ([] if allow_unset else [(r.path, unset_message(r.name)) for r in sub.unset])
    if problems:
        raise SpecError(file, problems)
    try:
        pipeline = Pipeline.model_validate(sub.doc)
    except ValidationError as exc:
        raise SpecError(file, [_env_hint((_format_loc(e["loc"]), _clean_msg(e)), sub.unset)
                               for e in exc.errors()]) from None
    pipeline._env_refs = sub.refs
    problems = graph_problems(pipeline)
    if check_handlers and not problems:
        problems = handler_problems(pipeline, base_dir)
    if problems:
        raise SpecError(file, problems)
    return pipeline


def _env_hint(problem: tuple[str, str], unset: list[EnvRef]) -> tuple[str, str]:
    """A field that failed because it still holds an unset `${VAR}` says so."""
    path, reason = problem
    names = [r.name for r in unset if r.path == path]
    if not names:
        return problem
    return path, (f"{reason} (it holds ${{{names[0]}}}, which is not set here: set it, or give the value "
                  f"to check with a default, ${{{names[0]}:-...}})")


def graph_problems(p: Pipeline) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    vertices = p.spec.vertices
    index = {}
    for i, v in enumerate(vertices):
        if v.name in index:
            problems.append((f"spec.vertices[{i}].name", f"duplicate vertex name {v.name!r}"))
        index.setdefault(v.name, i)
    pairs = Counter((e.from_, e.to) for e in p.spec.edges)
    seen: set[tuple[str, str]] = set()
    for j, e in enumerate(p.spec.edges):
        where = f"spec.edges[{j}]"
        for end, name in (("from", e.from_), ("to", e.to)):
            if name not in index:
                problems.append((f"{where}.{end}", f"no vertex named {name!r}"))
        if e.from_ in index and vertices[index[e.from_]].kind == "sink":
            problems.append((f"{where}.from", f"{e.from_!r} is a sink; sinks have no out-edges"))
        if e.to in index and vertices[index[e.to]].kind == "source":
            problems.append((f"{where}.to", f"{e.to!r} is a source; sources have no in-edges"))
        src = vertices[index[e.from_]] if e.from_ in index else None
        if e.late and not (src is not None and src.udf is not None and src.udf.reduce is not None):
            problems.append((f"{where}.late", "only edges from a reduce vertex can take late messages"))
        if e.conditions is not None and e.from_ in index and vertices[index[e.from_]].kind == "source":
            problems.append((f"{where}.conditions", "sources set no tags, so conditions on an edge "
                             "from a source would never route by them; remove them"))
        if pairs[(e.from_, e.to)] > 1 and (e.from_, e.to) in seen:
            problems.append((where, f"duplicate edge from {e.from_!r} to {e.to!r}"))
        seen.add((e.from_, e.to))
    outs = Counter(e.from_ for e in p.spec.edges)
    ins = Counter(e.to for e in p.spec.edges)
    for i, v in enumerate(vertices):
        where = f"spec.vertices[{i}]"
        if v.kind in ("source", "udf") and not outs[v.name]:
            problems.append((where, f"{v.kind} {v.name!r} has no out-edge (orphan vertex)"))
        if v.kind in ("udf", "sink") and not ins[v.name]:
            problems.append((where, f"{v.kind} {v.name!r} has no in-edge (orphan vertex)"))
    for i, v in enumerate(vertices):
        if v.udf is not None and v.udf.reduce is not None and v.scale.max > 1:
            problems.append((f"spec.vertices[{i}].scale.max", "a reduce vertex runs as one replica for now "
                             "(its replicas would need stable indexes to split the partitions); set max: 1"))
        if v.source is not None and v.source.mqtt is not None and v.scale.min > 1:
            problems.append((f"spec.vertices[{i}].scale.min", "an mqtt source runs as one replica (replicas "
                             "sharing its client id would disconnect each other); set min: 1"))
    for kind in ("source", "sink"):
        if not any(v.kind == kind for v in vertices):
            problems.append(("spec.vertices", f"a pipeline needs at least one {kind}"))
    return problems + side_input_problems(p)


def side_input_problems(p: Pipeline) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    declared: list[str] = []
    for i, si in enumerate(p.spec.side_inputs):
        if si.name in declared:
            problems.append((f"spec.sideInputs[{i}].name", f"duplicate side input name {si.name!r}"))
        declared.append(si.name)
    known = ", ".join(declared) or "none declared"
    for i, v in enumerate(p.spec.vertices):
        for j, name in enumerate(v.side_inputs):
            where = f"spec.vertices[{i}].sideInputs[{j}]"
            if name not in declared:
                problems.append((where, f"no side input named {name!r} in spec.sideInputs ({known})"))
            elif name in v.side_inputs[:j]:
                problems.append((where, f"side input {name!r} is listed twice"))
        if declared and v.name == "sideinputs-manager":
            problems.append((f"spec.vertices[{i}].name", "'sideinputs-manager' is the side-input manager's "
                             "name (its Deployment); rename the vertex"))
        if v.side_inputs and v.udf is not None and v.udf.is_program:
            problems.append((f"spec.vertices[{i}].sideInputs", "a command vertex cannot read side inputs "
                             "(the subprocess protocol does not carry them)"))
    return problems


def handler_problems(p: Pipeline, base_dir: Path | None) -> list[tuple[str, str]]:
    problems = []
    for i, v in enumerate(p.spec.vertices):
        if v.udf is not None and v.udf.handler is not None:
            where, ref = f"udf.{v.udf.kind}", v.udf.handler.handler
        elif v.sink is not None and v.sink.udsink is not None:
            where, ref = "sink.udsink", v.sink.udsink.handler
        elif v.source is not None and v.source.event_time is not None:
            where, ref = "source.eventTime", v.source.event_time.handler
        else:
            continue
        try:
            load_handler(ref, base_dir)
        except HandlerError as exc:
            problems.append((f"spec.vertices[{i}].{where}.handler", str(exc)))
    for i, si in enumerate(p.spec.side_inputs):
        try:
            load_handler(si.handler, base_dir)
        except HandlerError as exc:
            problems.append((f"spec.sideInputs[{i}].handler", str(exc)))
    for i, v in enumerate(p.spec.vertices):  # a udsink as fallback imports like any handler
        fb = v.sink.fallback if v.sink is not None else None
        if fb is not None and fb.udsink is not None:
            try:
                load_handler(fb.udsink.handler, base_dir)
            except HandlerError as exc:
                problems.append((f"spec.vertices[{i}].sink.fallback.udsink.handler", str(exc)))
    return problems


class HandlerError(ImportError):
    pass


def load_handler(ref: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """Import `package.module:function`; the pipeline file's directory is importable."""
    if base_dir is not None and str(base_dir.resolve()) not in sys.path:
        sys.path.insert(0, str(base_dir.resolve()))
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HandlerError(f"cannot import module {module_name!r} ({exc})") from exc
    except Exception as exc:  # a handler module that crashes on import is the user's bug to see
        raise HandlerError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise HandlerError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise HandlerError(f"{ref!r} is not callable")
    return target


def _exactly_one_of(model: BaseModel, what: str, fields: tuple[str, ...] | None = None) -> None:
    fields = fields or tuple(type(model).model_fields)
    chosen = [f for f in fields if getattr(model, f) is not None]
    if len(chosen) != 1:
        options = ", ".join(fields)
        raise ValueError(f"a {what} must set exactly one of: {options} (found {len(chosen)})")


def _chosen(model: BaseModel, fields: tuple[str, ...] | None = None) -> str:
    fields = fields or tuple(type(model).model_fields)
    return next(f for f in fields if getattr(model, f) is not None)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _clean_msg(error: dict[str, Any]) -> str:
    msg = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if error["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; keys are camelCase)"
    return msg
