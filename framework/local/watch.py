"""One file watcher for everything that follows edits of a pipeline file: `natsflow up` (applies
them live) and `natsflow ui` (redraws the graph). It compares content, not modification times:
an editor that rewrites the same bytes changes nothing, and a change within the file system's
timestamp resolution is still seen."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path


class FileWatch:
    """A file looked at on demand; each new content is reported once."""

    def __init__(self, path: Path | None):
        self.path = path
        self._seen = self._read()

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes() if self.path is not None else None
        except OSError:
            return None

    def changed(self) -> bool:
        """True when the content differs from the last look (an unreadable file: no change yet)."""
        data = self._read()
        if data is None or data == self._seen:
            return False
        self._seen = data
        return True

    async def follow(self, on_change: Callable[[], Awaitable[None]], interval: float = 1.0) -> None:
        """Call `on_change` after each change, looking every `interval` s, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                await on_change()
