"""One queue for all clients: requests are scored together, one model call per batch.

A batch starts with the oldest waiting request and takes the following ones, in
arrival order, while it stays within ``max_batch_items`` items and
``max_batch_tokens`` estimated tokens, waiting at most ``max_wait_ms`` for them
to arrive. A request is never split: one larger than a batch is scored alone
(the model still runs it in chunks of ``max_batch_items``). The model runs on one
worker thread, so the event loop keeps accepting requests while it computes, and
those requests form the next batch.

The queue is bounded (``max_queue_items``): :meth:`Batcher.submit` raises
:class:`QueueFull` instead of growing without limit. A request whose caller gave
up (timeout, disconnect) is dropped when its turn comes, unscored.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from prefkit.serve.config import ServeConfig
from prefkit.serve.metrics import ServerMetrics

Scores = tuple[np.ndarray, ...]
"""Arrays whose first axis is the item: ``(N, K)`` attribute values, ``(N,)`` rewards,
``(N, E)`` each ensemble member's reward (see :meth:`prefkit.serve.app.LoadedModel.score`)."""

ScoreFunction = Callable[[list[str], list[str]], Scores]
"""(prompts, responses) -> :data:`Scores` of the N items, from one model call."""


class QueueFull(Exception):
    """The queue holds ``max_queue_items`` items already; try again later."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new work."""


def estimate_tokens(prompt: str, response: str) -> int:
    """A tokenizer-free estimate: about four characters per token."""
    return (len(prompt) + len(response)) // 4 + 1


@dataclass
class Job:
    """The items of one request and where its answer goes."""

    prompts: list[str]
    responses: list[str]
    future: asyncio.Future[Scores]
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(map(estimate_tokens, self.prompts, self.responses))

    def __len__(self) -> int:
        return len(self.responses)


class Batcher:
    """Collects jobs from every request and scores them in batches on one worker thread."""

    def __init__(self, score: ScoreFunction, config: ServeConfig, metrics: ServerMetrics):
        self.score = score
        self.config = config
        self.metrics = metrics
        self._waiting: deque[Job] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefkit-model")
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Score what is queued, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def submit(
        self, prompts: Sequence[str], responses: Sequence[str]
    ) -> asyncio.Future[Scores]:
        """Queue one request's items; the future gives their :data:`Scores` (each array cut
        to this request's rows). Cancel the future to give up (the items are then dropped
        unscored)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if self._queued_items + len(responses) > self.config.max_queue_items:
            raise QueueFull(
                f"the queue is full ({self._queued_items} of {self.config.max_queue_items} items)"
            )
        job = Job(list(prompts), list(responses), asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._queued_items += len(job)
        self._update_gauges()
        self._wakeup.set()
        return job.future

    def _update_gauges(self) -> None:
        self.metrics.queue_items = self._queued_items
        self.metrics.queue_requests = len(self._waiting)

    def _take(self) -> Job:
        job = self._waiting.popleft()
        self._queued_items -= len(job)
        self._update_gauges()
        return job

    async def _wait_for_work(self, timeout: float | None) -> bool:
        """True once a job waits; False after ``timeout`` seconds or when closing with none."""
        while not self._waiting:
            if self._closing:
                return False
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return bool(self._waiting)
        return True

    def _fits(self, batch: list[Job], job: Job) -> bool:
        items = sum(map(len, batch)) + len(job)
        tokens = sum(queued.tokens for queued in batch) + job.tokens
        return items <= self.config.max_batch_items and tokens <= self.config.max_batch_tokens

    async def _collect(self) -> list[Job]:
        loop = asyncio.get_running_loop()
        batch = [self._take()]
        if not self.config.cross_request_batching:
            return batch
        deadline = loop.time() + self.config.max_wait_ms / 1000
        while True:
            if not self._waiting and not await self._wait_for_work(
                max(0.0, deadline - loop.time())
            ):
                return batch
            if not self._fits(batch, self._waiting[0]):
                return batch
            batch.append(self._take())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while await self._wait_for_work(None):
            batch = [job for job in await self._collect() if not self._abandoned(job)]
            if not batch:
                continue
            prompts = [prompt for job in batch for prompt in job.prompts]
            responses = [response for job in batch for response in job.responses]
            try:
                scores = await loop.run_in_executor(self._executor, self.score, prompts, responses)
            except Exception as error:  # the model failed: every request of the batch hears it
                self.metrics.model_errors += 1
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            self.metrics.record_batch(len(batch), len(responses))
            start = 0
            for job in batch:
                stop = start + len(job)
                if not job.future.done():
                    job.future.set_result(tuple(part[start:stop] for part in scores))
                start = stop

    def _abandoned(self, job: Job) -> bool:
        if job.future.done():  # cancelled by a caller that timed out or went away
            self.metrics.dropped_requests["abandoned"] += 1
            return True
        return False
