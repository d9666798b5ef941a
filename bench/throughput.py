"""Throughput and latency of natsflow against hand-written nats-py, on a private nats-server.

    python bench/throughput.py            # 3 runs × 100k messages of 256 B, then paced latency
    python bench/throughput.py --quick    # small smoke run

Each measurement gets a fresh nats-server (framework.local.embedded.EmbeddedNats, file storage, temp
store dir) and three OS processes: source → map (identity) → sink.

  natsflow  `python -m framework.cli vertex --pipeline FILE --vertex NAME` for gen, map, sink
            (generator with `total: N`, map = benchudf:identity, blackhole sink)
  raw       bench/raw_nats.py: plain nats-py (js.publish with gathered acks, pull consumers
            with fetch(batch), msg.ack()); no natsflow import

Throughput = N / (time the first message reached the map's stream → time the sink's stream has
last_seq == N and messages == 0, i.e. the sink acked all N). The first message is seen by a
one-shot core subscription on the first edge's subject, so interpreter start-up and connect time
are not counted; the figure from the source's process spawn is printed too.

Latency = a paced run (default 500 msg/s for 6 s: 5 messages every 10 ms) whose sink publishes
on a core subject; this process subscribes and records now - event time (natsflow: the
Nf-Event-Time header the generator sets; raw: epoch ms at the start of the payload). Both sources
stamp once per chunk, in whole ms.

Besides events/s the run prints CPU seconds per message of each process (from /proc), which is
less sensitive to other work on the machine than the rate; every measurement first waits (bounded)
for the machine to be quiet. All waits are bounded; children and servers are stopped on any exit.

The last line printed is one JSON object with the natsflow figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version as _dist_version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nats  # noqa: E402
from nats.js import api  # noqa: E402
from nats.js.errors import NotFoundError  # noqa: E402

from framework.isb.names import consumer_name, edge_subject, stream_name  # noqa: E402
from framework.local import process  # noqa: E402
from framework.local.embedded import EmbeddedNats, find_nats_server  # noqa: E402

RAW = Path(__file__).resolve().parent / "raw_nats.py"
PY = sys.executable

UDF_MODULE = '''\
from framework import Message


def identity(keys, datum):
    return Message(datum.value)
'''


class BenchError(RuntimeError):
    pass


# ---- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path


@dataclass
class Procs:
    """Every child process of one measurement; `stop_all` ends them by pid."""

    logdir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> Child:
        log = self.logdir / f"{name}.log"
        fh = open(log, "wb")
        try:
            proc = process.popen(cmd, cwd=REPO, env=env, stdout=fh, die_with_parent=True)
        finally:
            fh.close()
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def check_alive(self, allow_exit: tuple[str, ...] = ()) -> None:
        for c in self.children:
            rc = c.proc.poll()
            if rc is not None and not (c.name in allow_exit and rc == 0):
                raise BenchError(f"{c.name} exited with {rc}:\n{tail(c.log)}")

    def cpu(self, server: EmbeddedNats) -> dict[str, float]:
        """CPU seconds per role (source, map, sink, server) so far."""
        role = {"gen": "source"}
        out = {role.get(r, r): cpu_seconds(c.proc.pid) for c in self.children for r in [c.name.rsplit("-", 1)[1]]}
        out["server"] = cpu_seconds(server.proc.pid)
        out["machine"] = machine_busy_seconds()
        return out

    def stop_all(self, grace: float = 10.0) -> None:
        process.terminate_all([c.proc for c in self.children], grace)
        self.children.clear()


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (Linux /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds a live process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


async def reported_cpu(log: Path, key: str = "cpu_seconds=") -> float | None:
    """CPU seconds a raw source printed (it exits when done, so /proc has nothing by then)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith(key):
            return float(line.split("=", 1)[1])
    return None


def tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in lines[-n:])


# ---- helpers ---------------------------------------------------------------------------------


async def wait_until(cond, timeout: float, what: str, procs: Procs | None = None, interval: float = 0.02,
                     allow_exit: tuple[str, ...] = ()):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = await cond()
        if last:
            return last
        if procs is not None:
            procs.check_alive(allow_exit)
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


async def consumer_waiting(js, stream: str, consumer: str) -> bool:
    try:
        info = await js.consumer_info(stream, consumer)
    except NotFoundError:
        return False
    return (info.num_waiting or 0) > 0


