"""`natsflow pause`, `resume` and `drain`: set the pipeline's desired phase in its lifecycle KV
bucket (framework/runtime/phase.py), and wait until every buffer is empty.

A pause takes effect in every vertex process at once through their KV watch: sources read nothing
more, the other vertices keep reading and empty their buffers. `pause` then waits for that drain
(up to `spec.lifecycle.pauseGracePeriod`, or `--timeout`). The worker processes stay up, idle;
on Kubernetes re-render with `lifecycle.desiredPhase: Paused` to scale them to zero.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from framework.isb import names
from framework.runtime.phase import PAUSED, RUNNING, PhaseState, read_phase, who, write_phase
from framework.spec import Pipeline, load_pipeline
from framework.transport.settings import NatsSettings

EXIT_NOT_DRAINED = 5  # 3 and 4 are the connection exits (framework/transport/settings.py)
DRAIN_TIMEOUT_S = 300.0
# A paused source stops within a KV round trip and one read batch (measured: well under a second):
# buffers empty on every poll for this long mean nothing is on its way any more.
QUIET_S = 1.0

Resolver = Callable[[argparse.Namespace, Pipeline], tuple[NatsSettings, Any]]


async def backlog(js: JetStreamContext, p: Pipeline) -> dict[str, int]:
    """Per reading vertex: messages in its buffer not yet acknowledged (pending + ack pending,
    summed over partitions), what a drain waits to reach 0."""
    out: dict[str, int] = {}
    for v in p.reading_vertices():
        n = 0
        for part in p.partitions(v.name):
            try:
                ci = await js.consumer_info(names.stream_name(p.name, v.name, part),
                                            names.consumer_name(p.name, v.name, part))
            except NotFoundError:
                continue  # not provisioned: holds nothing
            n += (ci.num_pending or 0) + (ci.num_ack_pending or 0)
        out[v.name] = n
    return out


def _line(left: dict[str, int]) -> str:
    busy = ", ".join(f"{v} {n}" for v, n in left.items() if n)
    return f"{sum(left.values())} pending" + (f" ({busy})" if busy else "")


async def drain(js: JetStreamContext, p: Pipeline, timeout: float, interval: float = 0.5,
                out: Callable[[str], None] = print) -> bool:
    """Wait until every buffer is empty on every poll for `QUIET_S`, printing a progress line
    whenever the count changes. False after `timeout` seconds."""
    started = time.monotonic()
    quiet_since: float | None = None
    last = ""
    while True:
        left = await backlog(js, p)
        now = time.monotonic()
        elapsed = now - started
        line = _line(left)
        if line != last:
            out(f"drain {p.name}: {line} after {elapsed:.1f}s")
            last = line
        if any(left.values()):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        if quiet_since is not None and now - quiet_since >= QUIET_S:
            out(f"drained {p.name} in {quiet_since - started:.1f}s")
            return True
        if elapsed >= timeout:
            out(f"not drained after {timeout:g}s: {line}")
            return False
        await asyncio.sleep(interval)


def _state_line(p: Pipeline, state: PhaseState) -> str:
    return f"pipeline {p.name}: {state.phase} (set by {state.by or '?'} at {state.at or '?'})"


async def _session(args: argparse.Namespace, resolve: Resolver, what: str) -> tuple[Pipeline, Any]:
    p = load_pipeline(args.file, check_handlers=False, allow_unset=True)
    settings, _ = resolve(args, p)
    return p, await settings.connect(f"natsflow-{p.name}-{what}")


async def cmd_pause(args: argparse.Namespace, resolve: Resolver) -> int:
    p, nc = await _session(args, resolve, "pause")
    try:
        js = nc.jetstream()
        print(_state_line(p, await write_phase(js, p, PAUSED, who())), flush=True)
        if args.no_wait:
            return 0
        timeout = args.timeout if args.timeout is not None else p.spec.lifecycle.pause_grace_period
        drained = await drain(js, p, timeout, out=lambda s: print(s, flush=True))
    finally:
        await nc.close()
    if not drained:
        print(f"pipeline {p.name} is paused but its buffers are not empty yet; `natsflow drain {args.file}` "
              "waits on", file=sys.stderr)
    return 0 if drained else EXIT_NOT_DRAINED


async def cmd_resume(args: argparse.Namespace, resolve: Resolver) -> int:
    p, nc = await _session(args, resolve, "resume")
    try:
        print(_state_line(p, await write_phase(nc.jetstream(), p, RUNNING, who())))
    finally:
        await nc.close()
    return 0


async def cmd_drain(args: argparse.Namespace, resolve: Resolver) -> int:
    p, nc = await _session(args, resolve, "drain")
    try:
        js = nc.jetstream()
        print(_state_line(p, await read_phase(js, p)), flush=True)
        drained = await drain(js, p, args.timeout, out=lambda s: print(s, flush=True))
    finally:
        await nc.close()
    return 0 if drained else EXIT_NOT_DRAINED


def add_parsers(sub: Any, file_arg: Callable[[argparse.ArgumentParser], None],
                running_flags: Callable[[argparse.ArgumentParser], None], resolve: Resolver) -> None:
    """The three verbs, with the flags of the commands that look at a running pipeline."""
    p = sub.add_parser("pause", help="stop the pipeline's sources reading and wait until its buffers are empty")
    file_arg(p)
    p.add_argument("--no-wait", action="store_true", help="return once the phase is set, without waiting")
    p.add_argument("--timeout", type=float, help="seconds to wait for the drain (default: "
                   "spec.lifecycle.pauseGracePeriod, 30s); exit 5 if not drained by then (still paused)")
    running_flags(p)
    p.set_defaults(func=lambda a: cmd_pause(a, resolve))

    p = sub.add_parser("resume", help="let a paused pipeline's sources read again")
    file_arg(p)
    running_flags(p)
    p.set_defaults(func=lambda a: cmd_resume(a, resolve))

    p = sub.add_parser("drain", help="wait until every buffer of the pipeline is empty, printing progress")
    file_arg(p)
    p.add_argument("--timeout", type=float, default=DRAIN_TIMEOUT_S,
                   help=f"give up (exit 5) after this many seconds (default {DRAIN_TIMEOUT_S:g})")
    running_flags(p)
    p.set_defaults(func=lambda a: cmd_drain(a, resolve))
