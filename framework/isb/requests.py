"""Serving requests (docs/serving.md): the request id a `serving` source gives a message, how it
travels, and the ledger in the `nf_<pipeline>_requests` KV bucket that says when a request is done.

A request's message carries two headers, passed on by every map like any user header:
  Nf-Request-Id     the request id (letters, digits, `-`, `_`)
  Nf-Request-Part   which part of the request this message is: `0` for the source's message;
                    the j-th output of a part `p` that a UDF split into k > 1 outputs is `p.j`

Ledger keys (all under `<id>.`, so one KV watch follows one request):
  <id>.q            the request was accepted (lets any replica answer `fetch` for it)
  <id>.r.<part>     a result: a serve sink wrote this part (the value is the payload)
  <id>.s.<part>     a split: a UDF turned this part into k messages (`k` as text; 0 = dropped)
  <id>.e.<part>     an error: this part was dead-lettered (JSON {"error", "vertex"})

A part is closed when it has a result or an error, or a split whose k children are all closed;
the request is complete when part `0` is closed. A map that gives exactly one output keeps the
part and writes nothing (the common path costs no KV write). Every key is derived from the
message, so a redelivered message rewrites the same keys: counts never drift.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from framework.isb import names
from framework.isb.envelope import HDR_REQUEST_ID, HDR_REQUEST_PART

if TYPE_CHECKING:
    from framework.spec import Pipeline, ResolvedBuffers

ROOT = "0"
SERVING_SOURCE = "serving"  # the source kind whose pipelines get the requests bucket
MIN_TTL_S = 300.0  # results stay fetchable at least this long
MAX_RESULTS = 10_000  # result values one answer holds; later ones only count (`truncated`)
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PART = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6}){0,31}")


def serving_pipeline(p: Pipeline) -> bool:
    """Whether `p` has a serving source (then it gets the requests bucket)."""
    return any(v.source is not None and v.source.kind == SERVING_SOURCE for v in p.spec.vertices)


def bucket_ttl(p: Pipeline) -> float:
    """How long a request's keys live: twice the longest requestTimeout, at least MIN_TTL_S."""
    timeouts = [float(getattr(v.source.config, "request_timeout", 0.0)) for v in p.spec.vertices
                if v.source is not None and v.source.kind == SERVING_SOURCE]
    return max([MIN_TTL_S] + [2 * t for t in timeouts])


def valid_id(rid: str) -> bool:
    return _ID.fullmatch(rid) is not None


def request_headers(rid: str) -> dict[str, str]:
    """The headers a serving source puts on a request's message."""
    return {HDR_REQUEST_ID: rid, HDR_REQUEST_PART: ROOT}


def request_of(headers: Mapping[str, str] | None) -> tuple[str, str] | None:
    """(request id, part) of a message, None when it belongs to no (well-formed) request."""
    if not headers:
        return None
    rid, part = headers.get(HDR_REQUEST_ID), headers.get(HDR_REQUEST_PART)
    if rid is None or part is None or not valid_id(rid) or _PART.fullmatch(part) is None:
        return None
    return rid, part


def with_part(headers: Mapping[str, str] | None, part: str) -> dict[str, str]:
    return {**(headers or {}), HDR_REQUEST_PART: part}


def accepted_key(rid: str) -> str:
    return f"{rid}.q"


def watch_keys(rid: str) -> str:
    return f"{rid}.>"


def part_order(part: str) -> tuple[int, ...]:
    return tuple(int(x) for x in part.split("."))


