"""Bring a JetStream stream or KV bucket to the settings the pipeline asks for, saying what changed.

`provision` calls `ensure_stream` for every buffer and dead-letter stream and `ensure_kv_bucket`
for the buckets. What JetStream can change in place (replicas up or down, limits) is changed and
reported as `updated (replicas 1 -> 3)`, never silently; what it cannot (storage) stops with a
`ProvisionError` naming the spec field and what to do, as does a replica count the servers
cannot place. After a replicas change, `replicas_current` waits (bounded) for the new peer set,
so that a finished provision means the streams survive the loss of a node."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from framework.isb import names
from framework.spec import ResolvedBuffers

REPLICAS_CURRENT_TIMEOUT_S = 30.0
# nats-server err_codes a replicas request can meet (2.15): the server is standalone, or the
# cluster has fewer (reachable) servers than replicas.
ERR_NOT_CLUSTERED = 10074  # "replicas > 1 not supported in non-clustered mode"
ERR_NO_PEERS = 10005  # "no suitable peers for placement"
ERR_INSUFFICIENT_RESOURCES = 10023  # "insufficient resources"

# Fields provision owns; anything else on a stream (set by hand) is left as it is.
COMPARED = {"num_replicas": "replicas", "max_msgs": "max_msgs", "max_bytes": "max_bytes", "max_age": "max_age",
            "subjects": "subjects", "duplicate_window": "duplicate_window", "discard": "discard",
            "description": "description"}


ANSWER_TIMEOUT_S = 30.0  # how long provision waits out a cluster that answers nothing (electing leaders)


class ProvisionError(Exception):
    """A setting the servers cannot apply; the message names the spec field (or the object) and
    what to do, on one line."""


class SpecPaths(NamedTuple):
    """The spec fields a stream's replicas and storage came from, for error messages."""

    replicas: str = "spec.buffers.replicas"
    storage: str = "spec.buffers.storage"


def apply_buffers(config: api.StreamConfig, buffers: ResolvedBuffers, limits: bool = True) -> api.StreamConfig:
    """`config` with the pipeline's replicas and storage, and (`limits`) its maxAge/maxBytes."""
    extra: dict[str, Any] = {"num_replicas": buffers.replicas, "storage": api.StorageType(buffers.storage.value)}
    if limits:
        extra["max_age"] = buffers.max_age or 0.0  # 0 = no age limit
        extra["max_bytes"] = buffers.max_bytes or -1  # -1 = no byte limit
    return dataclasses.replace(config, **extra)


