"""The `postgres` sink against the machine's PostgreSQL (127.0.0.1:5432, user postgres, db test):
exact rows, upsert replays leave the same rows, a table that appears late loses nothing, bad rows
are rejected one by one with an error naming the field."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest_asyncio

from tests.conftest import wait_for
from tests.vertices.test_http_sink import all_through, feed, pipeline

DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest_asyncio.fixture
async def pg():
    conn = await asyncpg.connect(DSN)
    table = "nf_" + uuid.uuid4().hex[:10]
    yield conn, table
    await conn.execute(f"DROP TABLE IF EXISTS {table}")
    await conn.close()


def row(i: int, **extra) -> bytes:
    return json.dumps({"id": i, "name": f"n{i}", "score": i * 0.5, **extra}).encode()


async def test_insert_writes_exact_rows_and_rejects_bad_ones(runner, nc, pg):
    conn, table = pg
    await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL, score float8, "
                       "tag text DEFAULT 'd', nf_id text)")

    def payload(i: int) -> bytes:
        if i % 100 == 13:
            return row(i, colour="red")  # no such column
        if i % 100 == 27:
            return json.dumps({"id": i, "name": None}).encode()  # NOT NULL
        if i % 100 == 51:
            return b"not json"
        return row(i)

    stream = await feed(nc, runner, 1000, payload)
    pipeline(runner, stream, {"postgres": {"dsn": DSN, "table": f"public.{table}", "idColumn": "nf_id"}})
    await runner.start_all()
    await wait_for(lambda: all_through(nc, runner, stream, 1000), 60, "1000 records through")
    good = [i for i in range(1000) if i % 100 not in (13, 27, 51)]
    got = await conn.fetch(f"SELECT id, name, score, tag, nf_id FROM {table} ORDER BY id")
    assert [r["id"] for r in got] == good
    assert got[5]["name"] == "n5" and got[5]["score"] == 2.5 and got[5]["tag"] == "d"
    assert got[5]["nf_id"] == f"{stream}:6"
    dlq = f"nf_{runner.name}_out_dlq"
    assert await runner.stream_messages(nc, dlq) == 30
    psub = await nc.jetstream().pull_subscribe(f"nfdlq.{runner.name}.out", durable=None, stream=dlq)
    errors = {json.loads(m.data)["id"] if m.data.startswith(b"{") else "raw": m.headers["Nf-Error"]
              for m in await psub.fetch(30, timeout=5)}
    assert errors[113] == f"field 'colour' is not a column of table public.{table}"
    assert errors[127].startswith("NotNullViolationError: null value in column \"name\"")
    assert errors["raw"].startswith("payload is not JSON")


async def test_upsert_replay_leaves_the_same_rows(runner, nc, pg):
    conn, table = pg
    await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score float8)")
    stream = await feed(nc, runner, 500, lambda i: row(i % 250))  # every key twice
    pipeline(runner, stream, {"postgres": {"dsn": DSN, "table": table, "mode": "upsert", "keyColumns": ["id"]}})
    await runner.start_all()
    await wait_for(lambda: all_through(nc, runner, stream, 500), 60, "500 records through")
    first = await conn.fetch(f"SELECT * FROM {table} ORDER BY id")
    assert [r["id"] for r in first] == list(range(250))
    # The same records once more (new stream positions, so nothing upstream deduplicates them).
    for i in range(500):
        await nc.jetstream().publish(f"{runner.name}.src", row(i % 250))
    await wait_for(lambda: all_through(nc, runner, stream, 1000), 60, "the replay through")
    assert await conn.fetch(f"SELECT * FROM {table} ORDER BY id") == first


async def test_table_missing_for_a_while_loses_nothing(runner, nc, pg):
    conn, table = pg
    stream = await feed(nc, runner, 600, row)
    pipeline(runner, stream, {"postgres": {"dsn": DSN, "table": table}})
    await runner.start_all()
    await wait_for(lambda: runner.log("out").count("UndefinedTableError") >= 3, 30, "three failed writes")
    await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score float8)")
    await wait_for(lambda: all_through(nc, runner, stream, 600), 60, "600 records through after the table exists")
    assert [r["id"] for r in await conn.fetch(f"SELECT id FROM {table} ORDER BY id")] == list(range(600))


async def test_dsn_from_a_secret_ref_and_table_from_an_env_var(runner, nc, pg, monkeypatch):
    """The sink process reads its DSN from NATSFLOW_SECRET_PG_DSN (what a rendered pod gets from
    the Secret) and its table from ${PG_TABLE}: neither is written in the pipeline file."""
    conn, table = pg
    await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, score float8)")
    monkeypatch.setenv("PG_TABLE", table)  # the test process loads the file too
    stream = await feed(nc, runner, 300, row)
    pipeline(runner, stream, {"postgres": {"dsn": {"secretRef": {"name": "pg", "key": "dsn"}}, "table": "${PG_TABLE}"}})
    assert DSN not in runner.file.read_text() and table not in runner.file.read_text()
    await runner.start_all(NATSFLOW_SECRET_PG_DSN=DSN)
    await wait_for(lambda: all_through(nc, runner, stream, 300), 60, "300 records through")
    assert [r["id"] for r in await conn.fetch(f"SELECT id FROM {table} ORDER BY id")] == list(range(300))
    assert await runner.stream_messages(nc, f"nf_{runner.name}_out_dlq") == 0


async def test_a_sink_without_its_secret_exits_naming_the_variable(runner, nc, pg):
    _, table = pg
    stream = await feed(nc, runner, 1, row)
    pipeline(runner, stream, {"postgres": {"dsn": {"secretRef": {"name": "pg", "key": "dsn"}}, "table": table}})
    await runner.provision()
    proc = runner.start("out")
    await wait_for(lambda: proc.poll() is not None, 30, "the sink to exit")
    assert proc.returncode == 1
    assert runner.log("out").strip().endswith(
        "spec.vertices[1].sink.postgres.dsn: secretRef pg/dsn: environment variable NATSFLOW_SECRET_PG_DSN is not "
        "set (rendered pods get it from the Secret; for natsflow run, export it)")
