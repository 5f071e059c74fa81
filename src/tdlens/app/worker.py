"""One worker thread that runs every model call of the explorer, fed by a bounded queue.

The model is shared by all requests: running its forward and backward passes on one thread,
one job at a time, is what keeps concurrent requests from interleaving inside it. Identical
jobs that are queued or running are merged, so a burst of the same request costs one run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

from .methods import ExplorerError

__all__ = ["Worker"]


class Worker:
    """Runs submitted jobs one at a time on a daemon thread.

    Args:
        max_queued: How many jobs may wait; a further one waits ``wait_s`` for a slot, then
            is refused with a 503 :class:`ExplorerError`.
        wait_s: How long :meth:`submit` waits for a queue slot.
    """

    def __init__(self, max_queued: int = 64, wait_s: float = 10.0) -> None:
        self._queue: queue.Queue[tuple[Callable[[], Any], Future[Any], Hashable] | None] = (
            queue.Queue(max_queued)
        )
        self._wait_s = wait_s
        self._pending: dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, key: Hashable, job: Callable[[], Any]) -> Future[Any]:
        """Queues ``job`` (or joins the queued or running job with the same ``key``)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tdlens-explorer-worker", daemon=True
                )
                self._thread.start()
            running = self._pending.get(key)
            if running is not None:
                return running
            future: Future[Any] = Future()
            self._pending[key] = future
        try:
            self._queue.put((job, future, key), timeout=self._wait_s)
        except queue.Full:
            with self._lock:
                self._pending.pop(key, None)
            raise ExplorerError(
                "the explorer is busy (too many attributions waiting); try again shortly", 503
            ) from None
        return future

    def run(self, key: Hashable, job: Callable[[], Any], timeout: float | None = None) -> Any:
        """Runs ``job`` on the worker and returns its result (or raises its exception)."""
        return self.submit(key, job).result(timeout)

    def close(self) -> None:
        """Stops the thread after the queued jobs."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, future, key = item
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(job())
                    except BaseException as error:  # handed to the waiting request
                        future.set_exception(error)
            finally:
                with self._lock:
                    self._pending.pop(key, None)
