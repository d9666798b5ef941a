"""natsflow's datum and message ↔ the SDKs' protobuf fields: keys, value, event time, watermark,
headers, tags and DROP."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from framework.sdk import Message, datetime_from_ms

# What the SDKs put in a result's tags to drop it (pynumaflow DROP, numaflow-go MessageToDrop).
SDK_DROP = "U+005C__DROP__"


def timestamp(epoch_ms: int | None) -> Timestamp:
    """A protobuf Timestamp; an unknown time (None or negative, natsflow's -1) is the epoch."""
    ts = Timestamp()
    if epoch_ms is not None and epoch_ms > 0:
        ts.FromMilliseconds(epoch_ms)
    return ts


def epoch_ms(ts: Timestamp) -> int:
    return int(ts.ToMilliseconds())


def to_message(keys: Iterable[str], value: bytes, tags: Iterable[str], event_time_ms: int | None = None) -> Message:
    """A natsflow Message for an SDK result; the SDK's DROP tag becomes natsflow's drop. Keys are
    the result's own (an SDK message without keys has none, as in Numaflow)."""
    tag_list = list(tags)
    if SDK_DROP in tag_list:
        return Message.drop()
    event_time = None
    if event_time_ms is not None:
        event_time = datetime_from_ms(event_time_ms)
    return Message(value=value, keys=list(keys), tags=tag_list or None, event_time=event_time)
