"""Per-user interaction histories, kept per bundle's item space.

With ``REDIS_URL`` set, histories live in Redis lists shared by every replica
(``e4srec:history:{bundle}:{user_id}``); otherwise in this process's memory.
Each history keeps its most recent ``max_length`` items.
"""

from __future__ import annotations

import asyncio
import collections

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.redis_connection import StateUnavailableError


class InMemoryHistories:
    def __init__(self, max_length: int, max_users: int = 1_000_000):
        self.max_length = max_length
        self.max_users = max_users
        self._histories: collections.OrderedDict[tuple[str, str], list[int]] = collections.OrderedDict()
        self._lock = asyncio.Lock()

    async def append(self, bundle: str, user_id: str, items: list[int]) -> list[int]:
        async with self._lock:
            key = (bundle, user_id)
            history = self._histories.pop(key, [])
            history = (history + items)[-self.max_length :]
            self._histories[key] = history
            # The least recently written user is dropped first once the store is full.
            while len(self._histories) > self.max_users:
                self._histories.popitem(last=False)
            return list(history)

    async def get(self, bundle: str, user_id: str) -> list[int]:
        return list(self._histories.get((bundle, user_id), []))

    async def delete(self, bundle: str, user_id: str) -> bool:
        async with self._lock:
            return self._histories.pop((bundle, user_id), None) is not None


class RedisHistories:
    def __init__(self, client: aioredis.Redis, max_length: int):
        self.client = client
        self.max_length = max_length

    @staticmethod
    def _key(bundle: str, user_id: str) -> str:
        return f"e4srec:history:{bundle}:{user_id}"

    async def append(self, bundle: str, user_id: str, items: list[int]) -> list[int]:
        key = self._key(bundle, user_id)
        try:
            async with self.client.pipeline(transaction=True) as pipeline:
                pipeline.rpush(key, *items)
                pipeline.ltrim(key, -self.max_length, -1)
                pipeline.lrange(key, 0, -1)
                _, _, stored = await pipeline.execute()
        except (RedisError, OSError) as error:
            raise StateUnavailableError("storing the events", error) from None
        return [int(value) for value in stored]

    async def get(self, bundle: str, user_id: str) -> list[int]:
        try:
            stored = await self.client.lrange(self._key(bundle, user_id), 0, -1)
        except (RedisError, OSError) as error:
            raise StateUnavailableError("reading the user's history", error) from None
        return [int(value) for value in stored]

    async def delete(self, bundle: str, user_id: str) -> bool:
        try:
            return bool(await self.client.delete(self._key(bundle, user_id)))
        except (RedisError, OSError) as error:
            raise StateUnavailableError("deleting the user's history", error) from None
