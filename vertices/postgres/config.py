"""The `postgres` sink's block."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, model_validator

from framework.spec.types import Model, Secret


class PostgresMode(str, Enum):  # noqa: UP042 - str mixin: str() and format() stay as they were
    insert = "insert"
    upsert = "upsert"


class PostgresSinkConfig(Model):
    dsn: Secret
    table: str = Field(min_length=1, description="table name, optionally schema.table")
    mode: PostgresMode = PostgresMode.insert
    key_columns: list[str] = Field(default_factory=list)
    id_column: str | None = Field(None, description="column that gets the data id")
    header_columns: dict[str, str] = Field(default_factory=dict,
                                           description="header name -> column, e.g. {Nf-Error: error}")

    @model_validator(mode="after")
    def _keys_for_upsert(self) -> PostgresSinkConfig:
        if self.mode is PostgresMode.upsert and not self.key_columns:
            raise ValueError("mode upsert needs keyColumns (the columns of a unique index or primary key)")
        return self
