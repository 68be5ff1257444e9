"""Background gathering of batches, `depth` ahead of the training step, into staging buffers.

    for batch in Prefetcher(count, produce, to_device, device, depth=2, buffer_shape=(B, H, W)): ...

`produce(i, buffer)` makes item i on the host (xrstudy.pixels.loaders gathers images from the memory-mapped
cache into `buffer`); `to_device(item, buffer)` queues its copy to the device. One thread is enough:
the gather is `np.take`, which releases the GIL, so it overlaps the step's Python and kernels
(benchmarks/bench_memory.py measures prefetch off vs on). On CUDA the buffers are a small ring of
page-locked arrays, so the copies are asynchronous; a buffer is refilled only after a CUDA event
recorded behind its last copy has completed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

HostBatch = tuple[Any, ...]
_DONE = object()


class Prefetcher:
    """Runs `produce(i, buffer)` for i in range(count) in a background thread, `depth` items ahead,
    and yields each result moved to `device` by `to_device(result, buffer)`.

    On CUDA the buffers are a small ring of page-locked staging arrays of `buffer_shape`; a buffer
    is handed back for reuse with a CUDA event recorded after its copy to the device was queued.
    On the CPU `produce` gets None and allocates (the step uses its result directly). depth 0 runs
    `produce` in the caller's thread (no background work).
    """

    def __init__(
        self,
        count: int,
        produce: Callable[[int, np.ndarray | None], HostBatch],
        to_device: Callable[[HostBatch, torch.Tensor | None], tuple[Any, ...]],
        device: torch.device,
        depth: int,
        buffer_shape: tuple[int, ...],
        stats: dict[str, float] | None = None,
    ):
        self.count, self.produce, self.to_device, self.device = count, produce, to_device, device
        self.depth, self.buffer_shape = depth, buffer_shape
        self.stats = stats if stats is not None else {}  # "wait_s": time the step waited for a batch

    def _buffers(self, n: int) -> list[torch.Tensor | None]:
        if self.device.type != "cuda":
            return [None] * n
        return [torch.empty(self.buffer_shape, dtype=torch.uint8, pin_memory=True) for _ in range(n)]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        if self.count == 0:
            return
        if self.depth <= 0:
            (buffer,) = self._buffers(1)
            for i in range(self.count):
                started = time.perf_counter()
                batch = self.to_device(self.produce(i, None if buffer is None else buffer.numpy()), buffer)
                if buffer is not None:
                    torch.cuda.current_stream(self.device).synchronize()  # the buffer is refilled next
                self.stats["wait_s"] = self.stats.get("wait_s", 0.0) + time.perf_counter() - started
                yield batch
            return
        yield from self._threaded()

    def _threaded(self) -> Iterator[tuple[Any, ...]]:
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        free: queue.Queue = queue.Queue()
        for buffer in self._buffers(self.depth + 2):
            free.put((buffer, None))
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for i in range(self.count):
                    while True:
                        if stop.is_set():
                            return
                        try:
                            buffer, copied = free.get(timeout=0.1)
                            break
                        except queue.Empty:
                            continue
                    if copied is not None:
                        copied.synchronize()  # the last copy out of this buffer has finished
                    host = self.produce(i, None if buffer is None else buffer.numpy())
                    if not put((host, buffer)):
                        return
                put(_DONE)
            except BaseException as error:  # noqa: BLE001 - re-raised in the consuming thread
                put(error)

        thread = threading.Thread(target=work, name="xrstudy-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                started = time.perf_counter()
                item = ready.get()
                self.stats["wait_s"] = self.stats.get("wait_s", 0.0) + time.perf_counter() - started
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                host, buffer = item
                batch = self.to_device(host, buffer)
                event = None
                if buffer is not None:
                    event = torch.cuda.Event()
                    event.record(torch.cuda.current_stream(self.device))
                free.put((buffer, event))
                yield batch
        finally:
            stop.set()
            thread.join(timeout=10)


__all__ = ["Prefetcher"]
