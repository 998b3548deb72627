"""Shared fixtures: small fake models for engine tests; a real redis-server for the Redis ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest

from tiered.core import AnswerBatch, Item, ModelTags


class FakeModel:
    """Answers from functions of the item; counts calls so tests can see what ran."""

    tags = ModelTags()

    def __init__(
        self,
        name: str,
        label: Callable[[Item], str | None],
        cost: float = 1.0,
        signals: dict[str, Callable[[Item], float]] | None = None,
        latency_ms: float = 1.0,
    ) -> None:
        self.name = name
        self._label = label
        self._cost = cost
        self._signals = signals or {}
        self._latency = latency_ms
        self.seen: list[str] = []

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        self.seen.extend(it.id for it in items)
        return AnswerBatch.from_labels(
            [self._label(it) for it in items],
            cost=self._cost,
            latency_ms=self._latency,
            signals={
                k: np.array([f(it) for it in items], dtype=float) for k, f in self._signals.items()
            },
        )


@pytest.fixture
def fake_model() -> type[FakeModel]:
    return FakeModel


# -- a real redis-server for the Redis Streams tests ------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server (>= 6.2) on 127.0.0.1 for the whole session; its base URL.

    Without one the tests FAIL (never skip), saying how to get it.
    """
    from tiered.testing.redis_server import RedisNotFound, RedisServer

    try:
        server = RedisServer().start()
    except RedisNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session's redis-server, emptied before the test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server