@dataclass
class RequestState:
    """What the ledger holds about one request, built from its keys as a watch delivers them."""

    accepted: bool = False
    results: dict[str, bytes] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    truncated: set[str] = field(default_factory=set)  # result parts over MAX_RESULTS: closed, value not kept

    def apply(self, key: str, value: bytes | None) -> str | None:
        """Take one KV entry; returns the part when it was a result."""
        tokens = key.split(".")
        if len(tokens) == 2 and tokens[1] == "q":
            self.accepted = True
            return None
        if len(tokens) < 3 or value is None:
            return None
        kind, part = tokens[1], ".".join(tokens[2:])
        if kind == "r":
            if len(self.results) >= MAX_RESULTS and part not in self.results:
                self.truncated.add(part)  # the answer stays bounded however much a request fans out
                return None
            self.results[part] = value
            return part
        if kind == "s":
            self.splits[part] = int(value or b"0")
        elif kind == "e":
            try:
                self.errors[part] = json.loads(value)
            except ValueError:
                self.errors[part] = {"error": value.decode(errors="replace"), "vertex": ""}
        return None

    def closed(self, part: str = ROOT) -> bool:
        if part in self.results or part in self.errors or part in self.truncated:
            return True
        k = self.splits.get(part)
        return k is not None and all(self.closed(f"{part}.{j}") for j in range(k))

    @property
    def complete(self) -> bool:
        return self.closed(ROOT)

    def ordered_results(self) -> list[bytes]:
        """Results in the order the pipeline produced them per split (a stream's tokens in order)."""
        return [self.results[p] for p in sorted(self.results, key=part_order)]

    def error(self) -> dict[str, str] | None:
        return self.errors[min(self.errors, key=part_order)] if self.errors else None


class RequestLedger:
    """What vertices write about requests: splits and drops (UDFs), errors (dead letters),
    results (the serve sink). A message of no request costs one dict lookup; the bucket is opened
    on the first write, so pipelines without a serving source never touch it."""

    def __init__(self, js: JetStreamContext, pipeline: str):
        self._js = js
        self._bucket = names.requests_bucket(pipeline)
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._bucket)
        return self._kv

    async def _put_all(self, items: Iterable[tuple[str, bytes]]) -> None:
        todo = list(items)
        if not todo:
            return
        kv = await self.kv()
        await asyncio.gather(*(kv.put(k, v) for k, v in todo))

    async def splits(self, items: Iterable[tuple[Mapping[str, str] | None, int]]) -> None:
        """For each input of a request that became k != 1 outputs: its split record (k = 0: dropped)."""
        todo = []
        for headers, k in items:
            req = request_of(headers)
            if req is not None:
                todo.append((f"{req[0]}.s.{req[1]}", str(k).encode()))
        await self._put_all(todo)

    async def errors(self, items: Iterable[tuple[Mapping[str, str] | None, str]], vertex: str) -> None:
        """For each dead-lettered message of a request: its error record."""
        todo = []
        for headers, error in items:
            req = request_of(headers)
            if req is not None:
                doc = {"error": error, "vertex": vertex}
                todo.append((f"{req[0]}.e.{req[1]}", json.dumps(doc).encode()))
        await self._put_all(todo)

    async def results(self, items: Iterable[tuple[Mapping[str, str] | None, bytes]]) -> int:
        """Each message of a request as a result; returns how many belonged to no request."""
        todo, strays = [], 0
        for headers, value in items:
            req = request_of(headers)
            if req is None:
                strays += 1
            else:
                todo.append((f"{req[0]}.r.{req[1]}", value))
        await self._put_all(todo)
        return strays


def split_parts(headers: Mapping[str, str] | None, k: int) -> list[dict[str, str]] | None:
    """The headers of the k outputs of a request's input when k > 1 (each its own part), else None."""
    req = request_of(headers)
    if req is None or k == 1:
        return None
    return [with_part(headers, f"{req[1]}.{j}") for j in range(k)]


async def provision_bucket(js: JetStreamContext, pipeline: str, buffers: ResolvedBuffers, ttl: float,
                           update: bool = False) -> str:
    """Create the requests bucket (keys expire after `ttl` seconds) if it is missing."""
    bucket = names.requests_bucket(pipeline)
    try:
        info = await js.stream_info(names.kv_stream_name(bucket))
    except NotFoundError:
        config = api.KeyValueConfig(bucket=bucket, history=1, ttl=ttl, replicas=buffers.replicas,
                                    storage=api.StorageType(buffers.storage.value),
                                    description=f"natsflow serving requests of pipeline {pipeline}")
        await js.create_key_value(config)
        return "created"
    if update and info.config.max_age != ttl:
        await js.update_stream(_with_age(info.config, ttl))
        return f"updated (ttl {info.config.max_age} -> {ttl:g}s)"
    return "unchanged"


def _with_age(config: api.StreamConfig, ttl: float) -> Any:
    config.max_age = ttl
    return config