def drained(js, stream: str, n: int):
    """True once the stream got all n messages and its (work-queue) consumer acked them all."""

    async def check():
        st = (await js.stream_info(stream)).state
        return st.last_seq >= n and st.messages == 0

    return check


async def first_message_probe(nc, subject: str, snapshot) -> asyncio.Future:
    """A future resolved with (time.monotonic(), snapshot()) when the first message is published on
    subject; snapshot() takes the CPU counters, so start-up CPU (imports, connect) is left out."""
    fut = asyncio.get_running_loop().create_future()

    async def cb(_msg):
        if not fut.done():
            fut.set_result((time.monotonic(), snapshot()))

    await nc.subscribe(subject, cb=cb, max_msgs=1)
    await nc.flush()
    return fut


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = math.ceil(q / 100 * len(sorted_vals)) - 1  # nearest rank
    return sorted_vals[max(0, min(len(sorted_vals) - 1, k))]


@dataclass
class Server:
    embedded: EmbeddedNats
    nc: object
    js: object
    env: dict[str, str]


@contextlib.asynccontextmanager
async def private_server(root: Path, label: str):
    store = root / f"nats-{label}"
    server = EmbeddedNats(store)
    nc = None
    try:
        server.start()
        nc = await nats.connect(server.url, name="bench", max_reconnect_attempts=0)
        env = {**os.environ, "NATS_URL": server.url, "PYTHONUNBUFFERED": "1"}
        env.pop("NATS_TOKEN", None)
        yield Server(server, nc, nc.jetstream(), env)
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
        server.stop()
        shutil.rmtree(store, ignore_errors=True)


# ---- natsflow --------------------------------------------------------------------------------


def write_pipeline(d: Path, name: str, n: int, size: int, batch: int, buffer_len: int,
                   rpu: int, duration: str, sink: dict, archive: bool = False) -> Path:
    (d / "benchudf.py").write_text(UDF_MODULE)
    source: dict = {"generator": {"rpu": rpu, "duration": duration, "msgSize": size, "total": n}}
    if archive:  # the source also keeps what it took in (docs/replay.md)
        source["archive"] = {"maxAge": "1h"}
    spec = {
        "apiVersion": "natsflow.io/v1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {
            "limits": {"readBatchSize": batch, "bufferMaxLength": buffer_len},
            "vertices": [
                {"name": "gen", "source": source},
                {"name": "map", "udf": {"map": {"handler": "benchudf:identity"}}},
                {"name": "sink", "sink": sink},
            ],
            "edges": [{"from": "gen", "to": "map"}, {"from": "map", "to": "sink"}],
        },
    }
    path = d / f"{name}.yaml"
    path.write_text(json.dumps(spec, indent=2))  # JSON is YAML
    return path


async def natsflow_start(srv: Server, procs: Procs, d: Path, name: str, n: int, args, *, rpu: int,
                         duration: str, sink: dict) -> Path:
    pfile = write_pipeline(d, name, n, args.size, args.batch, args.buffer_max_length, rpu, duration, sink,
                           args.archive)
    prov = subprocess.run([PY, "-m", "framework.cli", "provision", str(pfile)], cwd=REPO, env=srv.env,
                          capture_output=True, text=True, timeout=60)
    if prov.returncode != 0:
        raise BenchError(f"provision failed ({prov.returncode}):\n{prov.stdout}{prov.stderr}")
    for v in ("sink", "map"):
        procs.start(f"{name}-{v}", [PY, "-m", "framework.cli", "vertex", "--pipeline", str(pfile), "--vertex", v],
                    srv.env)
    for v in ("sink", "map"):
        await wait_until(lambda v=v: consumer_waiting(srv.js, stream_name(name, v), consumer_name(name, v)), 30,
                         f"vertex {v} of {name} to pull", procs)
    return pfile


