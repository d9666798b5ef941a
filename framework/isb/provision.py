"""Provisioning: every buffer stream, its durable consumer, each vertex's dead-letter stream and
the pipeline's KV buckets, created or brought to the spec's limits and `buffers` settings.
The KV buckets belong to their packages (watermark, side inputs, reduce leases, lifecycle phase); this module
only asks each to reconcile its own."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from framework.isb import names, requests
from framework.isb.reconcile import (
    REPLICAS_CURRENT_TIMEOUT_S,
    SpecPaths,
    apply_buffers,
    ensure_stream,
    patiently,
    replicas_current,
    rescaled,
)
from framework.runtime import ownership, phase, ratelimit
from framework.sideinputs import manager as sideinputs
from framework.spec import Pipeline
from framework.watermark import marks

log = logging.getLogger("natsflow.buffer")

DUPLICATE_WINDOW_S = 120.0
DLQ_MAX_MSGS = 1_000_000


def buffer_stream_config(p: Pipeline, vertex: str, partition: int | None = None) -> api.StreamConfig:
    """The buffer stream of a vertex (one partition of it): a work queue that refuses new messages when full."""
    limits = p.limits_for(vertex)
    return apply_buffers(api.StreamConfig(
        name=names.stream_name(p.name, vertex, partition),
        subjects=[names.buffer_subjects(p.name, vertex, partition)],
        retention=api.RetentionPolicy.WORK_QUEUE,
        discard=api.DiscardPolicy.NEW,
        max_msgs=limits.buffer_max_length,
        duplicate_window=DUPLICATE_WINDOW_S,
        description=f"natsflow buffer of vertex {vertex} in pipeline {p.name}",
    ), p.buffers_for(vertex))


def buffer_consumer_config(p: Pipeline, vertex: str, partition: int | None = None) -> api.ConsumerConfig:
    """The durable consumer all replicas of a vertex read its buffer (partition) through."""
    limits = p.limits_for(vertex)
    replicas = max(1, p.vertex(vertex).scale.max)
    v = p.vertex(vertex)
    # A reduce holds every input of its open windows unacked until they are emitted.
    held = limits.buffer_max_length if v.udf is not None and v.udf.windowing is not None else 0
    return api.ConsumerConfig(
        durable_name=names.consumer_name(p.name, vertex, partition),
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=limits.ack_wait,
        max_ack_pending=max(1000, 4 * limits.read_batch_size * replicas, held),
        max_waiting=512,
        description=f"natsflow reader of vertex {vertex}",
    )


def dlq_stream_config(p: Pipeline, vertex: str) -> api.StreamConfig:
    """The dead-letter stream of a vertex: kept by limits, the oldest dropped first."""
    return apply_buffers(api.StreamConfig(
        name=names.dlq_stream_name(p.name, vertex),
        subjects=[names.dlq_subject(p.name, vertex)],
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_msgs=DLQ_MAX_MSGS,
        duplicate_window=DUPLICATE_WINDOW_S,
        description=f"natsflow dead letters of vertex {vertex} in pipeline {p.name}",
    ), p.buffers_for(vertex))


def archive_stream_config(p: Pipeline, vertex: str) -> api.StreamConfig:
    """The archive of a source with `archive:`: limits retention by its maxAge/maxBytes, the oldest
    dropped first, so it never refuses the source (replicas and storage as its dead-letter stream)."""
    source = p.vertex(vertex).source
    assert source is not None and source.archive is not None
    return dataclasses.replace(apply_buffers(api.StreamConfig(
        name=names.archive_stream_name(p.name, vertex),
        subjects=[names.archive_subject(p.name, vertex)],
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        description=f"natsflow archive of source {vertex} in pipeline {p.name}",
    ), p.buffers_for(vertex), limits=False), max_age=source.archive.max_age,
        max_bytes=source.archive.max_bytes or -1, max_msgs=-1)


def archived_sources(p: Pipeline) -> list[str]:
    """The source vertices whose intake is archived (`source.archive`)."""
    return [v.name for v in p.spec.vertices if v.source is not None and v.source.archive is not None]


def spec_paths(p: Pipeline, vertex: str | None) -> SpecPaths:
    """Which spec fields set the replicas and storage of a vertex's streams (None: the buckets')."""
    return SpecPaths(p.buffers_field(vertex, "replicas"), p.buffers_field(vertex, "storage"))


async def ensure_consumer(js: JetStreamContext, stream: str, config: api.ConsumerConfig) -> str:
    """Create the consumer, or bring its editable fields to `config`: 'created', 'unchanged' or 'updated'."""
    what = f"consumer {stream}/{config.durable_name}"
    try:
        info = await patiently(js.consumer_info, stream, config.durable_name, what=what)
    except NotFoundError:
        await patiently(js.add_consumer, stream, config, what=what)
        return "created"
    current = info.config
    fields = ("ack_wait", "max_ack_pending", "description")
    if all(getattr(current, f) == getattr(config, f) for f in fields):
        return "unchanged"
    # CONSUMER.CREATE with the same name updates the editable fields
    await patiently(js.add_consumer, stream, config, what=what)
    return "updated"


async def provision(js: JetStreamContext, p: Pipeline,
                    progress: Callable[[str, str], None] | None = None) -> list[tuple[str, str]]:
    """Create or update every buffer, consumer, dead-letter stream (one per vertex) and KV bucket
    with the spec's limits and `buffers` settings; idempotent. `progress` is called with (what,
    result) as each one is done (the CLI prints it). Raises `ProvisionError` for settings the
    servers refuse."""
    done: list[tuple[str, str]] = []
    moved: list[str] = []  # JetStream streams whose replicas changed

    def record(what: str, result: str, stream: str | None = None) -> None:
        done.append((what, result))
        if stream is not None and rescaled(result):
            moved.append(stream)
        if progress is not None:
            progress(what, result)

    for v in p.buffered_vertices():  # none between fused vertices
        paths = spec_paths(p, v.name)
        for part in p.partitions(v.name):
            stream = names.stream_name(p.name, v.name, part)
            record(f"stream {stream}", await ensure_stream(js, buffer_stream_config(p, v.name, part), paths), stream)
            ccfg = buffer_consumer_config(p, v.name, part)
            record(f"consumer {stream}/{ccfg.durable_name}", await ensure_consumer(js, stream, ccfg))
    for v in p.spec.vertices:  # sources too: records they cannot store are dead-lettered
        dcfg = dlq_stream_config(p, v.name)
        record(f"stream {dcfg.name}", await ensure_stream(js, dcfg, spec_paths(p, v.name)), dcfg.name)
    for vertex in archived_sources(p):
        acfg = archive_stream_config(p, vertex)
        record(f"stream {acfg.name}", await ensure_stream(js, acfg, spec_paths(p, vertex)), acfg.name)
    shared = p.buffers_for(None)  # KV buckets: the pipeline-wide replicas and storage
    buckets = [(names.watermark_bucket(p.name), marks.provision_bucket),
               (names.lifecycle_bucket(p.name), phase.provision_bucket)]
    if p.spec.ordered or any(v.udf is not None and v.udf.windowing is not None for v in p.spec.vertices):
        buckets.append((names.leases_bucket(p.name), ownership.provision_bucket))
    if ratelimit.limited(p):
        buckets.append((names.ratelimit_bucket(p.name), ratelimit.provision_bucket))
    if p.spec.side_inputs:
        buckets.append((names.sideinputs_bucket(p.name), sideinputs.provision_bucket))
    if requests.serving_pipeline(p):  # results by request id, kept bucket_ttl seconds
        buckets.append((names.requests_bucket(p.name),
                        functools.partial(requests.provision_bucket, ttl=requests.bucket_ttl(p))))
    for bucket, ensure in buckets:
        record(f"kv {bucket}", await ensure(js, p.name, shared, update=True), names.kv_stream_name(bucket))
    if "desired_phase" in p.spec.lifecycle.model_fields_set:  # the spec's phase wins over an earlier pause/resume
        state = await phase.read_phase(js, p)
        wanted = p.spec.lifecycle.desired_phase
        if state.phase != wanted or state.by != "spec":
            await phase.write_phase(js, p, wanted, "spec")
            record(f"phase {names.lifecycle_bucket(p.name)}", f"updated ({state.phase} -> {wanted})")
    for stream in await replicas_current(js, moved):
        log.warning("stream %s: new replicas not current after %.0fs; it may refuse writes until they are",
                    stream, REPLICAS_CURRENT_TIMEOUT_S)
        if progress is not None:
            progress(f"stream {stream}", f"replicas not current after {REPLICAS_CURRENT_TIMEOUT_S:g}s")
    return done
