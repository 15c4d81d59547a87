"""app.workers: generator/function workers, signal order, errors, cooperative cancel."""

from __future__ import annotations

import os
import threading
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from app.workers import Worker, create_worker, running_workers, shutdown_workers  # noqa: E402


def counting(n):
    for i in range(n):
        yield i
    return "done"


def test_generator_worker_signal_order_and_values(qtbot):
    worker = create_worker(counting, 3)
    yielded, returned, threads = [], [], []
    worker.yielded.connect(lambda v: (yielded.append(v), threads.append(threading.current_thread())))
    worker.returned.connect(returned.append)
    signals = [worker.started, worker.yielded, worker.yielded, worker.yielded, worker.returned,
               worker.finished]
    with qtbot.waitSignals(signals, order="strict", timeout=5000):
        worker.start()
    assert yielded == [0, 1, 2]
    assert returned == ["done"]
    # Slots run on the GUI thread even though the generator ran on a pool thread.
    assert all(t is threading.main_thread() for t in threads)
    assert worker.is_done


def test_function_worker_returns_value_computed_off_the_gui_thread(qtbot):
    seen = []

    def work(a, b=0):
        seen.append(threading.current_thread())
        return a * 10 + b

    worker = create_worker(work, 4, b=2)
    with qtbot.waitSignal(worker.returned, timeout=5000) as blocker:
        worker.start()
    assert blocker.args == [42]
    assert seen and seen[0] is not threading.main_thread()


def test_errored_carries_exception_and_skips_returned(qtbot):
    def boom():
        yield 1
        raise ValueError("bad tensor")

    worker = create_worker(boom)
    returned, errors = [], []
    worker.returned.connect(returned.append)
    worker.errored.connect(errors.append)
    with qtbot.waitSignals([worker.errored, worker.finished], order="strict", timeout=5000):
        worker.start()
    [exc] = errors
    assert isinstance(exc, ValueError) and str(exc) == "bad tensor"
    assert returned == []


def test_quit_stops_generator_at_next_yield_and_runs_finally(qtbot):
    cleaned = threading.Event()
    steps = []

    def endless():
        try:
            i = 0
            while True:
                steps.append(i)
                yield i
                i += 1
                time.sleep(0.005)
        finally:
            cleaned.set()

    worker = create_worker(endless)
    returned = []
    worker.returned.connect(returned.append)
    worker.yielded.connect(lambda v: worker.quit() if v == 3 else None)
    with qtbot.waitSignals([worker.aborted, worker.finished], order="strict", timeout=5000):
        worker.start()
    assert cleaned.is_set()
    assert returned == []
    n = len(steps)
    time.sleep(0.05)
    assert len(steps) == n  # nothing runs after the abort
    assert worker.abort_requested


def test_quit_before_start_never_runs_the_function(qtbot):
    ran = []
    worker = create_worker(lambda: ran.append(1))
    worker.quit()
    with qtbot.waitSignals([worker.started, worker.aborted, worker.finished], order="strict",
                           timeout=5000):
        worker.start()
    assert ran == []


def test_pass_worker_lets_a_function_poll_for_cancel(qtbot):
    started = threading.Event()

    def poll(worker: Worker):
        started.set()
        while not worker.abort_requested:
            time.sleep(0.002)
        return "stopped"

    worker = create_worker(poll, _pass_worker=True)
    with qtbot.waitSignal(worker.returned, timeout=5000) as blocker:
        worker.start()
        assert started.wait(5)
        worker.quit()
    assert blocker.args == ["stopped"]


def test_create_worker_connect_and_start(qtbot):
    got = []
    idle = create_worker(counting, 2, _connect={"returned": got.append})
    qtbot.wait(50)
    assert got == [] and not idle.is_done  # not started unless asked
    # No reference kept: the pool keeps a started worker alive until it has finished.
    create_worker(counting, 2, _connect={"returned": got.append}, _start=True)
    qtbot.waitUntil(lambda: got == ["done"], timeout=5000)


def test_shutdown_workers_aborts_everything(qtbot):
    def endless():
        while True:
            yield
            time.sleep(0.002)

    workers = [create_worker(endless, _start=True) for _ in range(3)]
    qtbot.waitUntil(lambda: all(w.is_running for w in workers), timeout=5000)
    assert shutdown_workers(5.0)
    assert all(w.is_done for w in workers)
    qtbot.waitUntil(lambda: not any(w in running_workers() for w in workers), timeout=5000)


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_generators(qtbot, n):
    worker = create_worker(counting, n)
    got = []
    worker.yielded.connect(got.append)
    with qtbot.waitSignal(worker.returned, timeout=5000):
        worker.start()
    assert got == list(range(n))


def test_low_priority_workers_run_niced_on_their_own_pool(qtbot):
    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread priorities on this platform")

    def nice_of_this_thread():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    normal = create_worker(nice_of_this_thread)
    with qtbot.waitSignal(normal.returned, timeout=5000) as plain:
        normal.start()
    low = create_worker(nice_of_this_thread)
    with qtbot.waitSignal(low.returned, timeout=5000) as niced:
        low.start(low_priority=True)
    assert niced.args[0] >= 10
    assert plain.args[0] == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