async def natsflow_throughput(root: Path, run: int, args) -> dict:
    name = f"tp{run}"
    d = root / name
    d.mkdir()
    procs = Procs(d)
    async with private_server(root, name) as srv:
        try:
            pfile = await natsflow_start(srv, procs, d, name, args.messages, args, rpu=10_000_000, duration="1s",
                                         sink={"blackhole": {}})
            first = await first_message_probe(srv.nc, edge_subject(name, "map", "gen"),
                                              lambda: procs.cpu(srv.embedded))
            t_spawn = time.monotonic()
            procs.start(f"{name}-gen", [PY, "-m", "framework.cli", "vertex", "--pipeline", str(pfile),
                                        "--vertex", "gen"], srv.env)
            await wait_until(drained(srv.js, stream_name(name, "sink"), args.messages), args.timeout,
                             f"natsflow run {run} to deliver {args.messages} messages", procs)
            t_done = time.monotonic()
            cpu = procs.cpu(srv.embedded)
            ci = await srv.js.consumer_info(stream_name(name, "sink"), consumer_name(name, "sink"))
            if not (ci.num_ack_pending == 0 and ci.num_pending == 0 and ci.delivered.stream_seq == args.messages):
                raise BenchError(f"sink consumer not fully acked: {ci}")
            m = (await srv.js.stream_info(stream_name(name, "map"))).state
            if m.last_seq != args.messages:
                raise BenchError(f"map stream got {m.last_seq} messages, expected {args.messages}")
            t_first, cpu_first = first.result()
        finally:
            procs.stop_all()
    return result(args.messages, t_spawn, t_first, t_done, cpu, cpu_first)


def result(n: int, t_spawn: float, t_first: float, t_done: float, cpu: dict[str, float],
           cpu_first: dict[str, float]) -> dict:
    """Rates, and CPU seconds per role spent between the first message and the end."""
    return {"eps": n / (t_done - t_first), "eps_spawn": n / (t_done - t_spawn), "seconds": t_done - t_first,
            "startup_s": t_first - t_spawn, "cpu": {r: cpu[r] - cpu_first.get(r, 0.0) for r in cpu}}


# ---- raw nats-py -----------------------------------------------------------------------------


async def raw_provision(js, prefix: str, max_ack_pending: int) -> None:
    for hop in ("a", "b"):
        sname = f"{prefix}_{hop}"
        await js.add_stream(api.StreamConfig(name=sname, subjects=[f"{prefix}.{hop}"],
                                             retention=api.RetentionPolicy.WORK_QUEUE,
                                             storage=api.StorageType.FILE))
        await js.add_consumer(sname, api.ConsumerConfig(durable_name=sname, ack_policy=api.AckPolicy.EXPLICIT,
                                                        deliver_policy=api.DeliverPolicy.ALL, ack_wait=30,
                                                        max_ack_pending=max_ack_pending))


async def raw_start(srv: Server, procs: Procs, prefix: str, args, lat_subject: str | None = None) -> None:
    # natsflow's consumers get max(1000, 4 × readBatchSize); give the baseline the same
    await raw_provision(srv.js, prefix, max(1000, 4 * args.batch))
    sink_cmd = [PY, str(RAW), "sink", "--stream", f"{prefix}_b", "--durable", f"{prefix}_b", "--batch",
                str(args.batch)]
    if lat_subject:
        sink_cmd += ["--lat-subject", lat_subject]
    procs.start(f"{prefix}-sink", sink_cmd, srv.env)
    procs.start(f"{prefix}-map", [PY, str(RAW), "map", "--stream", f"{prefix}_a", "--durable", f"{prefix}_a",
                                  "--out-subject", f"{prefix}.b", "--batch", str(args.batch)], srv.env)
    for hop in ("b", "a"):
        s = f"{prefix}_{hop}"
        await wait_until(lambda s=s: consumer_waiting(srv.js, s, s), 30, f"raw {s} reader to pull", procs)


async def raw_throughput(root: Path, run: int, args) -> dict:
    prefix = f"raw{run}"
    d = root / prefix
    d.mkdir()
    procs = Procs(d)
    async with private_server(root, prefix) as srv:
        try:
            await raw_start(srv, procs, prefix, args)
            first = await first_message_probe(srv.nc, f"{prefix}.a", lambda: procs.cpu(srv.embedded))
            t_spawn = time.monotonic()
            source = procs.start(f"{prefix}-source", [PY, str(RAW), "source", "--subject", f"{prefix}.a", "--n",
                                             str(args.messages), "--size", str(args.size), "--inflight",
                                             str(args.inflight)], srv.env)
            await wait_until(drained(srv.js, f"{prefix}_b", args.messages), args.timeout,
                             f"raw run {run} to deliver {args.messages} messages", procs,
                             allow_exit=(f"{prefix}-source",))
            t_done = time.monotonic()
            cpu = procs.cpu(srv.embedded)
            cpu["source"] = await wait_until(lambda: reported_cpu(source.log), 10, "raw source's CPU report")
            # the source has exited: its start-up CPU is what it reported before its first publish
            cpu_start = await reported_cpu(source.log, "cpu_start=")
            ci = await srv.js.consumer_info(f"{prefix}_b", f"{prefix}_b")
            if not (ci.num_ack_pending == 0 and ci.num_pending == 0 and ci.delivered.stream_seq == args.messages):
                raise BenchError(f"raw sink consumer not fully acked: {ci}")
            t_first, cpu_first = first.result()
            cpu_first["source"] = cpu_start
        finally:
            procs.stop_all()
    return result(args.messages, t_spawn, t_first, t_done, cpu, cpu_first)


