"""`source.transformer.numaflow`: the source's records pass through a Numaflow source transformer
before they are stored. Output 0 of a record keeps its offset (its dedup id), output i > 0 is
`<offset>.t<i>`, so a re-read record gives the same ids; a record the program raised on goes to
the source's dead-letter stream with the SDK's text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from framework.connector import SourceRecord
from framework.numaflow.launch import launch_for
from framework.numaflow.transformer import NumaflowTransformer
from framework.sdk import Datum
from framework.spec.model import Pipeline
from framework.spec.udf import SourceTransformer

Transformed = tuple[list[SourceRecord], list[frozenset[str]], list[tuple[SourceRecord, str]]]


class RecordTransformer:
    def __init__(self, p: Pipeline, vertex: str, spec: SourceTransformer, base_dir: Path | None,
                 watermark: Callable[[], int | None]):
        self.client = NumaflowTransformer(launch_for(p, vertex, spec.numaflow, "source.transformer.numaflow",
                                                     base_dir), watermark)

    async def start(self) -> None:
        await self.client.start()

    async def apply(self, records: list[SourceRecord]) -> Transformed:
        """(records to store, their tags, (record, error) to dead-letter); dropped ones are gone."""
        datums = [Datum(r.keys or [], r.value, headers=r.headers, id=r.id or r.offset, event_time_ms=r.event_time_ms)
                  for r in records]
        results = await self.client.transform(datums)
        out: list[SourceRecord] = []
        tags: list[frozenset[str]] = []
        failed: list[tuple[SourceRecord, str]] = []
        for r, res in zip(records, results):
            if isinstance(res, BaseException):
                failed.append((r, f"{type(res).__name__}: {res}"))
                continue
            for i, m in enumerate(res):
                if m.is_drop:
                    continue
                suffix = "" if i == 0 else f".t{i}"
                event_ms = int(m.event_time.timestamp() * 1000) if m.event_time is not None else r.event_time_ms
                out.append(SourceRecord(m.value if isinstance(m.value, bytes) else bytes(m.value), r.offset + suffix,
                                        event_ms, list(m.keys or []) or None, r.headers,
                                        (r.id or r.offset) + suffix))
                tags.append(frozenset(m.tags or ()))
        return out, tags, failed

    async def stop(self) -> None:
        await self.client.stop()
