"""NATS message headers in wire form: parse, validate, escape, encode. Pure functions, used by
the fast client (transport/client.py) and by the envelope (isb/envelope.py)."""

from __future__ import annotations

import re

_WHITESPACE = re.compile(r"\s")
HEADER_LINE = b"NATS/1.0\r\n"  # the version line every header block starts with


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """Same result as nats-py's parser for `Name: Value` lines, without its per-character scan
    of every name, which cost ~45 us per received message with natsflow's four envelope headers.
    Values that are not UTF-8 keep their bytes as lone surrogates (`surrogateescape`), so a reader
    can tell them from text and refuse them (header_problem) instead of passing on U+FFFD."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if not key or _WHITESPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "surrogateescape")
    return out



def parse_header_block(block: bytes) -> dict[str, str]:
    """The headers of a whole block as stored or sent (`NATS/1.0[ status]\r\nName: Value...`),
    with `parse_header_lines`' rules: never fails, whatever bytes a writer put there."""
    _version, _sep, lines = block.partition(b"\r\n")
    return parse_header_lines(lines)


_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def unfold(value: str) -> str:
    """A header value on one line: CR/LF become spaces, the ends are stripped. (str.translate
    walks a dict per character: the check first keeps the usual clean value at ~0.1 us.)"""
    if "\n" in value or "\r" in value:
        value = value.translate(_NEWLINES)
    return value.strip()



class HeaderError(ValueError):
    """A header that cannot be written faithfully: a property of the message, not of the
    connection (nats-py's BadHeaderError is a nats.errors.Error, which callers take for an outage)."""


def header_problem(name: object, value: object) -> str | None:
    """Why `name: value` cannot be written as a NATS header, or None. Names must be HTTP tokens
    (RFC 9110; what nats-py and most other clients accept), values text that encodes as UTF-8."""
    if not isinstance(name, str) or not _HEADER_KEY.fullmatch(name):
        return f"header name {name!r} is not an HTTP token"
    if not isinstance(value, str):
        return f"header {name!r} value is {type(value).__name__}, not str"
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"header {name!r} value is not UTF-8"
    return None


_NOT_TOKEN = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")


def escape_header_name(name: str) -> str:
    """`name` with every character outside the token set replaced by `_`."""
    return _NOT_TOKEN.sub("_", name) or "_"


def escape_header_value(value: str) -> str:
    """`value` as UTF-8 text: bytes that were not UTF-8 (kept as lone surrogates by the parser)
    become `\\xNN`, any other lone surrogate `\\uDNNN`."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")


def encode_headers(headers: dict[str, str]) -> bytes:
    """Wire form of `headers`; raises HeaderError naming the first header it cannot write.
    Line breaks in values become spaces (a header is one line)."""
    parts = ["NATS/1.0\r\n"]
    for k, v in headers.items():
        problem = header_problem(k, v)
        if problem is not None:
            raise HeaderError(problem)
        parts.append(f"{k}: {unfold(v)}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode()
