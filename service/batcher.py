"""Micro-batching: concurrent recommendation requests share one forward pass.

Requests wait in a bounded queue. One worker task takes the oldest request,
keeps collecting until the batch is full or the oldest request has waited
``max_wait_s``, and runs the forward passes on a single worker thread, so the
event loop keeps accepting requests meanwhile. While a forward pass runs, new
requests pile up and form the next batch, so batches grow with load.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.metrics import ServiceMetrics
from service.ranking import RankedItems, RankingPlan
from service.registry import BundleRegistry

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    def __init__(self, capacity: int, retry_after_s: int):
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the request queue is full ({capacity} requests waiting); retry after {retry_after_s} s "
            "or raise E4SREC_MAX_QUEUE"
        )


@dataclass
class _Pending:
    plan: RankingPlan
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(
        self,
        registry: BundleRegistry,
        metrics: ServiceMetrics,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        mixed_batches: bool = True,
    ):
        self.registry = registry
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.mixed_batches = mixed_batches
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e4srec-forward")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="e4srec-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the service is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, plan: RankingPlan) -> RankedItems:
        if len(self._queue) >= self.max_queue:
            self.metrics.rejected_requests.labels(reason="queue_full").inc()
            raise QueueFullError(self.max_queue, retry_after_s=1)
        pending = _Pending(plan=plan, future=asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self.metrics.queue_depth.set(len(self._queue))
        self._arrived.set()
        return await pending.future

    async def _collect(self) -> list[_Pending]:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._queue.popleft()]
        deadline = batch[0].enqueued + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if self._queue:
                batch.append(self._queue.popleft())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                break
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [pending for pending in batch if not pending.future.done()]
            if not batch:
                continue
            started = time.monotonic()
            for pending in batch:
                self.metrics.queue_wait.observe(started - pending.enqueued)

            groups: dict[int, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(id(pending.plan.served), []).append(pending)
            if len(groups) > 1 and self.mixed_batches:
                # Requests for different bundles share one forward pass, each
                # row with its own adapter; the prefix cache does not apply.
                await self._forward(loop, batch, "mixed", self.registry.rank_mixed, [pending.plan for pending in batch])
                continue
            for group in groups.values():
                served = group[0].plan.served
                await self._forward(loop, group, served.name, self.registry.rank_batch, served, [pending.plan for pending in group])

    async def _forward(self, loop, group: list[_Pending], label: str, function, *arguments) -> None:
        self.metrics.batch_size.observe(len(group))
        started = time.monotonic()
        try:
            results = await loop.run_in_executor(self._executor, function, *arguments)
        except Exception as error:  # noqa: BLE001 - every waiting request must get an answer
            logger.exception("forward pass failed for %s (%d requests)", label, len(group))
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        self.metrics.forward_duration.labels(bundle=label).observe(time.monotonic() - started)
        for pending, result in zip(group, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
