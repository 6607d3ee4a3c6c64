"""The service's Redis connection and the error raised when Redis is unreachable."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

logger = logging.getLogger(__name__)


class StateUnavailableError(RuntimeError):
    """Raised when a request needs stored state and Redis does not respond in time."""

    def __init__(self, operation: str, error: Exception):
        super().__init__(
            f"Redis is unreachable, so {operation} failed ({type(error).__name__}: {error}); "
            "requests with an explicit history still work, retry this one later"
        )


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """Create a client that fails within ``timeout_s`` instead of hanging when Redis is down.

    redis-py reconnects on the next command, so the service recovers by itself
    once Redis is back.
    """
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry_on_timeout=False,
        health_check_interval=30,
        decode_responses=False,
    )


def safe_url(url: str) -> str:
    """Return the URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