async def patiently(call: Callable[..., Awaitable[Any]], *args: Any, what: str,
                    timeout: float = ANSWER_TIMEOUT_S) -> Any:
    """`call(*args)`, asked again while JetStream answers nothing or "temporarily unavailable": a
    cluster that was just (re)started or lost a server elects its stream and consumer leaders for
    a few seconds. Every call retried here is idempotent (an info, or a create/update with the
    same config)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await call(*args)
        except (NatsTimeoutError, ServiceUnavailableError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise ProvisionError(f"{what}: no answer from JetStream within {timeout:g}s ({type(exc).__name__}); "
                                     "is every server up and has the cluster a leader?") from None
            await asyncio.sleep(0.5)


async def ensure_stream(js: JetStreamContext, config: api.StreamConfig, paths: SpecPaths = SpecPaths()) -> str:
    """Create the stream, or bring it to `config`: 'created', 'unchanged' or 'updated (<what>)'."""
    try:
        info = await patiently(js.stream_info, config.name, what=f"stream {config.name}")
    except NotFoundError:
        await _api(js.add_stream, config, paths)
        return "created"
    return await _reconcile(js, info, config, paths, remove=f"nats stream rm {config.name}")


async def ensure_kv_bucket(js: JetStreamContext, bucket: str, description: str, buffers: ResolvedBuffers,
                           update: bool = False) -> str:
    """Create a one-value-per-key KV bucket with `buffers`' replicas and storage if it is missing;
    with `update` (provision) also bring an existing one to them. Workers only create: they must
    not undo what the last provision did."""
    stream = names.kv_stream_name(bucket)
    try:
        info = await patiently(js.stream_info, stream, what=f"kv {bucket}")
    except NotFoundError:
        config = api.KeyValueConfig(bucket=bucket, history=1, description=description, replicas=buffers.replicas,
                                    storage=api.StorageType(buffers.storage.value))
        await _api(js.create_key_value, config, SpecPaths(), name=stream, replicas=buffers.replicas)
        return "created"
    if not update:
        return "unchanged"
    desired = apply_buffers(info.config, buffers, limits=False)  # a side-input value must never expire
    return await _reconcile(js, info, desired, SpecPaths(), remove=f"nats kv rm {bucket}")


async def _reconcile(js: JetStreamContext, info: api.StreamInfo, desired: api.StreamConfig, paths: SpecPaths,
                     remove: str) -> str:
    current = info.config
    if current.storage != desired.storage:
        have, want = _value(current.storage), _value(desired.storage)
        raise ProvisionError(
            f"{paths.storage}: stream {current.name} is stored in {have} on the server and JetStream cannot change "
            f"a stream's storage in place; to move it to {want}, drain the pipeline (stop its sources and wait until "
            f"`natsflow status` shows nothing pending), delete the stream (`{remove}`) and provision again, "
            f"or set storage back to {have}")
    changes = [f"{label} {_show(f, getattr(current, f))} -> {_show(f, getattr(desired, f))}"
               for f, label in COMPARED.items() if _differs(f, getattr(current, f), getattr(desired, f))]
    if not changes:
        return "unchanged"
    await _api(js.update_stream, desired, paths)
    return f"updated ({', '.join(changes)})"


def rescaled(result: str) -> bool:
    """Whether an `ensure_*` result changed the replicas (the caller then waits for them)."""
    return result.startswith("updated (") and ("(replicas " in result or ", replicas " in result)


async def replicas_current(js: JetStreamContext, streams: list[str],
                           timeout: float = REPLICAS_CURRENT_TIMEOUT_S) -> list[str]:
    """Wait (all together, at most `timeout`) until each stream and its durable consumers have
    their configured number of peers, all current: a rescaled stream is not yet safe until then
    (and refuses writes for a moment while it moves). Returns the streams that did not get there."""
    async def one(stream: str) -> None:
        while not await _current(js, stream):  # noqa: ASYNC110 - polls the servers, no local event
            await asyncio.sleep(0.2)

    tasks = {stream: asyncio.create_task(one(stream)) for stream in streams}
    if tasks:
        await asyncio.wait(tasks.values(), timeout=timeout)
    late = [stream for stream, task in tasks.items() if not task.done() or task.exception() is not None]
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    return late


async def _current(js: JetStreamContext, stream: str) -> bool:
    try:
        info = await js.stream_info(stream)
        consumers = [c for c in await js.consumers_info(stream) if c.config.durable_name]
    except (TimeoutError, APIError, NatsError):  # a leader moving: ask again
        return False
    want = info.config.num_replicas or 1
    return _all_current(info.cluster, want) and all(_all_current(c.cluster, c.config.num_replicas or want)
                                                    for c in consumers)


def _all_current(cluster: api.ClusterInfo | None, replicas: int) -> bool:
    """A leader and exactly `replicas - 1` current followers (scaling down also takes a moment)."""
    peers = (cluster.replicas or []) if cluster is not None else []
    return bool(cluster and cluster.leader) and len(peers) == replicas - 1 and all(
        p.current and not p.offline for p in peers)


async def _api(call: Callable[..., Awaitable[Any]], config: Any, paths: SpecPaths, name: str | None = None,
               replicas: int | None = None) -> Any:
    """Run a stream create/update; turn the server's refusal into one clear line."""
    name = name or config.name
    replicas = replicas if replicas is not None else config.num_replicas
    try:
        return await patiently(call, config, what=f"stream {name}")
    except APIError as exc:
        raise ProvisionError(_explain(exc, name, replicas, paths)) from None


def _explain(exc: APIError, stream: str, replicas: int, paths: SpecPaths) -> str:
    said = f"nats-server: {exc.description} (err_code {exc.err_code})"
    if exc.err_code == ERR_NOT_CLUSTERED:
        return (f"{paths.replicas}: {replicas} replicas need a JetStream cluster of at least {replicas} servers, "
                f"but the server is not in a cluster ({said}); set replicas: 1 or connect to a cluster")
    if exc.err_code in (ERR_NO_PEERS, ERR_INSUFFICIENT_RESOURCES) and replicas > 1:
        return (f"{paths.replicas}: {replicas} replicas need {replicas} JetStream servers up in the cluster and "
                f"the cluster cannot place them for stream {stream} ({said}); lower replicas or start the missing "
                "servers")
    return f"stream {stream}: {said}"


def _value(x: Any) -> Any:
    return x.value if hasattr(x, "value") else x


def _differs(field: str, a: Any, b: Any) -> bool:
    if field == "max_age":
        return (a or 0.0) != (b or 0.0)
    if field in ("max_bytes", "max_msgs"):
        return (a if a is not None else -1) != (b if b is not None else -1)
    if field == "num_replicas":
        return (a or 1) != (b or 1)
    return bool(_value(a) != _value(b))


def _show(field: str, x: Any) -> str:
    if field == "max_age":
        return f"{x:g}s" if x else "unlimited"
    if field in ("max_bytes", "max_msgs"):
        return "unlimited" if x is None or x < 0 else str(x)
    if field == "num_replicas":
        return str(x or 1)
    return str(_value(x))
