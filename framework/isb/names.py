"""Every name natsflow gives a JetStream object: streams, consumers, subjects, KV buckets.

Names (documented in docs/protocol.md):
  stream and durable consumer  nf_<pipeline>_<vertex>          (a reduce partition i: ..._p<i>)
  subjects                     nf.<pipeline>.<vertex>.<from-vertex>
  dead-letter stream           nf_<pipeline>_<vertex>_dlq      (subject nfdlq.<pipeline>.<vertex>)
  source archive stream        nf_<pipeline>_<vertex>_archive  (subject nfarchive.<pipeline>.<vertex>)
  KV buckets                   nf_<pipeline>_wm, nf_<pipeline>_sideinputs, nf_<pipeline>_leases,
                               nf_<pipeline>_lifecycle (key `phase`), nf_<pipeline>_ratelimit,
                               nf_<pipeline>_requests (serving: results by request id),
                               nf_<pipeline>_replays (`natsflow replay` progress by replay id)
  jetstream source consumer    nf_<pipeline>_<vertex>_src      (unless the spec names one)

`_` cannot appear in vertex names, so no two vertices can produce the same stream name. Nothing
else in natsflow builds one of these names: it asks this module.
"""

from __future__ import annotations

# What no user subject or stream may use (spec validation refuses them): every subject and name below.
RESERVED_SUBJECTS = ("nf.>", "nfdlq.>", "nfarchive.>")
RESERVED_PREFIX = "nf_"


def _part(partition: int | None) -> str:
    return "" if partition is None else f"_p{partition}"


def stream_name(pipeline: str, vertex: str, partition: int | None = None) -> str:
    """A vertex's buffer; a partitioned (keyed reduce) vertex has one per partition: nf_<p>_<v>_p<i>."""
    return f"nf_{pipeline}_{vertex}{_part(partition)}"


def consumer_name(pipeline: str, vertex: str, partition: int | None = None) -> str:
    """The durable consumer all replicas of a vertex read its buffer through (named like the stream)."""
    return stream_name(pipeline, vertex, partition)


def edge_subject(pipeline: str, to_vertex: str, from_vertex: str, partition: int | None = None) -> str:
    """The subject `from_vertex` writes to when it sends to `to_vertex` (its buffer stores it)."""
    return f"nf.{pipeline}.{to_vertex}{_part(partition)}.{from_vertex}"


def buffer_subjects(pipeline: str, vertex: str, partition: int | None = None) -> str:
    """The wildcard a vertex's buffer stream listens on: every in-edge's subject."""
    return f"nf.{pipeline}.{vertex}{_part(partition)}.*"


def dlq_stream_name(pipeline: str, vertex: str) -> str:
    """The dead-letter stream of one vertex."""
    return f"nf_{pipeline}_{vertex}_dlq"


def dlq_subject(pipeline: str, vertex: str) -> str:
    """The one subject of a vertex's dead-letter stream."""
    return f"nfdlq.{pipeline}.{vertex}"


def dlq_msg_id(vertex: str, origin: str) -> str:
    """The `Nats-Msg-Id` of a dead letter: one per input (or source offset) and vertex, so an
    input dead-lettered again after a crash is stored once."""
    return f"dlq:{vertex}:{origin}"


def archive_stream_name(pipeline: str, vertex: str) -> str:
    """The archive of a source vertex with `archive:`: what it took in, kept by age and size."""
    return f"nf_{pipeline}_{vertex}_archive"


def archive_subject(pipeline: str, vertex: str) -> str:
    """The one subject of a source's archive stream."""
    return f"nfarchive.{pipeline}.{vertex}"


def replay_msg_id(replay_id: str, vertex: str, seq: int) -> str:
    """The `Nats-Msg-Id` of a replayed message: one per replay and retained-input sequence, so the
    same replay run again stores nothing twice, while the originals' ids (`<vertex>:<offset>`)
    never collide with it."""
    return f"replay:{replay_id}:{vertex}:{seq}"


def watermark_bucket(pipeline: str) -> str:
    """The KV bucket writers publish their watermarks into."""
    return f"nf_{pipeline}_wm"


def sideinputs_bucket(pipeline: str) -> str:
    """The KV bucket holding the side inputs' current values."""
    return f"nf_{pipeline}_sideinputs"


def leases_bucket(pipeline: str) -> str:
    """The KV bucket of partition leases (a reduce's, and every map's and sink's in ordered mode)."""
    return f"nf_{pipeline}_leases"


def lifecycle_bucket(pipeline: str) -> str:
    """The KV bucket of the pipeline's desired phase (Running or Paused), under `LIFECYCLE_KEY`."""
    return f"nf_{pipeline}_lifecycle"


LIFECYCLE_KEY = "phase"


def ratelimit_bucket(pipeline: str) -> str:
    """The KV bucket of the rate-limited vertices' token windows (one key per vertex)."""
    return f"nf_{pipeline}_ratelimit"


def requests_bucket(pipeline: str) -> str:
    """The KV bucket of a serving pipeline's requests: results, splits and errors by request id."""
    return f"nf_{pipeline}_requests"


def replays_bucket(pipeline: str) -> str:
    """The KV bucket of `natsflow replay`'s progress: per replay id, the next sequence to publish."""
    return f"nf_{pipeline}_replays"


def kv_subjects(bucket: str) -> str:
    """Every key's subject in a KV bucket's stream (a subscription there sees each write)."""
    return f"$KV.{bucket}.>"


def kv_stream_name(bucket: str) -> str:
    """The stream JetStream keeps a KV bucket in."""
    return f"KV_{bucket}"


def source_consumer_name(pipeline: str, vertex: str) -> str:
    """The durable consumer a `jetstream` source reads an existing stream through, unless named."""
    return f"nf_{pipeline}_{vertex}_src"


def pull_subject(stream: str, consumer: str) -> str:
    """Where pull requests for a durable consumer go."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
