"""Dead letters: a message natsflow cannot process, written with why, in a form the dead-letter
stream always accepts. A dead-letter write must never fail for the reason the message is there:
header names that are not tokens are renamed, values that are not UTF-8 escaped, `Nats-*`
control headers dropped, and a payload too large for the server truncated; each change is said
in `Nf-Error` after `; dead letter: `."""

from __future__ import annotations

from typing import Mapping

from framework.isb.writer import OutMessage
from framework.isb.envelope import HDR_ERROR, HDR_ERROR_VERTEX, HDR_MSG_ID, RESERVED_HEADERS, is_control_header
from framework.transport.headers import encode_headers, escape_header_name, escape_header_value, header_problem

ERROR_MAX = 4000  # characters of Nf-Error kept


def one_line(text: str) -> str:
    """Error text as one header line of UTF-8."""
    return escape_header_value(text[:ERROR_MAX].replace("\r", " ").replace("\n", " | "))


def _kept_headers(headers: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers.items():
        if k in (HDR_MSG_ID, HDR_ERROR, HDR_ERROR_VERTEX):
            continue  # set by the dead letter itself
        if is_control_header(k):
            notes.append(f"control header {k!r} dropped")
            continue
        name = k
        if header_problem(k, "") is not None:
            name = escape_header_name(k)
            while name in out or name in headers:
                name += "_"
            notes.append(f"header {k!r} renamed {name!r}")
        value = v if isinstance(v, str) else str(v)
        if header_problem(name, value) is not None:
            value = escape_header_value(value)
            notes.append(f"value of header {k!r} escaped")
        out[name] = value
    return out


def dead_letter_message(subject: str, msg_id: str, payload: bytes, headers: Mapping[str, str] | None,
                        error: str, vertex: str, max_payload: int) -> OutMessage:
    """The message for `subject` (a vertex's dead-letter subject): `payload` and `headers` as they
    came, `Nats-Msg-Id: msg_id`, `Nf-Error: error`, `Nf-Error-Vertex: vertex`, fitted to
    `max_payload` (the server's limit, headers included)."""
    notes: list[str] = []
    kept = _kept_headers(headers or {}, notes)

    def encode(extra_notes: list[str], user: dict[str, str]) -> bytes:
        all_notes = notes + extra_notes
        text = error + ("; dead letter: " + ", ".join(all_notes) if all_notes else "")
        return encode_headers({**user, HDR_MSG_ID: one_line(msg_id), HDR_ERROR: one_line(text),
                               HDR_ERROR_VERTEX: vertex})

    head = encode([], kept)
    if len(head) + len(payload) <= max_payload:
        return OutMessage(subject, payload, head)
    envelope = {k: v for k, v in kept.items() if k in RESERVED_HEADERS}
    for user in (kept, envelope):  # the headers alone may not fit: keep natsflow's envelope only
        dropped = [] if user is kept else [f"{len(kept) - len(envelope)} user headers dropped"]
        # The note's own length counts: size it with the longest number it can hold.
        probe = encode(dropped + [f"payload truncated from {len(payload)} to {len(payload)} bytes"], user)
        room = max_payload - len(probe)
        if room >= 0:
            head = encode(dropped + [f"payload truncated from {len(payload)} to {room} bytes"], user)
            return OutMessage(subject, payload[:room], head)
    head = encode(["headers and payload dropped"], {})
    return OutMessage(subject, b"", head)
