"""examples/fraud: the model and rules in-process, then the demo end to end as a user runs it
(`python -m examples.fraud.demo`: embedded NATS, every vertex and the side-input manager its own
process) against a Tansu Kafka broker and the machine's PostgreSQL, checked with exact counts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from examples.fraud.demo import STRICTER, transactions
from examples.fraud.udf import features, load_thresholds, parse_transaction, probability, scored_row
from framework import Datum
from framework.spec import load_pipeline
from framework.testing import arun_pipeline
from tests.conftest import REPO, wait_for
from tests.vertices.conftest import Tansu

DSN = "postgresql://postgres@127.0.0.1:5432/test"
TXN = {"txn_id": "t1", "account": "acct-001", "amount": 42.5, "merchant_category": "grocery", "country": "DE",
       "home_country": "DE", "card_present": True, "ts": 1_764_338_400_000}  # 14:00 UTC


def test_pipeline_validates():
    p = load_pipeline(REPO / "examples" / "fraud" / "pipeline.yaml")
    assert [si.name for si in p.spec.side_inputs] == ["thresholds"]
    assert p.vertex("enrich").side_inputs == ["thresholds"]


def expected_row(txn: dict, rules: dict) -> dict:
    return scored_row({**txn, "features": features(txn, rules), "flag_above": rules["flagAbove"],
                       "rules_version": rules["version"]})


def test_model_flags_the_risky_and_not_the_ordinary():
    rules = load_thresholds()
    ordinary = expected_row(TXN, rules)
    risky = expected_row({**TXN, "amount": 1900.0, "country": "NG", "card_present": False,
                          "ts": 1_764_298_800_000}, rules)  # 03:00 UTC
    assert ordinary["flagged"] is False and ordinary["score"] < 0.05
    assert risky["flagged"] is True and risky["score"] > 0.99
    # The same transaction, stricter rules: lower category limits raise the score past a lower bar.
    mid = {**TXN, "amount": 240.0, "country": "FR", "card_present": False}
    assert expected_row(mid, rules)["flagged"] is False and expected_row(mid, STRICTER)["flagged"] is True
    assert probability({k: 0.0 for k in features(TXN, rules)}) == pytest.approx(1 / (1 + 2.718281828 ** 4.2))


def test_bad_transactions_and_rules_name_the_field(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="transaction field 'amount' is missing"):
        parse_transaction(json.dumps({k: v for k, v in TXN.items() if k != "amount"}).encode())
    with pytest.raises(ValueError, match=r"transaction field 'card_present' has the wrong type \(str\)"):
        parse_transaction(json.dumps({**TXN, "card_present": "yes"}).encode())
    for field in ("amount", "ts"):  # JSON true is a Python int too: not a number here
        with pytest.raises(ValueError, match=rf"transaction field '{field}' has the wrong type \(bool\)"):
            parse_transaction(json.dumps({**TXN, field: True}).encode())
    bad = tmp_path / "rules.json"
    bad.write_text(json.dumps({**STRICTER, "flagAbove": 3}))
    monkeypatch.setenv("FRAUD_THRESHOLDS", str(bad))
    with pytest.raises(ValueError, match="flagAbove must be a probability between 0 and 1"):
        load_thresholds()


async def scored_records(bootstrap: str, topic: str, run: str, expect: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"check-{run}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got: list = []
    try:
        async def more() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(r for r in batch if json.loads(r.value)["txn_id"].startswith(run + "-"))
            return len(got) >= expect
        await wait_for(more, 30, f"{expect} scored records", interval=0)
        for batch in (await consumer.getmany(timeout_ms=500)).values():  # a duplicate would show here
            got.extend(r for r in batch if json.loads(r.value)["txn_id"].startswith(run + "-"))
    finally:
        await consumer.stop()
    return got


async def test_demo_end_to_end_exact(tmp_path):
    broker = Tansu(tmp_path).start()
    table = f"fraud_{uuid.uuid4().hex[:8]}"
    prefix = f"f{uuid.uuid4().hex[:8]}"
    count = 150
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_") and k != "FRAUD_THRESHOLDS"}
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "demo.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.fraud.demo", "--count", str(count), "--bootstrap", broker.bootstrap,
         "--dsn", DSN, "--table", table, "--prefix", prefix, "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    db = await asyncpg.connect(DSN)
    try:
        code = await asyncio.to_thread(proc.wait, 240)
        out = log.read_text()
        assert code == 0, out[-4000:]
        summary = json.loads(out.rsplit("SUMMARY ", 1)[1])
        run = summary["run"]

        # What every transaction must score: phase 1 under rules v1, phase 2 under the v2 the
        # manager stored (and the enrich vertex picked up live) before phase 2 was produced.
        v1 = load_thresholds()
        expected = {t["txn_id"]: expected_row(t, v1) for t in transactions(run, 1, count, 7)}
        expected |= {t["txn_id"]: expected_row(t, STRICTER) for t in transactions(run, 2, count, 7)}

        records = await scored_records(broker.bootstrap, f"{prefix}-scored", run, 2 * count)
        rows = [json.loads(r.value) for r in records]
        assert len(rows) == 2 * count and len({r["txn_id"] for r in rows}) == 2 * count  # no loss, no copy
        assert {r["txn_id"]: r for r in rows} == expected
        assert all(r.key.decode() == json.loads(r.value)["account"] for r in records)

        # Both ways: the same transactions run in memory (framework.testing), each phase under the
        # rules it ran with for real, give exactly what the demo wrote to Kafka and PostgreSQL.
        in_memory, flagged_in_memory = {}, set()
        for phase, rules in ((1, v1), (2, STRICTER)):
            items = [Datum([t["account"]], json.dumps(t).encode(), event_time_ms=t["ts"])
                     for t in transactions(run, phase, count, 7)]
            mem = await arun_pipeline(REPO / "examples" / "fraud" / "pipeline.yaml", {"transactions": items},
                                      {"thresholds": rules})
            in_memory |= {r["txn_id"]: r for r in map(json.loads, mem["scored"])}
            flagged_in_memory |= {json.loads(v)["txn_id"] for v in mem["flagged"]}
        assert {r["txn_id"]: r for r in rows} == in_memory

        flagged = await db.fetch(f"SELECT txn_id, score, rules_version, amount FROM {table}")
        assert {r["txn_id"] for r in flagged} == flagged_in_memory
        want = {k: v for k, v in expected.items() if v["flagged"]}
        assert {r["txn_id"] for r in flagged} == set(want)
        assert all(r["score"] == want[r["txn_id"]]["score"] and r["rules_version"] == want[r["txn_id"]]["rules_version"]
                   for r in flagged)
        per_version = {str(v): sum(1 for r in want.values() if r["rules_version"] == v) for v in (1, 2)}
        assert summary == {"run": run, "scored": {"1": count, "2": count}, "flagged_in_kafka": per_version,
                           "flagged_in_postgres": per_version}
        assert 0 < per_version["1"] < per_version["2"]  # the stricter rules flag more
        assert "side input thresholds updated (revision 2" in out  # live, in the running enrich vertex
        assert "[enrich]" in out and "vertex enrich stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await db.execute(f"DROP TABLE IF EXISTS {table}")
        await db.close()
        broker.stop()
