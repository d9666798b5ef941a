"""framework.sdk.handler_kind: the one decision how a user's handler is called."""

from __future__ import annotations

from framework.sdk import handler_kind


def plain(keys, datum):
    return None


async def coroutine(keys, datum):
    return None


async def agen(keys, datum):
    yield None


def gen(keys, datum):
    yield None


class AsyncCallable:
    async def __call__(self, keys, datum):
        return None


class SyncCallable:
    def __call__(self, keys, datum):
        return None


class AsyncGenCallable:
    async def __call__(self, keys, datum):
        yield None


def test_each_kind_of_handler() -> None:
    assert handler_kind(plain) == "sync"
    assert handler_kind(coroutine) == "async"
    assert handler_kind(agen) == "async_generator"
    assert handler_kind(gen) == "generator"
    assert handler_kind(lambda k, d: None) == "sync"


def test_an_object_counts_as_the_kind_of_its_call() -> None:
    assert handler_kind(AsyncCallable()) == "async"
    assert handler_kind(SyncCallable()) == "sync"
    assert handler_kind(AsyncGenCallable()) == "async_generator"
    assert handler_kind(AsyncCallable().__call__) == "async"
