"""Making upstream strings safe as NATS header names, header values and message ids.

Other systems allow what a NATS header line cannot carry (a `:` or space in a name, a line break
in a value), so such text is escaped rather than allowed to break the message."""

from __future__ import annotations

import hashlib

from framework.connector import header_name, is_natsflow_header_any_case

MAX_ID = 200


def header_value(raw: object) -> str:
    if raw is None:  # a null header value (Kafka, AMQP void) is empty, not the text "None"
        return ""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)
    return text.replace("\r", "\\r").replace("\n", "\\n")


def upstream_headers(items) -> dict[str, str] | None:
    """`(name, value)` pairs as user headers; natsflow's own (`Nats-*`, `Nf-*`) are not taken."""
    # Header names are case-insensitive to NATS: `nats-msg-id` would set the dedup id.
    out = {header_name(k): header_value(v) for k, v in items if not is_natsflow_header_any_case(k)}
    return out or None


def safe_id(text: str) -> str:
    """`text` when it fits on a header line, else a digest of it (same input, same id)."""
    if len(text) <= MAX_ID and text.isprintable():
        return text
    return "sha256-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]
