"""Wiring of the main window: opening files in a worker, the GGUF browser, recent files.

`LensApp` owns the `ui.main_window.MainWindow`, the browser panel and the workers behind
them. Other features attach through `lens.window.add_panel(...)`, `lens.window.menu(...)`
and the `file_opened(GGUFFile)` signal.

Opening a file never blocks the GUI: `open_gguf` and `summarize` run in a worker, and while
they do the previous file stays shown. A bad file only produces a banner message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app import settings as app_settings_mod
from app.workers import Worker, create_worker, shutdown_workers
from engine.errors import LLMLensError
from engine.gguf.reader import GGUFFile, open_gguf
from ui.browser import BrowserWidget
from ui.main_window import MainWindow

SELECT_DEBOUNCE_MS = 60  # arrowing through the table starts one analysis, not twenty


@dataclass
class LoadedFile:
    gf: GGUFFile
    title: str
    subtitle: str
    summary_rows: list[tuple[str, Any]]


def _summary_rows(gf: GGUFFile) -> list[tuple[str, Any]]:
    from engine.gguf.summary import summarize

    try:
        summary = summarize(gf)
    except Exception as exc:  # noqa: BLE001 - a summary bug must not hide the rest of the file
        return [("Summary", f"unavailable: {exc}")]
    return list(summary.display_rows())


def load_file(path: str | os.PathLike) -> LoadedFile:
    """Open and summarise a GGUF file (worker thread). Raises GGUFError for bad files."""
    gf = open_gguf(path)
    try:
        from ui.format import human_bytes

        title = str(gf.metadata.get("general.name") or gf.path.name)
        subtitle = (f"{gf.path}  ·  GGUF v{gf.version}  ·  {human_bytes(gf.file_size)}  ·  "
                    f"{len(gf.tensors)} tensors  ·  {len(gf.metadata)} metadata keys")
        return LoadedFile(gf, title, subtitle, _summary_rows(gf))
    except BaseException:
        gf.close()
        raise


def load_default_file() -> LoadedFile:
    from engine.default_model import default_model_path

    return load_file(default_model_path())


def _slice_job(gf: GGUFFile, info, start: int, n: int):
    from app import tensor_analysis

    image, col_factor = tensor_analysis.slice_image(gf, info, start, n)
    return info, start, image, col_factor


def _analysis_job(gf: GGUFFile, info):
    # Imported here: tensor_analysis pulls in torch, which should not delay the window.
    from app import tensor_analysis

    return (yield from tensor_analysis.analyse_tensor(gf, info, tensor_analysis.CHUNK_VALUES))


class BrowserController(QObject):
    """Runs tensor analyses for the browser: one at a time, the newest request wins."""

    def __init__(self, browser: BrowserWidget, parent=None):
        super().__init__(parent)
        self.browser = browser
        self.gf: GGUFFile | None = None
        self.worker: Worker | None = None
        self._pending = None
        self._debounce = QTimer(self, singleShot=True, interval=SELECT_DEBOUNCE_MS)
        self._debounce.timeout.connect(self._start_pending)
        browser.tensor_selected.connect(self.request_analysis)
        browser.detail.cancel_requested.connect(self.cancel)
        browser.detail.analyse_requested.connect(self.analyse)
        browser.detail.slice_requested.connect(self.load_slice)
        self.slice_worker: Worker | None = None

    def set_file(self, loaded: LoadedFile) -> None:
        self.cancel()
        self.gf = loaded.gf
        gf = loaded.gf
        self.browser.set_file(loaded.title, loaded.subtitle, loaded.summary_rows,
                              gf.metadata, gf.metadata_types, gf.tensors)

    def request_analysis(self, info) -> None:
        self.browser.detail.show_tensor(info)
        self._stop_worker()
        self._pending = info
        self._debounce.start()

    def _start_pending(self) -> None:
        if self._pending is not None:
            info, self._pending = self._pending, None
            self.analyse(info)

    def analyse(self, info) -> Worker | None:
        if self.gf is None:
            return None
        self._stop_worker()
        detail = self.browser.detail
        if detail.info is not info:
            detail.show_tensor(info)
        elif not detail.is_running:
            detail.show_tensor(info)  # re-analysis: back to the running state
        worker = create_worker(_analysis_job, self.gf, info)
        worker.yielded.connect(lambda p, w=worker: self._on_progress(w, p))
        worker.returned.connect(lambda r, w=worker: self._on_result(w, r))
        worker.errored.connect(lambda e, w=worker: self._on_error(w, e))
        worker.aborted.connect(lambda w=worker: self._on_aborted(w))
        self.worker = worker
        worker.start(low_priority=True)  # CPU-bound: let the GUI thread have the cores first
        return worker

    def load_slice(self, info, start: int, n: int) -> Worker | None:
        """Rows of one tensor at full row resolution, for the heatmap's "Rows" mode."""
        if self.gf is None:
            return None
        if self.slice_worker is not None:
            self.slice_worker.quit()
        worker = create_worker(_slice_job, self.gf, info, start, n)
        worker.returned.connect(lambda r, w=worker: self._on_slice(w, r))
        worker.errored.connect(lambda e, w=worker: self._on_slice_error(w, e))
        self.slice_worker = worker
        worker.start(low_priority=True)
        return worker

    def _on_slice(self, worker: Worker, result) -> None:
        if worker is self.slice_worker:
            self.slice_worker = None
            self.browser.detail.show_slice(*result)

    def _on_slice_error(self, worker: Worker, exc: BaseException) -> None:
        if worker is self.slice_worker:
            self.slice_worker = None
            self.browser.detail.map_caption.setText(f"Error: {exc}")

    def cancel(self) -> None:
        self._debounce.stop()
        stopped = self._pending is not None or self.worker is not None
        self._pending = None
        self._stop_worker()
        if stopped:
            self.browser.detail.show_cancelled()

    def _stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.quit()  # its late signals are ignored: it is no longer self.worker
            self.worker = None

    def _on_progress(self, worker: Worker, progress) -> None:
        if worker is self.worker:
            self.browser.detail.set_progress(progress.fraction)

    def _on_result(self, worker: Worker, result) -> None:
        if worker is self.worker:
            self.worker = None
            self.browser.detail.show_analysis(result)

    def _on_error(self, worker: Worker, exc: BaseException) -> None:
        if worker is self.worker:
            self.worker = None
            self.browser.detail.show_error(str(exc))

    def _on_aborted(self, worker: Worker) -> None:
        if worker is self.worker:
            self.worker = None
            self.browser.detail.show_cancelled()


