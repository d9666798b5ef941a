"""`filetail`: every complete line appended to `path` becomes a message (the line, without its
newline). A line's offset is `<path>:<byte position>`, stable for as long as the file is only
appended to, so lines read again after a restart (this source starts from the top each time) are
dropped as duplicates within the pipeline's duplicate window."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from framework.connector import ConnectorContext, Emit, SourceRecord
from natsflow_filetail.connector import FileTailConfig

BATCH = 500


class FileTailSource:
    def __init__(self, config: FileTailConfig):
        self.cfg = config
        self.path = Path(config.path)
        self.position = 0  # the byte after the last complete line read

    def read_lines(self) -> list[SourceRecord]:
        """Complete lines after `position` (at most BATCH), advancing it past them."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.position)
                data = f.read(1 << 20)
        except FileNotFoundError:
            return []
        records, start = [], self.position
        now_ms = int(time.time() * 1000)
        for line in data.split(b"\n")[:-1][:BATCH]:  # the part after the last newline is not complete yet
            offset = f"{self.cfg.path}:{start}"
            records.append(SourceRecord(line, offset, now_ms, None, None, offset))
            start += len(line) + 1
        self.position = start
        return records

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        while not ctx.stopping.is_set():
            records = self.read_lines()
            if records:
                await emit(records)  # stored: nothing upstream to acknowledge, the position is ours
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), self.cfg.poll_interval)
