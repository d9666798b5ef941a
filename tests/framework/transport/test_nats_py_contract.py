"""The nats-py internals framework/transport/client.py builds on: each exists, has the shape the
client assumes, and behaves as it assumes. A failure here means the installed nats-py changed
something FastClient relies on: read the message, adapt transport/client.py, then move the pin
in pyproject.toml (and NATS_PY_WRITTEN_FOR) to the new minor release."""

from __future__ import annotations

import asyncio
import inspect
from importlib import metadata

import pytest
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from framework.transport.client import (
    NATS_PY_INTERNALS,
    NATS_PY_WRITTEN_FOR,
    FastClient,
    publish_many,
)
from framework.transport.headers import encode_headers, parse_header_lines

ADAPT = ("framework/transport/client.py relies on it (see NATS_PY_INTERNALS there); adapt it before "
         "allowing this nats-py release in pyproject.toml")


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_installed_nats_py_is_the_minor_release_the_client_was_written_for():
    version = metadata.version("nats-py")
    assert version.split(".")[:2] == NATS_PY_WRITTEN_FOR.split("."), (
        f"nats-py {version} is installed; framework/transport/client.py was written against "
        f"{NATS_PY_WRITTEN_FOR}.x: run this contract test module against it, adapt the client, then update "
        "NATS_PY_WRITTEN_FOR and the pin in pyproject.toml")


def test_private_client_methods_exist_with_the_assumed_signatures():
    for name in NATS_PY_INTERNALS["Client"]:
        assert hasattr(Client, name), f"nats-py Client.{name} is gone; {ADAPT}"
    assert isinstance(inspect.getattr_static(Client, "_parse_header_lines"), staticmethod), \
        f"nats-py Client._parse_header_lines is no longer a staticmethod; {ADAPT}"
    assert _params(Client._parse_header_lines) == ["raw"], \
        f"nats-py Client._parse_header_lines{inspect.signature(Client._parse_header_lines)} changed; {ADAPT}"
    assert _params(Client._process_msg) == ["sid", "subject", "reply", "data", "headers"], \
        f"nats-py Client._process_msg{inspect.signature(Client._process_msg)} changed; {ADAPT}"
    assert inspect.iscoroutinefunction(Client._process_msg), f"Client._process_msg is no longer async; {ADAPT}"
    assert _params(Client._process_headers) == ["headers"] and inspect.iscoroutinefunction(Client._process_headers), \
        f"nats-py Client._process_headers{inspect.signature(Client._process_headers)} changed; {ADAPT}"
    assert _params(Client._send_command)[:1] == ["cmd"] and inspect.iscoroutinefunction(Client._send_command), \
        f"nats-py Client._send_command{inspect.signature(Client._send_command)} changed; {ADAPT}"
    flush = inspect.signature(Client._flush_pending).parameters
    assert inspect.iscoroutinefunction(Client._flush_pending) and all(
        p.default is not inspect.Parameter.empty for n, p in flush.items() if n != "self"), \
        f"nats-py Client._flush_pending{inspect.signature(Client._flush_pending)} needs arguments now; {ADAPT}"
    assert inspect.isclass(Client.msg_class), f"nats-py Client.msg_class is not a class; {ADAPT}"
    assert {"subject", "reply", "data", "headers", "_client", "_sid"} <= set(inspect.signature(Client.msg_class).parameters), \
        f"nats-py Msg{inspect.signature(Client.msg_class)} no longer takes what FastClient builds it with; {ADAPT}"


def test_private_client_attributes_before_connecting():
    client = Client()
    for name in NATS_PY_INTERNALS["Client instance"]:
        assert hasattr(client, name), f"a nats-py Client has no attribute {name} any more; {ADAPT}"
    assert isinstance(client._subs, dict), f"nats-py Client._subs is a {type(client._subs).__name__}; {ADAPT}"
    assert client._flush_queue is None, f"nats-py Client._flush_queue is set before connect; {ADAPT}"


def test_fast_header_parser_agrees_with_nats_py():
    raw = (b"Nats-Msg-Id: v:abc:0\r\nNf-Id: id-1\r\nNf-Event-Time: 1700000000000\r\n"
           b'Nf-Keys: ["a","b"]\r\nX-User:  spaced value \r\nX-Colon: a:b:c\r\n\r\n')
    assert parse_header_lines(raw) == Client._parse_header_lines(raw), (
        f"nats-py's header parser now reads {raw!r} as {Client._parse_header_lines(raw)}, "
        f"natsflow's fast one as {parse_header_lines(raw)}; {ADAPT}")


async def test_connected_client_internals_and_fast_paths(nats_url):
    client = FastClient()
    await client.connect(nats_url)
    try:
        for name in NATS_PY_INTERNALS["Client instance"]:
            assert hasattr(client, name), f"a connected nats-py Client has no attribute {name}; {ADAPT}"
        assert isinstance(client._flush_queue, asyncio.Queue), \
            f"nats-py Client._flush_queue is a {type(client._flush_queue).__name__}, not an asyncio.Queue; {ADAPT}"
        assert client._max_payload == client.max_payload > 0, f"nats-py Client._max_payload is not max_payload; {ADAPT}"

        got: list = []
        arrived = asyncio.Event()

        def handler(msg) -> None:
            got.append(msg)
            arrived.set()

        sub = await client.subscribe_direct("contract.direct", handler)
        assert isinstance(sub, Subscription) and hasattr(sub, "_id"), f"nats-py Subscription._id is gone; {ADAPT}"
        assert client._subs.get(sub._id) is sub, f"nats-py Client._subs is no longer keyed by Subscription._id; {ADAPT}"
        headers = {"Nf-Id": "x", "X-Other": "ü"}
        await publish_many(client, [("contract.direct", "reply.to", b"one", encode_headers(headers)),
                                    ("contract.direct", "", b"two", None)])
        await client.flush()
        await asyncio.wait_for(arrived.wait(), 5)
        while len(got) < 2:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
        first, second = got
        assert (first.subject, first.reply, first.data, first.headers) == ("contract.direct", "reply.to", b"one", headers), \
            f"direct dispatch (Client._process_msg override) delivered {first!r}; {ADAPT}"
        assert (second.data, second.headers) == (b"two", None), f"direct dispatch delivered {second!r}; {ADAPT}"
        assert isinstance(first, client.msg_class)
        await sub.unsubscribe()
    finally:
        await client.close()


@pytest.mark.parametrize("minor", [NATS_PY_WRITTEN_FOR])
def test_pyproject_pins_the_minor_release(minor):
    from tests.conftest import REPO

    text = (REPO / "pyproject.toml").read_text()
    major, mi = (int(x) for x in minor.split("."))
    pin = f'"nats-py>={major}.{mi},<{major}.{mi + 1}"'
    assert pin in text, f"pyproject.toml must pin {pin}: framework/transport/client.py uses nats-py internals"
