"""Dynamic batching: requests that arrive together run through the engine as one batch.

Each request puts its decoded images on a queue and awaits their logits. One task takes the first
waiting request, then gathers more until the batch holds `max_batch` images or `max_wait_ms` has
passed since that first one, and runs the batch on the one inference thread (onnxruntime uses
every core itself; two batches at once would only fight over them). It waits only while another
request is on its way (decoding its images, `arriving`): a lone request runs at once instead of
paying the whole wait for company that is not coming. While a batch runs, new requests queue up,
so under load batches fill without waiting at all.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

import torch

logger = logging.getLogger(__name__)


class Batcher:
    def __init__(self, logits_of, max_batch: int, max_wait_ms: float):
        """`logits_of`: uint8 (N, 3, H, W) -> float32 logits (N, classes), called on one thread."""
        self.logits_of, self.max_batch, self.max_wait = logits_of, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="tlearn-inference")
        self.batches = 0  # batches run, and the images in them: /health reports the mean batch
        self.images = 0
        self.waiting = 0  # requests awaiting their logits now
        self.incoming = 0  # requests decoding their images, about to join a batch

    @contextlib.contextmanager
    def arriving(self):
        """Around a request's decoding: a batch being gathered waits for it (up to max_wait_ms). The
        request's `logits` call must follow at once: `queue.put` does not suspend, so no batch can
        start between the two and miss it."""
        self.incoming += 1
        try:
            yield
        finally:
            self.incoming -= 1

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.inference.shutdown(wait=True)

    async def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of one request's images, computed in whichever batch they join."""
        future = asyncio.get_running_loop().create_future()
        self.waiting += 1
        try:
            await self.queue.put((images, future))
            return await future
        finally:
            self.waiting -= 1

    async def _gather(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        count, deadline = len(items[0][0]), loop.time() + self.max_wait
        while count < self.max_batch and (self.incoming or not self.queue.empty()):
            try:
                if self.queue.empty():
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                else:  # already waiting: take it even past the deadline
                    item = self.queue.get_nowait()
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            items.append(item)
            count += len(item[0])
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [item for item in await self._gather() if not item[1].done()]  # a client that left
            if not items:
                continue
            batch = torch.cat([images for images, _ in items])
            try:
                logits = await loop.run_in_executor(self.inference, self.logits_of, batch)
            except Exception as error:  # the engine failed: every request in the batch hears it
                logger.exception("inference failed")
                for _, future in items:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            start = 0
            for images, future in items:
                if not future.done():
                    future.set_result(logits[start:start + len(images)])
                start += len(images)
