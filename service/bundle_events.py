"""Bundle change notifications between replicas over Redis pub/sub.

Replicas share the bundle folder. After an upload or delete, the replica
that made it publishes the bundle name; every other replica re-reads that
bundle folder (``BundleRegistry.sync``). Each (re)subscription also checks
every folder, so a replica that missed messages while Redis was down catches
up by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError

from service.metrics import ServiceMetrics
from service.registry import BundleRegistry

logger = logging.getLogger(__name__)

CHANNEL = "e4srec:bundles"


class BundleEvents:
    def __init__(self, client: aioredis.Redis, registry: BundleRegistry, metrics: ServiceMetrics, retry_s: float = 1.0):
        self.client = client
        self.registry = registry
        self.metrics = metrics
        self.retry_s = retry_s
        self.replica_id = uuid.uuid4().hex
        self._task: asyncio.Task | None = None

    async def publish(self, event: str, name: str, version: str) -> None:
        message = json.dumps({"replica": self.replica_id, "event": event, "name": name, "version": version})
        try:
            await self.client.publish(CHANNEL, message)
        except (RedisError, OSError) as error:
            # The change is on the shared disk; other replicas pick it up when
            # they resubscribe, which includes a full check of the folder.
            self.metrics.redis_errors.labels(operation="publish").inc()
            logger.warning("could not announce %s of bundle %s@%s to other replicas: %s", event, name, version, error)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="e4srec-bundle-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _listen(self) -> None:
        failures = 0
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                await run_in_threadpool(self.registry.sync_all)
                if failures:
                    logger.info("bundle events: resubscribed to Redis after %d failed attempts", failures)
                failures = 0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None:
                        # An idle channel: a ping notices a dead connection.
                        await pubsub.ping()
                        continue
                    await self._handle(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                failures += 1
                self.metrics.redis_errors.labels(operation="subscribe").inc()
                if failures == 1:
                    logger.warning("bundle events: lost Redis subscription (%s); retrying every %.0f s", error, self.retry_s)
                await asyncio.sleep(self.retry_s)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    async def _handle(self, data: bytes) -> None:
        try:
            event = json.loads(data)
            name = event["name"]
        except (ValueError, KeyError, TypeError):
            logger.warning("bundle events: ignored malformed message %r", data[:200])
            return
        if event.get("replica") == self.replica_id:
            return
        outcome = await run_in_threadpool(self.registry.sync, name)
        logger.info("bundle events: %s of %s@%s by another replica -> %s", event.get("event"), name, event.get("version"), outcome)
