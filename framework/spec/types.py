"""The value types of a pipeline file: whole numbers, finite numbers, flags and durations (each
with its bounds in the message), names and subjects NATS accepts, credentials, and the base model
every spec model (and every connector's config) derives from.

Connector packages build their config models from these, so a connector's fields read and fail
the way the rest of the file does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from framework.spec.names import (
    jetstream_name_problem,
    queue_group_problem,
    reserved_subject_problem,
    subject_problem,
)

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_IDENT = r"[^\W\d]\w*"
_HANDLER_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")

INT64_MAX = 2**63 - 1
MINUTE, HOUR, DAY, WEEK = 60.0, 3600.0, 86400.0, 7 * 86400.0
K8S_NAME_MAX = 63  # a Kubernetes object name natsflow renders is a DNS label (RFC 1123)


# ---- numbers: whole numbers, finite numbers and durations, each with bounds in its message -----


def shown(value: Any) -> str:
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


def whole_number(value: Any) -> int:
    """A count: an int, a float without a fraction (1.0e+3) or digits as text; never a bool."""
    if isinstance(value, str) and _INTEGER_TEXT.match(value):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got {shown(value)}{_exponent_hint(value)}")
    return value


def _exponent_hint(value: Any) -> str:
    if isinstance(value, str) and _DECIMAL_TEXT.match(value) and "e" in value.lower():
        return " (YAML reads a number like 1e9 as text: write 1000000000 or 1.0e+9)"
    return ""


def _finite_number(value: Any) -> float:
    if isinstance(value, str) and _DECIMAL_TEXT.match(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {shown(value)}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    return float(value)


def _flag(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"  # the text of a `${VAR}` reference
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {shown(value)}")
    return value


def parse_duration(value: Any) -> float:
    """Seconds from a duration written `100ms`, `2s`, `5m`, `1h` or as a number of seconds;
    ValueError (its text says why) for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration such as 500ms, 2s or 1m, got {shown(value)}")
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


WholeNumber = Annotated[int, BeforeValidator(whole_number)]
Number = Annotated[float, BeforeValidator(_finite_number)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
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


def camel(name: str) -> str:
    """The spec key of a field: `read_batch_size` -> `readBatchSize`, `from_` -> `from`."""
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


class Model(BaseModel):
    """Base for every spec model and connector config: camelCase keys (from the snake_case field
    names), unknown keys rejected (typos must not pass), frozen."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, alias_generator=camel)


_SECRET_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_SECRET_SHAPE = "a string or {secretRef: {name: <Secret name>, key: <key in it>}}"


class SecretRef(Model):
    """A credential kept in a Kubernetes Secret instead of the pipeline file. Rendered pods get it
    as the environment variable `framework.spec.secrets.env_name(ref)`; `natsflow run` reads the same."""

    name: str
    key: str


def _text_or_secret(value: Any) -> str | SecretRef:
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
        found = ", ".join(map(str, ref)) or "none"
        raise ValueError(f"secretRef takes exactly name and key, both strings (got {found})")
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
    def _shape(self) -> Handler:
        handler_shape(self.handler)
        return self


def handler_shape(ref: str) -> str:
    """`ref` if it names a Python callable as 'package.module:function', else a ValueError saying so."""
    if not _HANDLER_RE.match(ref):
        raise ValueError(f"handler {ref[:80]!r} must look like 'package.module:function' "
                         "(Python names separated by dots, one colon)")
    return ref


def exactly_one_of(model: BaseModel, what: str, fields: tuple[str, ...] | None = None) -> None:
    fields = fields or tuple(type(model).model_fields)
    chosen = [f for f in fields if getattr(model, f) is not None]
    if len(chosen) != 1:
        options = ", ".join(fields)
        raise ValueError(f"a {what} must set exactly one of: {options} (found {len(chosen)})")


def chosen(model: BaseModel, fields: tuple[str, ...] | None = None) -> str:
    fields = fields or tuple(type(model).model_fields)
    return next(f for f in fields if getattr(model, f) is not None)
