"""Run slow work off the GUI thread: a function or a generator becomes a worker (à la superqt).

A worker is a `QRunnable` with a separate `WorkerSignals` QObject that lives on the GUI thread,
so every slot connected to it runs on the GUI thread (queued), whatever thread emits:

    started    the work began (emitted from the worker thread, delivered on the GUI thread)
    yielded    one value yielded by a generator function
    returned   the function's return value (a generator's `return x`)
    errored    the exception it raised (then no `returned`)
    aborted    `quit()` was honoured: the generator was closed at a yield (then no `returned`)
    finished   always last, whatever happened

Cancellation is cooperative: `quit()` sets a flag that a generator worker checks after every
`yield`, so long work should yield often (one chunk, one token). A plain function worker can
poll `worker.abort_requested` itself if it receives the worker (`create_worker(..., _pass_worker=True)`).

Workers run on private thread pools, not the global one, so a long chat generation never
starves file opening or tensor analysis. `start(low_priority=True)` uses a second pool whose
threads run at a lower OS priority (nice +10 on Linux/macOS): a CPU-bound analysis then
yields the cores to the GUI thread when the machine is busy, so the window stays smooth.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Generator
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

_MAX_THREADS = 8
LOW_PRIORITY_NICE = 10
_pool: QThreadPool | None = None
_low_pool: QThreadPool | None = None
_live: set["Worker"] = set()  # keeps Python wrappers alive while Qt runs them
_live_lock = threading.Lock()


def thread_pool(low_priority: bool = False) -> QThreadPool:
    global _pool, _low_pool
    if low_priority:
        if _low_pool is None:
            _low_pool = QThreadPool()
            _low_pool.setMaxThreadCount(_MAX_THREADS)
        return _low_pool
    if _pool is None:
        _pool = QThreadPool()
        _pool.setMaxThreadCount(_MAX_THREADS)
    return _pool


def _lower_thread_priority() -> None:
    """Nice the calling thread (Linux threads have their own nice value); best effort."""
    setpriority = getattr(os, "setpriority", None)
    if setpriority is None:
        return
    try:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < LOW_PRIORITY_NICE:
            setpriority(os.PRIO_PROCESS, tid, LOW_PRIORITY_NICE)
    except OSError:
        pass


class WorkerSignals(QObject):
    started = Signal()
    yielded = Signal(object)
    returned = Signal(object)
    errored = Signal(object)
    aborted = Signal()
    finished = Signal()


class Worker(QRunnable):
    """Runs `func(*args, **kwargs)` on a pool thread; a generator function is iterated."""

    def __init__(self, func: Callable[..., Any], *args: Any, _pass_worker: bool = False,
                 **kwargs: Any):
        super().__init__()
        # Qt must not delete the C++ runnable behind Python's back; `_live` owns the wrapper.
        self.setAutoDelete(False)
        self.signals = WorkerSignals()
        self._func = func
        self._args = args
        self._kwargs = dict(kwargs, worker=self) if _pass_worker else kwargs
        self._abort = threading.Event()
        self._low_priority = False
        self._running = threading.Event()
        self._done = threading.Event()
        # Forget the wrapper on the GUI thread (slots on plain callables are queued there), so
        # the signals QObject is never destroyed from the pool thread while events are pending.
        self.signals.finished.connect(self._forget)

    # Signal shortcuts so callers can write `worker.returned.connect(...)`.
    @property
    def started(self):
        return self.signals.started

    @property
    def yielded(self):
        return self.signals.yielded

    @property
    def returned(self):
        return self.signals.returned

    @property
    def errored(self):
        return self.signals.errored

    @property
    def aborted(self):
        return self.signals.aborted

    @property
    def finished(self):
        return self.signals.finished

    @property
    def abort_requested(self) -> bool:
        return self._abort.is_set()

    @property
    def is_running(self) -> bool:
        return self._running.is_set() and not self._done.is_set()

    @property
    def is_done(self) -> bool:
        return self._done.is_set()

    def quit(self) -> None:
        """Ask the worker to stop at its next yield (cooperative; returns at once)."""
        self._abort.set()

    def start(self, low_priority: bool = False) -> "Worker":
        """Queue the work; `low_priority` runs it on the niced pool (CPU-heavy background work)."""
        self._low_priority = low_priority
        with _live_lock:
            _live.add(self)
        thread_pool(low_priority).start(self)
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block the calling thread until the work is done (for shutdown and tests only)."""
        return self._done.wait(timeout_s)

    def run(self) -> None:  # called on the pool thread
        if self._low_priority:
            _lower_thread_priority()
        self._running.set()
        signals = self.signals
        try:
            signals.started.emit()
            if self._abort.is_set():
                signals.aborted.emit()
                return
            result = self._func(*self._args, **self._kwargs)
            if inspect.isgenerator(result):
                result, aborted = self._drive(result)
                if aborted:
                    signals.aborted.emit()
                    return
            signals.returned.emit(result)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none is lost
            signals.errored.emit(exc)
        finally:
            self._done.set()
            signals.finished.emit()

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self)

    def _drive(self, gen: Generator) -> tuple[Any, bool]:
        while True:
            try:
                value = next(gen)
            except StopIteration as stop:
                return stop.value, False
            self.signals.yielded.emit(value)
            if self._abort.is_set():
                gen.close()  # runs the generator's finally blocks on this thread
                return None, True


def create_worker(func: Callable[..., Any], *args: Any, _start: bool = False,
                  _connect: dict[str, Callable] | None = None, _pass_worker: bool = False,
                  **kwargs: Any) -> Worker:
    """Make a worker for `func(*args, **kwargs)`; `_connect` maps signal names to slots."""
    worker = Worker(func, *args, _pass_worker=_pass_worker, **kwargs)
    for name, slot in (_connect or {}).items():
        getattr(worker.signals, name).connect(slot)
    if _start:
        worker.start()
    return worker


def running_workers() -> list[Worker]:
    with _live_lock:
        return list(_live)


def shutdown_workers(timeout_s: float = 5.0) -> bool:
    """Ask every running worker to stop and wait for them (window close, test teardown)."""
    for worker in running_workers():
        worker.quit()
    deadline_ms = int(timeout_s * 1000)
    return all(thread_pool(low).waitForDone(deadline_ms) for low in (False, True))
