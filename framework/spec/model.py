"""Pipeline spec: pydantic models for the YAML file and the graph rules Numaflow users expect.

`load_pipeline(path)` is the one entry point: it parses, validates the models and the graph, and
raises `SpecError` whose message names the file, the field path and the reason for every problem.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
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

from framework.spec.envsubst import EnvRef, substitute, unset_message
from framework.spec.names import (
    RESERVED_STREAM_PREFIX,
    jetstream_name_problem,
    queue_group_problem,
    reserved_subject_problem,
    subject_problem,
)
from framework.spec.yaml_file import YamlFileError, read_yaml_file

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_IDENT = r"[^\W\d]\w*"
_HANDLER_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")

INT64_MAX = 2**63 - 1
MINUTE, HOUR, DAY, WEEK = 60.0, 3600.0, 86400.0, 7 * 86400.0
K8S_NAME_MAX = 63  # a Kubernetes object name natsflow renders is a DNS label (RFC 1123)


# ---- numbers: whole numbers, finite numbers and durations, each with bounds in its message -----


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the text {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "a mapping"
    return repr(value)


# A number written as text: what a `${VAR}` reference in a numeric field becomes, or a quoted number.
_INTEGER_TEXT = re.compile(r"^\s*[-+]?\d{1,30}\s*$")
_DECIMAL_TEXT = re.compile(r"^\s*[-+]?(\d{1,30}(\.\d{0,30})?|\.\d{1,30})([eE][-+]?\d{1,3})?\s*$")


def _whole_number(value: Any) -> int:
    """A count: an int, a float without a fraction (1.0e+3) or digits as text; never a bool."""
    if isinstance(value, str) and _INTEGER_TEXT.match(value):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {_shown(value)}{_exponent_hint(value)}")
    return value


def _exponent_hint(value: Any) -> str:
    if isinstance(value, str) and _DECIMAL_TEXT.match(value) and "e" in value.lower():
        return " (YAML reads a number like 1e9 as text: write 1000000000 or 1.0e+9)"
    return ""


def _finite_number(value: Any) -> float:
    if isinstance(value, str) and _DECIMAL_TEXT.match(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {_shown(value)}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    return float(value)


def _flag(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"  # the text of a `${VAR}` reference
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_shown(value)}")
    return value


def _parse_duration(value: Any) -> float:
    """Durations are written `100ms`, `2s`, `5m`, `1h` or as a number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration such as 500ms, 2s or 1m, got {_shown(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"{value[:40]!r} is not a duration (use e.g. 500ms, 2s, 1m)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{str(value)[:40]!r} is not a finite duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_seconds(seconds: float) -> str:
    """A duration the way a spec writes it: 168h, 1m, 100ms."""
    for unit, size in (("h", HOUR), ("m", MINUTE), ("s", 1.0), ("ms", 0.001)):
        count = seconds / size
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def within(low: float, high: float, why: str = "", *, low_why: str = "",
           show: Callable[[float], str] = str) -> AfterValidator:
    """Bounds with the limit (and why, where it is not obvious) in the message."""

    def check(value: Any) -> Any:
        if value < low:
            raise ValueError(f"must be at least {show(low)}" + (f" ({low_why})" if low_why else ""))
        if value > high:
            raise ValueError(f"must be at most {show(high)}" + (f" ({why})" if why else ""))
        return value

    return AfterValidator(check)


def within_seconds(low: float, high: float, why: str = "", *, low_why: str = "") -> AfterValidator:
    return within(low, high, why, low_why=low_why, show=format_seconds)


def _check_name(value: str) -> str:
    if len(value) > 63 or not _NAME_RE.match(value):
        raise ValueError(
            f"{value[:80]!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (a Kubernetes DNS label, safe in NATS names)"
        )
    return value


def _refuse(check: Callable[[str], str | None]) -> AfterValidator:
    def run(value: str) -> str:
        problem = check(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return AfterValidator(run)


def _publish_subject_problem(subject: str) -> str | None:
    return subject_problem(subject, wildcards=False) or reserved_subject_problem(subject)


def _subscribe_subject_problem(subject: str) -> str | None:
    return subject_problem(subject, wildcards=True) or reserved_subject_problem(subject)


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
Number = Annotated[float, BeforeValidator(_finite_number)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Duration = Annotated[float, BeforeValidator(_parse_duration)]
Name = Annotated[str, AfterValidator(_check_name)]
PublishSubject = Annotated[str, _refuse(_publish_subject_problem)]
SubscribeSubject = Annotated[str, _refuse(_subscribe_subject_problem)]
StreamName = Annotated[str, _refuse(jetstream_name_problem)]
ConsumerName = Annotated[str, _refuse(lambda name: jetstream_name_problem(name, "consumer"))]
QueueGroup = Annotated[str, _refuse(queue_group_problem)]

# Bounds shared by several fields.
BUFFER_MAX = 100_000_000
BUFFER_WHY = ("a buffer is a queue between two steps, not a store; a reduce may also hold this many "
              "messages unacknowledged")
WINDOW_WHY = "a reduce keeps every input of an open window unacknowledged in its buffer"
Backlog = Annotated[WholeNumber, within(1, BUFFER_MAX, BUFFER_WHY)]  # pending messages, lag thresholds
# Retry delays: every retry waits at most this long, however large the factor makes it.
RetryDelay = Annotated[Duration, within_seconds(0, HOUR, "a retry waits at most an hour")]
RetryFactor = Annotated[Number, within(1.0, 10.0, "at 10 the delay reaches its cap within a few retries")]
WindowLength = Annotated[Duration, within_seconds(0.001, WEEK, WINDOW_WHY)]
# udf.timeout, sink.timeout: a call still running after a day is stuck, not slow; its thread stays
# taken (framework/runtime/bounded.py) until it returns.
CallTimeout = Annotated[Duration, within_seconds(0.001, DAY, "a call running longer is stuck, not slow")]


class Model(BaseModel):
    """Base for every spec model: camelCase keys, unknown keys rejected (typos must not pass)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


_SECRET_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_SECRET_SHAPE = "a string or {secretRef: {name: <Secret name>, key: <key in it>}}"


class SecretRef(Model):
    """A credential kept in a Kubernetes Secret instead of the pipeline file. Rendered pods get it
    as the environment variable `framework.spec.secrets.env_name(ref)`; `natsflow run` reads the same."""

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
# SecretRef: `framework.connector.load_connector` hands them the value (framework/spec/secrets.py).
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
        if not _HANDLER_RE.match(self.handler):
            raise ValueError(f"handler {self.handler[:80]!r} must look like 'package.module:function' "
                             "(Python names separated by dots, one colon)")
        return self


class Limits(Model):
    read_batch_size: Annotated[WholeNumber, within(1, 10_000, "a batch is held in memory and acknowledged "
                                                   "together")] | None = Field(None, alias="readBatchSize")
    buffer_max_length: Backlog | None = Field(None, alias="bufferMaxLength")
    buffer_usage_limit: Annotated[WholeNumber, within(1, 100, "a percentage")] | None = Field(
        None, alias="bufferUsageLimit")
    read_timeout: Annotated[Duration, within_seconds(0.01, HOUR, low_why="a shorter wait makes an idle vertex "
                                                     "spin")] | None = Field(None, alias="readTimeout")
    ack_wait: Annotated[Duration, within_seconds(1.0, DAY, low_why="JetStream would redeliver messages still "
                                                 "being processed")] | None = Field(None, alias="ackWait")

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


class Storage(str, Enum):
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

    replicas: Literal[1, 3, 5] | None = Field(None, description="JetStream replicas (needs a cluster of as many servers)")
    storage: Storage | None = None
    max_age: Duration | None = Field(None, alias="maxAge", gt=0, le=MAX_MAX_AGE_S,
                                     description="JetStream deletes messages older than this, processed or not")
    max_bytes: ByteSize | None = Field(None, alias="maxBytes", le=MAX_MAX_BYTES,
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

    def merged(self, override: "Buffers | None") -> "ResolvedBuffers":
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


# ---- sources ---------------------------------------------------------------------------------


class GeneratorSource(Model):
    # bench/throughput.py asks for 10,000,000 a second to mean "as fast as it goes"
    rpu: Annotated[WholeNumber, within(1, 100_000_000, "far more than one generator makes in a second")] = Field(
        5, description="messages per `duration`")
    duration: Annotated[Duration, within_seconds(0.001, HOUR)] = 1.0
    # The generator builds messages 500 at a time; NATS's default max_payload is 1 MiB.
    msg_size: Annotated[WholeNumber, within(0, 1 << 20, "1 MiB, NATS's default max payload")] = Field(
        8, alias="msgSize")
    key_count: Annotated[WholeNumber, within(0, 1_000_000)] = Field(0, alias="keyCount")
    value: Annotated[WholeNumber, within(-INT64_MAX - 1, INT64_MAX, "a 64-bit integer")] | None = None
    total: Annotated[WholeNumber, within(0, INT64_MAX, "a 64-bit integer")] | None = Field(
        None, description="stop after this many messages (natsflow extension)")


class HttpAuth(Model):
    token: Secret


class HttpSource(Model):
    port: Annotated[WholeNumber, within(0, 65535, "a TCP port; 0 picks a free one")] = 8080
    host: str = "0.0.0.0"
    auth: HttpAuth | None = None
    # None: as large as the server's max_payload allows (vertices/sources/http.py: body_limit).
    max_body_size: Annotated[WholeNumber, within(1, 64 << 20, "64 MiB, the largest max_payload a NATS server "
                                                 "accepts")] | None = Field(None, alias="maxBodySize")


class NatsSource(Model):
    url: Secret | None = None
    subject: SubscribeSubject
    queue: QueueGroup | None = None


class DeliverPolicy(str, Enum):
    all = "all"
    new = "new"
    last = "last"


class JetStreamSource(Model):
    url: Secret | None = None
    stream: StreamName = Field(description="an existing stream; of natsflow's nf_* ones only another "
                                           "pipeline's dead letters (reserved_stream_problems)")
    consumer: ConsumerName | None = None
    deliver_policy: DeliverPolicy = Field(DeliverPolicy.all, alias="deliverPolicy")


class KafkaTls(Model):
    ca_file: str | None = Field(None, alias="caFile")
    cert_file: str | None = Field(None, alias="certFile")
    key_file: str | None = Field(None, alias="keyFile")
    insecure_skip_verify: Flag = Field(False, alias="insecureSkipVerify")

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
    prefetch: Annotated[WholeNumber, within(1, 65535, "AMQP's prefetch count is 16 bits")] = 500


class MqttSource(Model):
    url: Secret = "mqtt://127.0.0.1:1883"
    topic: str = Field(min_length=1)
    qos: Annotated[Literal[0, 1, 2], BeforeValidator(_whole_number)] = 1  # true must not pass as 1
    client_id: str | None = Field(None, alias="clientId", description="fixed session id (default from the vertex)")


class RedisStreamsSource(Model):
    url: Secret = "redis://127.0.0.1:6379/0"
    stream: str = Field(min_length=1)
    group: str = Field(min_length=1)
    consumer: str | None = Field(None, description="consumer name (default $NATSFLOW_REPLICA_ID or the hostname)")
    start_id: str = Field("0", alias="startId", description="where a new group starts: 0 = all, $ = new only")
    value_field: str = Field("value", alias="valueField", description="the field holding the payload")
    key_field: str | None = Field("key", alias="keyField", description="a field whose value is the message key")
    claim_idle: Annotated[Duration, within_seconds(0.001, DAY)] = Field(
        60.0, alias="claimIdle", description="take over entries another consumer left unacked this long")


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

    attempts: Annotated[WholeNumber, within(1, 100)] = 3
    interval: RetryDelay = 0.05
    factor: RetryFactor = 2.0
    cap: RetryDelay = 2.0


class BatchMap(Handler):
    max_batch_size: Annotated[WholeNumber, within(1, 10_000, "one handler call gets the whole batch")] = Field(
        64, alias="maxBatchSize")
    max_wait: Annotated[Duration, within_seconds(0, MINUTE, "the first datum of a batch waits this long")] = Field(
        0.05, alias="maxWait")


class FixedWindow(Model):
    length: WindowLength


# Every message is in length/slide sliding windows at once, each its own state and output.
MAX_WINDOWS_PER_MESSAGE = 1000


class SlidingWindow(Model):
    length: WindowLength
    slide: WindowLength

    @model_validator(mode="after")
    def _slide_le_length(self) -> "SlidingWindow":
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
    def _exactly_one(self) -> "WindowSpec":
        _exactly_one_of(self, "window")
        return self

    @property
    def kind(self) -> str:
        return _chosen(self)


class Reduce(Handler):
    window: WindowSpec
    keyed: Flag = True
    allowed_lateness: Annotated[Duration, within_seconds(0, WEEK, WINDOW_WHY)] = Field(0.0, alias="allowedLateness")
    partitions: Annotated[WholeNumber, within(1, 256, "each partition is a buffer stream of its own")] = 1
    lease_ttl: Annotated[Duration, within_seconds(1, 10 * MINUTE, "a dead replica's partitions wait this long",
                                                  low_why="renewals every ttl/4 must get through")] = Field(
        10.0, alias="leaseTtl", description="how long a partition's owner may go silent before another replica "
                                            "takes the partition over (docs/watermarks.md)")


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
    timeout: CallTimeout = Field(300.0, description="longest handler call (a map call, a batchMap chunk, a "
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
    subject: PublishSubject


class JetStreamSink(Model):
    url: Secret | None = None
    stream: StreamName
    subject: PublishSubject

    @field_validator("stream")
    @classmethod
    def _not_natsflows(cls, stream: str) -> str:
        if stream.startswith(RESERVED_STREAM_PREFIX):
            raise ValueError(f"stream names starting with {RESERVED_STREAM_PREFIX!r} are natsflow's buffers, "
                             "dead letters and KV buckets; a sink writing there would bypass them: use another name")
        return stream


class KafkaSink(KafkaConnection):
    set_key: Flag = Field(False, alias="setKey", description="the message's keys, joined by ':', as the record key")


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
    max_len: Annotated[WholeNumber, within(1, INT64_MAX, "a 64-bit integer")] | None = Field(
        None, alias="maxLen", description="trim the stream to about this length")

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
    timeout: Annotated[Duration, within_seconds(0.001, HOUR)] = 10.0
    concurrency: Annotated[WholeNumber, within(1, 1000, "each request in flight holds a connection")] = Field(
        16, description="requests in flight at once")


class Backoff(Model):
    interval: RetryDelay = 0.05
    factor: RetryFactor = 2.0
    cap: RetryDelay = 5.0
    steps: Annotated[WholeNumber, within(0, 1_000_000, "onFailure: retry retries without end anyway")] = Field(
        3, description="retries before onFailure applies (retry: never applies)")
    jitter: Annotated[Number, within(0.0, 1.0)] = Field(
        0.0, description="each delay is scaled by a random 1 ± jitter")


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
    timeout: CallTimeout = Field(300.0, description="longest write call; longer is a failed write under "
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


# A replica of a reading vertex keeps up to 4 pull requests waiting on the vertex's consumer (its
# reader tops up in quarters of 2 batches), and a buffer's consumer serves at most 512 (max_waiting).
MAX_REPLICAS = 128
Replicas = Annotated[WholeNumber, within(0, MAX_REPLICAS, "each replica keeps up to 4 pull requests waiting "
                                         "on the vertex's consumer, which serves at most 512")]


class Scale(Model):
    """Autoscaling on the lag of the vertex's consumer, with KEDA's meaning for every field."""

    min: Replicas = 0
    max: Annotated[Replicas, within(1, MAX_REPLICAS)] = 1
    lag_threshold: Backlog = Field(100, alias="lagThreshold")
    activation_lag_threshold: Annotated[WholeNumber, within(0, BUFFER_MAX, BUFFER_WHY)] = Field(
        0, alias="activationLagThreshold")
    polling_interval: Annotated[Duration, within_seconds(0.1, HOUR)] = Field(15.0, alias="pollingInterval")
    cooldown_period: Annotated[Duration, within_seconds(0, DAY)] = Field(300.0, alias="cooldownPeriod")
    scale_down_stabilization: Annotated[Duration, within_seconds(0, HOUR, "the most a Kubernetes "
                                        "HorizontalPodAutoscaler accepts")] = Field(60.0, alias="scaleDownStabilization")

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
    buffers: Buffers | None = Field(None, description="overrides spec.buffers for this vertex's buffer (none for a "
                                                       "source) and its dead-letter stream")
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
    late: Flag = Field(False, description="from a reduce: this edge receives only late messages")

    def accepts(self, tags: frozenset[str]) -> bool:
        if self.conditions is None or self.conditions.tags is None:
            return True
        return self.conditions.tags.matches(tags)


class Metadata(Model):
    name: Name
    namespace: Name | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class IdleSource(Model):
    threshold: Annotated[Duration, within_seconds(0.001, DAY)]
    increment_by: Annotated[Duration, within_seconds(0.001, DAY)] = Field(alias="incrementBy")


# Sources that stamp event time on arrival unless told otherwise: when they take no input, event
# time passes as the wall clock does, so they follow an idle rule by default (docs/watermarks.md).
LIVE_SOURCES = ("http", "nats", "mqtt", "generator")
DEFAULT_IDLE_SOURCE = IdleSource(threshold=5.0, increment_by=5.0)


class WatermarkConfig(Model):
    max_delay: Annotated[Duration, within_seconds(0, WEEK, WINDOW_WHY)] = Field(0.0, alias="maxDelay")
    idle_source: IdleSource | None = Field(None, alias="idleSource",
                                           description="default for http, nats, mqtt and generator sources: "
                                                       "{threshold: 5s, incrementBy: 5s}; null turns it off")
    publisher_timeout: Annotated[Duration, within_seconds(0.1, HOUR)] = Field(10.0, alias="publisherTimeout")

    def idle_rule(self, source_kind: str) -> IdleSource | None:
        """`idleSource` when the spec sets it (null: none), else the default for live sources."""
        if "idle_source" in self.model_fields_set:
            return self.idle_source
        return DEFAULT_IDLE_SOURCE if source_kind in LIVE_SOURCES else None


class SideInputTrigger(Model):
    schedule: str = Field(description="@every <duration>, @hourly/@daily/..., or a 5-field cron (UTC)")
    timeout: Annotated[Duration, within_seconds(0.001, DAY)] = Field(
        60.0, description="a run taking longer counts as failed; the old value stays")

    @field_validator("schedule")
    @classmethod
    def _parses(cls, value: str) -> str:
        from framework.sideinputs.schedule import parse_schedule  # noqa: PLC0415 - schedule parsing is its own module

        schedule = parse_schedule(value)
        seconds = getattr(schedule, "seconds", None)  # @every
        if seconds is not None and not 0.1 <= seconds <= WEEK:
            raise ValueError(f"@every must be from 100ms to {format_seconds(WEEK)} (for rarer runs use a cron "
                             "expression such as @monthly)")
        return value


class SideInput(Handler):
    """A value computed by `handler()` on `trigger`, stored in KV and read live by vertices."""

    name: Name
    trigger: SideInputTrigger


# Every vertex is a process (a Deployment when rendered) with its own buffer stream and consumer.
MAX_VERTICES = 1000


class PipelineSpec(Model):
    limits: Limits = Field(default_factory=Limits)
    buffers: Buffers = Field(default_factory=Buffers)
    watermark: WatermarkConfig = Field(default_factory=WatermarkConfig)
    side_inputs: list[SideInput] = Field(default_factory=list, alias="sideInputs", max_length=100)
    vertices: list[Vertex] = Field(min_length=2, max_length=MAX_VERTICES)
    edges: list[Edge] = Field(min_length=1, max_length=10 * MAX_VERTICES)


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

    def buffers_for(self, name: str | None) -> ResolvedBuffers:
        """The one place buffer settings are resolved: a vertex's `buffers` over the pipeline's
        (for its buffer streams and dead-letter stream); `None` gives the pipeline-wide settings
        (KV buckets)."""
        return self.spec.buffers.merged(self.vertex(name).buffers if name is not None else None)

    def buffers_field(self, name: str | None, field: str) -> str:
        """The spec path that set `field` (e.g. `replicas`) of `buffers_for(name)`, for errors."""
        for i, v in enumerate(self.spec.vertices):
            if v.name == name and v.buffers is not None and getattr(v.buffers, _snake(field)) is not None:
                return f"spec.vertices[{i}].buffers.{field}"
        return f"spec.buffers.{field}"

    def reading_vertices(self) -> list[Vertex]:
        """Vertices that own an inter-step buffer (every UDF and sink)."""
        return [v for v in self.spec.vertices if v.kind != "source"]


# ---- loading and graph validation ------------------------------------------------------------


class SpecError(ValueError):
    """A pipeline file that cannot run; `problems` holds (field path, reason) pairs."""

    SHOWN = 100  # a file with thousands of errors needs its first ones fixed, not a screenful

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        lines = [f"{file}: {path}: {reason}" if path else f"{file}: {reason}" for path, reason in problems]
        if len(lines) > self.SHOWN:
            lines = lines[:self.SHOWN] + [f"{file}: ... and {len(lines) - self.SHOWN} more problems"]
        super().__init__("\n".join(lines))


def load_pipeline(path: str | Path, *, check_handlers: bool = True, env: Mapping[str, str] | None = None,
                  allow_unset: bool = False) -> Pipeline:
    """Read, validate and return the pipeline in `path`; raise `SpecError` listing every problem.
    `${VAR}` references are replaced from `env` (default: this process's environment); see
    `parse_pipeline` for `allow_unset`."""
    path = Path(path)
    file = str(path)
    try:
        raw = read_yaml_file(path)
    except YamlFileError as exc:
        raise SpecError(file, exc.problems) from None
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
        found = "is empty" if raw is None else f"holds {_shown(raw)}"
        raise SpecError(file, [("", f"the file {found}; it must hold a mapping with apiVersion, kind, metadata "
                                    "and spec")])
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
        if v.source is not None and v.source.mqtt is not None and v.scale.min > 1:
            problems.append((f"spec.vertices[{i}].scale.min", "an mqtt source runs as one replica (replicas "
                             "sharing its client id would disconnect each other); set min: 1"))
    for kind in ("source", "sink"):
        if not any(v.kind == kind for v in vertices):
            problems.append(("spec.vertices", f"a pipeline needs at least one {kind}"))
    return (problems + cycle_problems(p) + kubernetes_name_problems(p) + reserved_stream_problems(p)
            + side_input_problems(p))


def cycle_problems(p: Pipeline) -> list[tuple[str, str]]:
    """A cycle is fine as long as messages can leave it: some sink must be reachable from it.

    Outside cycles every vertex but a sink has an out-edge (else it is an orphan), so only a
    cycle can keep messages inside the pipeline for good."""
    names = [v.name for v in p.spec.vertices]
    known = set(names)
    succ: dict[str, list[str]] = {n: [] for n in names}
    pred: dict[str, list[str]] = {n: [] for n in names}
    for e in p.spec.edges:
        if e.from_ in known and e.to in known:
            succ[e.from_].append(e.to)
            pred[e.to].append(e.from_)
    leaves = [v.name for v in p.spec.vertices if v.kind == "sink"]
    reaches_sink = set(leaves)
    stack = list(leaves)
    while stack:
        for u in pred[stack.pop()]:
            if u not in reaches_sink:
                reaches_sink.add(u)
                stack.append(u)
    trapped = [n for n in names if n not in reaches_sink]
    problems = []
    position = {n: i for i, n in enumerate(names)}
    components = _strong_components(trapped, {n: [m for m in succ[n] if m not in reaches_sink] for n in trapped})
    for members in sorted((sorted(c, key=position.__getitem__) for c in components), key=lambda c: position[c[0]]):
        if len(members) > 1 or members[0] in succ[members[0]]:
            shown = ", ".join(repr(n) for n in members)
            what = f"{shown} feeds only itself" if len(members) == 1 else f"{shown} form a cycle"
            problems.append(("spec.edges", f"{what} with no path to a sink: messages that enter it could never "
                                           "leave the pipeline (add an edge from it to a sink, or break the cycle)"))
    return problems


def _strong_components(nodes: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Kosaraju's algorithm, without recursion (a pipeline may have a thousand vertices)."""
    order: list[str] = []
    seen: set[str] = set()
    for start in nodes:
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(succ[start]))]
        while stack:
            node, rest = stack[-1]
            nxt = next((m for m in rest if m not in seen), None)
            if nxt is None:
                stack.pop()
                order.append(node)
            else:
                seen.add(nxt)
                stack.append((nxt, iter(succ[nxt])))
    pred: dict[str, list[str]] = {n: [] for n in nodes}
    for n in nodes:
        for m in succ[n]:
            pred[m].append(n)
    components: list[list[str]] = []
    assigned: set[str] = set()
    for root in reversed(order):
        if root in assigned:
            continue
        assigned.add(root)
        component, todo = [], [root]
        while todo:
            node = todo.pop()
            component.append(node)
            for m in pred[node]:
                if m not in assigned:
                    assigned.add(m)
                    todo.append(m)
        components.append(component)
    return components


def kubernetes_name_problems(p: Pipeline) -> list[tuple[str, str]]:
    """The names `natsflow render` derives from the pipeline's and the vertices' must fit Kubernetes."""
    from framework.k8s.render import MANAGER_SUFFIX, UPSTREAM_SCALED  # noqa: PLC0415 - render names the objects (and imports us)

    problems = []
    # Pipeline-wide objects are `<pipeline>-<suffix>`; the side-input manager's suffix is the longest.
    longest = K8S_NAME_MAX - 1 - len(MANAGER_SUFFIX)
    if len(p.name) > longest:
        problems.append(("metadata.name", f"must be at most {longest} characters (this one has {len(p.name)}), so "
                         f"that '<name>-{MANAGER_SUFFIX}', the longest Kubernetes object name `natsflow render` "
                         f"makes for a pipeline, fits the {K8S_NAME_MAX} characters of a Kubernetes name"))
    for i, v in enumerate(p.spec.vertices):
        suffix = "-scaler" if v.source is not None and v.source.kind in UPSTREAM_SCALED and v.scale.max > 1 else ""
        rendered = f"{p.name}-{v.name}{suffix}"
        if len(rendered) > K8S_NAME_MAX:
            problems.append((f"spec.vertices[{i}].name", f"the Kubernetes object name {rendered!r} would have "
                             f"{len(rendered)} characters; Kubernetes allows {K8S_NAME_MAX}: shorten the vertex "
                             "or the pipeline name"))
    return problems


def reserved_stream_problems(p: Pipeline) -> list[tuple[str, str]]:
    """A jetstream source must not read natsflow's own streams (sinks: see JetStreamSink)."""
    problems = []
    for i, v in enumerate(p.spec.vertices):
        stream = v.source.jetstream.stream if v.source is not None and v.source.jetstream is not None else None
        if stream is not None and stream.startswith(RESERVED_STREAM_PREFIX):
            if stream.startswith(f"{RESERVED_STREAM_PREFIX}{p.name}_"):
                reason = "is one of this pipeline's own buffers or dead-letter streams: reading it back would loop"
            elif not stream.endswith("_dlq"):
                reason = ("is natsflow's name for a buffer, a work queue that its vertex consumes alone; of "
                          "another pipeline's streams a jetstream source can read its dead letters "
                          "(nf_<pipeline>_<vertex>_dlq)")
            else:
                continue
            problems.append((f"spec.vertices[{i}].source.jetstream.stream", f"{stream!r} {reason}"))
    return problems


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


def _snake(alias: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), alias)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        text = str(part)
        if isinstance(part, int):
            out += f"[{part}]"
        elif not text or any(c.isspace() or not c.isprintable() for c in text) or len(text) > 80:
            out += f"[{text[:80]!r}]"  # a key the user mistyped stays on one line, and short
        else:
            out += ("." if out else "") + text
    return out


def _clean_msg(error: dict[str, Any]) -> str:
    msg = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if error["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; keys are camelCase)"
    return msg