class LensApp(QObject):
    """The main window plus everything that drives it."""

    file_opened = Signal(object)   # GGUFFile, after the browser shows it
    open_failed = Signal(str)      # the message shown to the user

    def __init__(self, window: MainWindow | None = None, parent=None):
        super().__init__(parent)
        self.window = window or MainWindow()
        self.browser = BrowserWidget()
        self.window.add_panel("Browser", self.browser, select=True)
        self.browser_controller = BrowserController(self.browser, self)
        self.current: LoadedFile | None = None
        self.chat = None  # the ChatController, when app.gui installs the chat tab
        self.open_worker: Worker | None = None
        self._show_on_load = True
        self.window.open_requested.connect(self.open_path)
        self.window.open_default_requested.connect(self.open_default)
        self.window.open_demo_requested.connect(self.open_demo)
        self.window.clear_recent_requested.connect(self._clear_recent)
        self.window.task.cancel_requested.connect(self.cancel_open)
        self.window.closing.connect(self.shutdown)
        self._refresh_recent()

    @property
    def gguf(self) -> GGUFFile | None:
        return self.current.gf if self.current else None

    # -- opening ------------------------------------------------------------------------------

    def open_path(self, path: str | os.PathLike, *, show: bool = True) -> Worker:
        """Open `path` in a worker; `show` brings the Browser tab to the front when it is in."""
        return self._open(load_file, Path(path).name, path, show=show)

    def open_default(self, *, show: bool = True) -> Worker:
        return self._open(load_default_file, "the default model", show=show)

    def open_demo(self, *, show: bool = True) -> Worker | None:
        """The shipped demo MoE: browse it, and chat with it so the routing panels have experts."""
        from engine.default_model import demo_moe_path

        try:
            path = demo_moe_path()
        except LLMLensError as exc:
            self.window.show_error(str(exc))
            return None
        if self.chat is not None:
            self.chat.load_model(str(path))
        return self.open_path(path, show=show and self.chat is None)

    def _open(self, job, label: str, *args, show: bool = True) -> Worker:
        self.cancel_open()
        self._show_on_load = show
        self.window.task.start(f"Opening {label}…")
        worker = create_worker(job, *args)
        worker.returned.connect(lambda r, w=worker: self._on_loaded(w, r))
        worker.errored.connect(lambda e, w=worker, p=label: self._on_load_error(w, p, e))
        self.open_worker = worker
        worker.start()
        return worker

    def cancel_open(self) -> None:
        """Forget the file being opened (open_gguf cannot be interrupted; its result is dropped)."""
        if self.open_worker is not None:
            self.open_worker.quit()
            self.open_worker = None
            self.window.task.stop()

    def _on_loaded(self, worker: Worker, loaded: LoadedFile) -> None:
        if worker is not self.open_worker:
            loaded.gf.close()  # cancelled or superseded
            return
        self.open_worker = None
        self.window.task.stop()
        self.window.clear_message()
        self.current = loaded
        self.browser_controller.set_file(loaded)
        self.window.setWindowTitle(f"{loaded.gf.path.name} — LLM Lens")
        app_settings_mod.add_recent_file(loaded.gf.path)
        self._refresh_recent()
        if self._show_on_load:
            self.window.show_panel(self.browser)
        self.file_opened.emit(loaded.gf)

    def _on_load_error(self, worker: Worker, label: str, exc: BaseException) -> None:
        if worker is not self.open_worker:
            return
        self.open_worker = None
        self.window.task.stop()
        if isinstance(exc, LLMLensError):
            message = str(exc)
        else:
            message = f"Could not open {label}: {type(exc).__name__}: {exc}"
        if self.current is not None:
            message += f"\n{self.current.gf.path.name} is still open."
        self.window.show_error(message)
        self.open_failed.emit(message)

    # -- recent files -------------------------------------------------------------------------

    def _refresh_recent(self) -> None:
        paths = [p for p in app_settings_mod.recent_files() if Path(p).exists()]
        self.window.set_recent_files(paths)

    def _clear_recent(self) -> None:
        app_settings_mod.clear_recent_files()
        self._refresh_recent()

    def shutdown(self, timeout_s: float = 3.0) -> None:
        self.cancel_open()
        self.browser_controller.cancel()
        shutdown_workers(timeout_s)


def build_main_window() -> LensApp:
    return LensApp()
