"""Clicks per page over the last 10 s, updated every 2 s (sliding windows)."""

from __future__ import annotations

import json
from typing import Iterable

from framework import Datum, Message, Window


def count(keys: list[str], datums: Iterable[Datum], window: Window) -> Message:
    n = sum(1 for _ in datums)
    return Message(json.dumps({"page": keys[0], "clicks": n, "until": f"{window.end:%H:%M:%S}"}).encode())