# ---- latency ---------------------------------------------------------------------------------


class LatencyCollector:
    def __init__(self, stamp) -> None:
        self.stamp = stamp
        self.values: list[float] = []
        self.done = asyncio.Event()
        self.expected = 0
        self.first_ms = self.last_ms = 0.0

    async def cb(self, msg) -> None:
        now_ms = time.time() * 1000
        if not self.values:
            self.first_ms = now_ms
        self.last_ms = now_ms
        self.values.append(now_ms - self.stamp(msg))
        if len(self.values) >= self.expected:
            self.done.set()


def latency_summary(col: LatencyCollector) -> dict:
    s = sorted(col.values)
    span = (col.last_ms - col.first_ms) / 1000
    return {"count": len(s), "p50_ms": percentile(s, 50), "p99_ms": percentile(s, 99), "max_ms": s[-1] if s else None,
            "rate": (len(s) - 1) / span if span > 0 else float("nan")}


async def collect_latency(srv: Server, procs: Procs, subject: str, stamp, n: int, start_source, timeout: float,
                          what: str, allow_exit: tuple[str, ...] = ()) -> dict:
    col = LatencyCollector(stamp)
    col.expected = n
    await srv.nc.subscribe(subject, cb=col.cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await srv.nc.flush()
    start_source()

    async def got_all():
        return col.done.is_set()

    await wait_until(got_all, timeout, f"{what}: {n} messages on {subject} (got {len(col.values)})", procs,
                     interval=0.05, allow_exit=allow_exit)
    return latency_summary(col)


async def natsflow_latency(root: Path, args) -> dict:
    name = "lat"
    d = root / name
    d.mkdir()
    procs = Procs(d)
    subject = "bench.lat"
    tick = args.lat_tick
    rpu = max(1, round(args.lat_rate * tick))
    async with private_server(root, name) as srv:
        try:
            pfile = await natsflow_start(srv, procs, d, name, args.lat_messages, args, rpu=rpu,
                                         duration=f"{tick * 1000:g}ms", sink={"nats": {"subject": subject}})

            def start():
                procs.start(f"{name}-gen", [PY, "-m", "framework.cli", "vertex", "--pipeline", str(pfile),
                                            "--vertex", "gen"], srv.env)

            return await collect_latency(srv, procs, subject, lambda m: int(m.headers["Nf-Event-Time"]),
                                         args.lat_messages, start, args.timeout, "natsflow latency run")
        finally:
            procs.stop_all()


async def raw_latency(root: Path, args) -> dict:
    prefix = "rawlat"
    d = root / prefix
    d.mkdir()
    procs = Procs(d)
    subject = "bench.rawlat"
    async with private_server(root, prefix) as srv:
        try:
            await raw_start(srv, procs, prefix, args, lat_subject=subject)

            def start():
                procs.start(f"{prefix}-source", [PY, str(RAW), "source", "--subject", f"{prefix}.a", "--n",
                                                 str(args.lat_messages), "--size", str(args.size), "--rate",
                                                 str(args.lat_rate), "--tick", str(args.lat_tick), "--stamp"], srv.env)

            return await collect_latency(srv, procs, subject, lambda m: int(m.data[:13]), args.lat_messages, start,
                                         args.timeout, "raw latency run", allow_exit=(f"{prefix}-source",))
        finally:
            procs.stop_all()


# ---- main ------------------------------------------------------------------------------------


async def wait_for_quiet(max_wait: float, threshold: float = 0.15) -> None:
    """Before a measurement: wait (at most max_wait s) until other processes use < threshold of the
    machine, so a concurrent job does not land on one side of the comparison only."""
    ncpu = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        before = machine_busy_seconds()
        await asyncio.sleep(0.5)
        busy = (machine_busy_seconds() - before) / (0.5 * ncpu)
        if busy < threshold:
            if waited:
                print(f"  machine quiet again ({busy:.0%} busy)", flush=True)
            return
        if time.monotonic() > deadline:
            print(f"  warning: machine still {busy:.0%} busy with other work after {max_wait:.0f}s; measuring anyway",
                  flush=True)
            return
        if not waited:
            print(f"  machine {busy:.0%} busy with other work; waiting up to {max_wait:.0f}s", flush=True)
            waited = True


def fmt(x: float) -> str:
    return f"{x:,.0f}"


async def main_async(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="natsflow-bench-"))
    rows = []
    try:
        for run in range(args.runs):
            order = ("natsflow", "raw") if run % 2 == 0 else ("raw", "natsflow")
            row = {"run": run, "order": order}
            for kind in order:
                fn = natsflow_throughput if kind == "natsflow" else raw_throughput
                for attempt in range(args.retries + 1):
                    await wait_for_quiet(args.quiet_wait)
                    r = await fn(root, run * 100 + attempt, args)
                    ncpu = os.cpu_count() or 1
                    ours = sum(v for k, v in r["cpu"].items() if k != "machine")
                    others = (r["cpu"]["machine"] - ours) / (r["seconds"] * ncpu)
                    r["others"] = others
                    print(f"  run {run} {kind:8s} {fmt(r['eps'])} events/s ({r['seconds']:.2f}s; "
                          f"{fmt(r['eps_spawn'])}/s counting from spawn; {ours / args.messages * 1e6:.0f} us CPU/msg; "
                          f"ours {ours / (r['seconds'] * ncpu):.0%} / other processes {others:.0%} of the machine)",
                          flush=True)
                    if others <= args.max_others:
                        break
                    if attempt < args.retries:
                        print(f"  run {run} {kind}: other processes took {others:.0%} of the machine "
                              f"(> {args.max_others:.0%}); measuring again", flush=True)
                row[kind] = r
            row["ratio"] = row["natsflow"]["eps"] / row["raw"]["eps"]
            rows.append(row)
        lat_nf = lat_raw = None
        if args.lat_messages > 0:
            await wait_for_quiet(args.quiet_wait)
            lat_nf = await natsflow_latency(root, args)
            print(f"  latency natsflow {lat_nf}", flush=True)
            await wait_for_quiet(args.quiet_wait)
            lat_raw = await raw_latency(root, args)
            print(f"  latency raw      {lat_raw}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    nf_med = statistics.median(r["natsflow"]["eps"] for r in rows)
    raw_med = statistics.median(r["raw"]["eps"] for r in rows)
    ratio_med = statistics.median(r["ratio"] for r in rows)
    nf_sp = statistics.median(r["natsflow"]["eps_spawn"] for r in rows)
    raw_sp = statistics.median(r["raw"]["eps_spawn"] for r in rows)

    print()
    print(f"source -> map(identity) -> sink, {args.messages:,} msgs x {args.size} B, batch {args.batch}, "
          f"natsflow bufferMaxLength {args.buffer_max_length}, raw {args.inflight} publishes in flight; "
          f"others = share of the machine other processes used during the run")
    print(f"{'run':<8}{'order':<16}{'natsflow ev/s':>15}{'raw ev/s':>12}{'ratio':>8}"
          f"{'nf from spawn':>15}{'raw from spawn':>16}{'others nf/raw':>15}")
    for r in rows:
        others = f"{r['natsflow']['others']:.0%}/{r['raw']['others']:.0%}"
        print(f"{r['run']:<8}{','.join(r['order']):<16}{fmt(r['natsflow']['eps']):>15}{fmt(r['raw']['eps']):>12}"
              f"{r['ratio']:>8.2f}{fmt(r['natsflow']['eps_spawn']):>15}{fmt(r['raw']['eps_spawn']):>16}{others:>15}")
    print(f"{'median':<24}{fmt(nf_med):>15}{fmt(raw_med):>12}{ratio_med:>8.2f}{fmt(nf_sp):>15}{fmt(raw_sp):>16}")
    roles = ("source", "map", "sink", "server")
    print()
    ncpu = os.cpu_count() or 1
    print(f"CPU per message in microseconds, first message to last ack (median over runs); busy = CPU "
          f"used by these 4 processes / ({ncpu} cores x wall time); machine = the same for every process")
    print(f"{'':<10}" + "".join(f"{r:>9}" for r in roles) + f"{'total':>9}{'busy':>7}{'machine':>9}")
    for kind in ("natsflow", "raw"):
        per = {r: statistics.median(x[kind]["cpu"][r] for x in rows) / args.messages * 1e6 for r in roles}
        busy = statistics.median(sum(x[kind]["cpu"][r] for r in roles) / (x[kind]["seconds"] * ncpu) for x in rows)
        machine = statistics.median(x[kind]["cpu"]["machine"] / (x[kind]["seconds"] * ncpu) for x in rows)
        print(f"{kind:<10}" + "".join(f"{per[r]:>9.0f}" for r in roles) + f"{sum(per.values()):>9.0f}"
              f"{busy:>7.0%}{machine:>9.0%}")
    if lat_nf and lat_raw:
        print()
        print(f"latency, {args.lat_messages:,} msgs at {args.lat_rate:g} msg/s in chunks of "
              f"{max(1, round(args.lat_rate * args.lat_tick))} every {args.lat_tick * 1000:g} ms "
              f"(event time -> core subscriber), ms")
        print(f"{'':<10}{'p50':>8}{'p99':>8}{'max':>8}{'achieved msg/s':>16}")
        for label, lat in (("natsflow", lat_nf), ("raw", lat_raw)):
            print(f"{label:<10}{lat['p50_ms']:>8.1f}{lat['p99_ms']:>8.1f}{lat['max_ms']:>8.1f}{lat['rate']:>16.0f}")
    return {
        "natsflow_eps": round(nf_med, 1),
        "raw_eps": round(raw_med, 1),
        "ratio": round(ratio_med, 3),
        "p50_ms": round(lat_nf["p50_ms"], 2) if lat_nf else None,
        "p99_ms": round(lat_nf["p99_ms"], 2) if lat_nf else None,
    }


def git_revision() -> str:
    """The commit measured, with '+dirty' when framework/ or vertices/ differ from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "framework", "vertices"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown (not a git checkout)") + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def nats_server_version() -> str:
    try:
        return subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc})"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, help="messages per throughput run (default 100000)")
    ap.add_argument("--size", type=int, default=256, help="payload bytes")
    ap.add_argument("--runs", type=int, help="natsflow/raw run pairs, alternating order (default 3)")
    ap.add_argument("--batch", type=int, default=500, help="readBatchSize / raw fetch batch")
    ap.add_argument("--buffer-max-length", type=int, default=30_000, help="natsflow bufferMaxLength")
    ap.add_argument("--inflight", type=int, default=1000, help="raw source: publishes whose acks are gathered")
    ap.add_argument("--lat-rate", type=float, default=500, help="paced latency run: messages/s")
    ap.add_argument("--lat-tick", type=float, default=0.01,
                    help="paced latency run: the source emits rate × tick messages every tick seconds")
    ap.add_argument("--lat-seconds", type=float, help="paced latency run: seconds, 0 = skip (default 6)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds one run may take before failing")
    ap.add_argument("--quiet-wait", type=float, default=120,
                    help="before each measurement wait up to this many seconds for other processes to go idle")
    ap.add_argument("--max-others", type=float, default=0.15,
                    help="a measurement during which other processes used more than this share of the machine "
                         "is repeated (this bench's own polling and the kernel count as other: ~5%%)")
    ap.add_argument("--retries", type=int, default=2, help="repeats of a measurement spoilt by other work")
    ap.add_argument("--archive", action="store_true",
                    help="natsflow's source keeps an archive of its intake (source.archive, for replay)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: defaults become 5000 msgs, 1 run, 1 s of latency")
    args = ap.parse_args(argv)
    defaults = {"messages": 5000, "runs": 1, "lat_seconds": 1} if args.quick else \
        {"messages": 100_000, "runs": 3, "lat_seconds": 6}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.messages < 1 or args.runs < 1:
        ap.error("--messages and --runs must be at least 1")
    args.lat_messages = int(args.lat_rate * args.lat_seconds)
    return args


def _interrupt(*_) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind through the finally blocks that stop children


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"natsflow {git_revision()}, python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
          f"{nats_server_version()}, nats-py {_dist_version('nats-py')}", flush=True)
    try:
        out = asyncio.run(main_async(args))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
