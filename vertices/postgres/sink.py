"""`postgres`: writes each message as a row; one transaction per batch.

A payload is a JSON object whose fields name columns of `table`; PostgreSQL converts each value
to its column's type (`jsonb_populate_recordset`), columns a row leaves out get their default.
`idColumn` also stores the data id, `headerColumns` maps headers to columns (`{Nf-Error: error}`
keeps a fallback's error text). `mode: upsert` writes `INSERT ... ON CONFLICT (keyColumns) DO
UPDATE`, so a batch written again after a crash leaves the same rows (effectively once); within a
batch the last message per key wins. `insert` appends, so a redelivered batch inserts twice (or
hits a unique index).

A payload that is not a JSON object, names an unknown column, or that PostgreSQL refuses (bad
value for the type, a constraint) is rejected on its own: it goes to the fallback sink or the
dead-letter stream and the rest of the batch is written. Anything else (server down, missing
table) fails the batch, which is retried.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from framework.connector import ConnectorContext, DatumsRejected
from framework.sdk import Datum
from vertices.postgres.config import PostgresMode
from vertices.postgres.config import PostgresSinkConfig as Config

BAD_ROW = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Rollback(Exception):
    pass


class PostgresSink:
    def __init__(self, config: Config):
        self.cfg = config
        self.table = ".".join(quote(part) for part in config.table.split("."))
        self.pool: asyncpg.Pool | None = None
        self.columns: set[str] | None = None

    async def start(self, ctx: ConnectorContext) -> None:
        pass  # connect on first write: a database that is down is a failing write, retried

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def load_columns(self, conn: asyncpg.Connection) -> set[str]:
        rows = await conn.fetch("SELECT attname FROM pg_attribute WHERE attrelid = $1::text::regclass "
                                "AND attnum > 0 AND NOT attisdropped", self.table)
        self.columns = {r["attname"] for r in rows}
        return self.columns

    def row(self, d: Datum) -> dict[str, Any]:
        try:
            obj = json.loads(d.value)
        except ValueError as exc:
            raise ValueError(f"payload is not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"payload must be a JSON object of column values, got {type(obj).__name__}")
        if self.cfg.id_column:
            obj[self.cfg.id_column] = d.id
        for header, column in self.cfg.header_columns.items():
            if header in d.headers:
                obj[column] = d.headers[header]
        return obj

    def sql(self, cols: tuple[str, ...]) -> str:
        names = ", ".join(quote(c) for c in cols)
        stmt = (f"INSERT INTO {self.table} ({names}) SELECT {names} "
                f"FROM jsonb_populate_recordset(NULL::{self.table}, $1::jsonb)")
        if self.cfg.mode is PostgresMode.upsert:
            keys = ", ".join(quote(c) for c in self.cfg.key_columns)
            rest = [c for c in cols if c not in self.cfg.key_columns]
            sets = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in rest)
            action = f"UPDATE SET {sets}" if rest else "NOTHING"
            stmt += f" ON CONFLICT ({keys}) DO {action}"
        return stmt

    def rows(self, datums: list[Datum], columns: set[str]) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
        """Batch position → row, and position → why it cannot be a row."""
        rows: dict[int, dict[str, Any]] = {}
        bad: dict[int, str] = {}
        upsert = self.cfg.mode is PostgresMode.upsert
        for i, d in enumerate(datums):
            try:
                row = self.row(d)
            except ValueError as exc:
                bad[i] = str(exc)
                continue
            unknown = sorted(set(row) - columns)
            missing = [k for k in self.cfg.key_columns if row.get(k) is None] if upsert else []
            if unknown:
                bad[i] = f"field {unknown[0]!r} is not a column of table {self.cfg.table}"
            elif missing:
                bad[i] = f"upsert needs key column {missing[0]!r} in every row"
            else:
                rows[i] = row
        if upsert:  # one statement cannot update a row twice: last wins
            last = {tuple(json.dumps(r[k]) for k in self.cfg.key_columns): i for i, r in rows.items()}
            rows = {i: rows[i] for i in sorted(last.values())}
        return rows, bad

    async def insert(self, conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in rows:  # rows naming the same columns share a statement; the others keep their defaults
            groups.setdefault(tuple(sorted(r)), []).append(r)
        for cols, group in groups.items():
            await conn.execute(self.sql(cols), json.dumps(group))

    async def find_bad_rows(self, conn: asyncpg.Connection, rows: dict[int, dict[str, Any]]) -> dict[int, str]:
        """Which rows PostgreSQL refuses: each alone in a savepoint, then everything rolled back."""
        bad: dict[int, str] = {}
        try:
            async with conn.transaction():
                for i, r in rows.items():
                    try:
                        async with conn.transaction():
                            await self.insert(conn, [r])
                    except BAD_ROW as exc:
                        bad[i] = f"{type(exc).__name__}: {exc}"
                raise _Rollback
        except _Rollback:
            pass
        return bad

    async def write(self, datums: list[Datum]) -> None:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(self.cfg.dsn, min_size=1, max_size=2, command_timeout=30)
        async with self.pool.acquire() as conn:
            try:
                columns = self.columns or await self.load_columns(conn)
                rows, bad = self.rows(datums, columns)
                if any("is not a column" in reason for reason in bad.values()):
                    rows, bad = self.rows(datums, await self.load_columns(conn))  # the table may have changed
                if bad:
                    raise DatumsRejected(bad)  # nothing written yet; the worker writes the rest again
                try:
                    async with conn.transaction():
                        await self.insert(conn, list(rows.values()))
                except BAD_ROW:
                    bad = await self.find_bad_rows(conn, rows)
                    if bad:
                        raise DatumsRejected(bad) from None
                    raise
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
                self.columns = None  # look the table up again on the next try
                raise
