"""The `shout` function, written once per language in this folder (Python here, `node/shout.js`,
`go/shout.go`) so every implementation can be checked against the same pipeline and conformance kit.

- an empty payload is filtered out (no output);
- output 0 is the payload with ASCII letters upper-cased, tagged `even` or `odd` by its length;
- a payload longer than 12 bytes also gets output 1: its length in decimal, tagged `long`.
Keys, event time and user headers are passed on unchanged.
"""

from __future__ import annotations

from framework import Datum, Message

_UPPER = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def shout(keys: list[str], datum: Datum) -> list[Message]:
    value = datum.value
    if not value:
        return []
    out = [Message(value.translate(_UPPER), keys=keys, tags=["even" if len(value) % 2 == 0 else "odd"])]
    if len(value) > 12:
        out.append(Message(str(len(value)).encode(), keys=keys, tags=["long"]))
    return out
