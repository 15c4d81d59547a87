"""One engine thread serving a bounded FIFO of jobs, for the HTTP server.

The model, its tokenizer and one preallocated KV cache belong to a single thread; requests
become `Job`s that run there one at a time in arrival order (a `queue.Queue`: FIFO). At most
`max_queue` jobs wait behind the running one; `submit` raises `QueueFull` past that, which the
app answers with 503. A job talks back to its request's event loop through an asyncio queue
(`emit` is thread-safe); cancelling it (client gone, server stopping) sets a flag that
`generate()`'s `should_stop` and `inspect()`'s `should_stop` poll, so a generation stops
within one token and a queued job is skipped.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """Every waiting slot is taken."""


@dataclass(frozen=True)
class Failed:
    """The job raised: `error` is what to answer (an ApiError or a plain message)."""

    error: Any


@dataclass(frozen=True)
class Finished:
    """A record of a job that ran (or was skipped), newest last in `EngineLoop.finished`."""

    seq: int
    kind: str
    reason: str  # generate()'s Done.reason, "ok" (trace), "cancelled", "error"
    n_tokens: int


@dataclass
class Job:
    """A unit of work for the engine thread; `work(engine, job)` runs there."""

    kind: str  # "generate" | "trace"
    work: Callable[[EngineLoop, Job], str]  # returns the Finished.reason
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    seq: int = -1  # arrival number, set by submit
    n_tokens: int = 0  # tokens generated so far (written by the engine thread)

    def emit(self, item: Any) -> None:
        """Hand `item` to the request's coroutine (from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()

    def should_stop(self) -> bool:
        return self.cancelled.is_set()


class EngineLoop:
    """The engine thread and its job queue."""

    def __init__(self, model: Any, tokenizer: Any, max_queue: int = 16) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.model, self.tokenizer = model, tokenizer
        self.max_queue = max_queue
        self.cache = None  # allocated on the first generation, reused after (overwritten)
        self.running: Job | None = None
        self.finished: collections.deque[Finished] = collections.deque(maxlen=256)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._seq = itertools.count(1)
        self._submit_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmlens-serve-engine",
                                            daemon=True)
            self._thread.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, job: Job) -> Job:
        """Queue `job` behind those already waiting; QueueFull when `max_queue` are waiting."""
        with self._submit_lock:  # sequence numbers follow queue order
            if self._stopping:
                raise QueueFull("the server is shutting down")
            seq = next(self._seq)
            job.seq = seq
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"{self.max_queue} requests are already waiting") from None
        return job

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the running and the queued jobs and end the thread."""
        with self._submit_lock:
            self._stopping = True
        job = self.running
        if job is not None:
            job.cancel()
        while True:
            try:
                waiting = self._queue.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                waiting.cancel()
                waiting.emit(Failed("the server is shutting down"))
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.should_stop():  # its client left while it waited
                self.finished.append(Finished(job.seq, job.kind, "cancelled", 0))
                continue
            self.running = job
            reason = "error"
            try:
                reason = job.work(self, job)
            except Exception as exc:  # noqa: BLE001 - one bad request must not end the thread
                job.emit(Failed(exc))
            finally:
                self.running = None
                self.finished.append(Finished(job.seq, job.kind, reason, job.n_tokens))
