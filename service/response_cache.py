"""A cache of recommendation responses, keyed by bundle version and request.

The key contains the bundle version, so a replaced bundle never serves a
response computed by its predecessor. With ``REDIS_URL`` the cache is shared by
every replica; a Redis failure only bypasses the cache (and is counted), it
never fails a request.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)


def cache_key(bundle: str, version: str, history: list[int], k: int, exclude_seen: bool, exclude: list[int]) -> str:
    request = json.dumps([history, k, exclude_seen, sorted(set(exclude))], separators=(",", ":"))
    digest = hashlib.sha256(request.encode()).hexdigest()[:32]
    return f"e4srec:response:{bundle}:{version}:{digest}"


class InMemoryResponseCache:
    def __init__(self, ttl_s: float, metrics: ServiceMetrics, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self._entries.pop(key, None)
            self.metrics.response_cache_misses.inc()
            return None
        self._entries.move_to_end(key)
        self.metrics.response_cache_hits.inc()
        return entry[1]

    async def set(self, key: str, value: bytes) -> None:
        self._entries[key] = (time.monotonic() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RedisResponseCache:
    def __init__(self, client: aioredis.Redis, ttl_s: float, metrics: ServiceMetrics):
        self.client = client
        self.ttl_s = ttl_s
        self.metrics = metrics
        self._last_warning = 0.0

    def _bypass(self, operation: str, error: Exception) -> None:
        self.metrics.redis_errors.labels(operation=operation).inc()
        # One warning a minute is enough while Redis is down; the metric counts every failure.
        if time.monotonic() - self._last_warning > 60:
            self._last_warning = time.monotonic()
            logger.warning("response cache bypassed, Redis %s failed: %s", operation, error)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.client.get(key)
        except (RedisError, OSError) as error:
            self._bypass("cache_get", error)
            return None
        if value is None:
            self.metrics.response_cache_misses.inc()
        else:
            self.metrics.response_cache_hits.inc()
        return value

    async def set(self, key: str, value: bytes) -> None:
        try:
            await self.client.set(key, value, px=int(self.ttl_s * 1000))
        except (RedisError, OSError) as error:
            self._bypass("cache_set", error)
