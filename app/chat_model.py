"""The chat's loaded model: loading it in the engine worker, with progress, Cancel and errors.

`ModelSlot` owns the load request and `info` (the worker's `model_info` dict of the model in
use), and `engine`: the host that model lives in, the local `EngineHost` or a `RemoteHost`
(app/remote_host.py, same requests and signals); a load names its host, which becomes
`engine` once it succeeds. It shows a load's progress in the chat's notice strip and the model in the status bar;
a failed or cancelled load keeps the previous model. `loaded(info)` tells the chat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.engine_worker import EngineHost
from ui.chat import ChatPanel
from ui.status_bar import ChatStatus


class ModelSlot(QObject):
    """The model the chat talks to, and the load in progress (GUI thread)."""

    loaded = Signal(dict)

    def __init__(self, engine: EngineHost, panel: ChatPanel, status: ChatStatus,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine, self.panel, self.status = engine, panel, status
        self.info: dict[str, Any] | None = None
        self.load_id: int | None = None
        self._loading_host = engine
        self.n_ctx_setting = 0  # the context setting the model in use was built with
        self._loading_text = ""
        self.listen(engine)

    def listen(self, host) -> None:
        """Follow `host`'s load signals (every host that may load is listened to)."""
        w = host.worker
        w.loadStarted.connect(self._on_started)
        w.loadMessage.connect(self._on_message)
        w.loadProgress.connect(self._on_progress)
        w.modelLoaded.connect(self._on_loaded)
        w.loadFailed.connect(self._on_failed)

    @property
    def path(self) -> str:
        return self.info["path"] if self.info else ""

    def load(self, path: str, n_ctx: int, threads: int, host=None) -> None:
        """Load `path` ("" = the embedded default model); n_ctx/threads 0 = automatic.
        `host`: where (default: the host in use)."""
        self.n_ctx_setting = n_ctx
        name = Path(path).name if path else "the default model (Gemma 3 270M)"
        self._loading_host = host or self.engine
        self.load_id = self._loading_host.load(path, n_ctx, threads)
        self.panel.error.hide()
        self._loading_text = f"Loading {name}…"
        self._show_loading(self._loading_text)

    def cancel(self) -> None:
        """Forget the load (the worker stops within a layer and keeps the previous model)."""
        if self.load_id is None:
            return
        self._loading_host.cancel(self.load_id)
        self.load_id = None
        self.panel.notice.hide()
        self.show()
        self.status.set_activity("Loading cancelled")

    def show(self) -> None:
        i = self.info
        if i is None:
            self.status.set_model_text("No model")
        elif i.get("remote"):
            self.status.set_model_text(f"{i['name']} · {i['arch']} · on {i['remote']}")
            self.status.model_label.setToolTip(i["remote"])
        else:
            self.status.set_model(i["name"], i["arch"], i["n_params"], i["quant"],
                                  i["file_size"], i["path"], i.get("compute", ""),
                                  i.get("compute_why", ""))

    def _show_loading(self, text: str) -> None:
        self.panel.notice.show_text(text, progress=True, button="Cancel", closable=False)
        self.status.set_model_text(text)

    def _on_started(self, rid: int, path: str) -> None:
        if rid == self.load_id:
            self._loading_text = f"Loading {Path(path).name}…"
            self._show_loading(self._loading_text)

    def _on_message(self, rid: int, text: str) -> None:
        if rid == self.load_id:
            self._show_loading(text)  # e.g. the first run's kernel build

    def _on_progress(self, rid: int, percent: int) -> None:
        if rid == self.load_id:
            if self.panel.notice.label.text() != self._loading_text:  # after the kernel build
                self._show_loading(self._loading_text)
            self.panel.notice.set_progress(percent)

    def _on_loaded(self, rid: int, info: dict) -> None:
        if rid != self.load_id:
            return
        self.load_id = None
        self.info = info
        self.engine = self._loading_host
        self.panel.notice.hide()
        self.show()
        self.status.set_activity(f"Loaded in {info['load_seconds']:.1f} s")
        self.loaded.emit(info)

    def _on_failed(self, rid: int, message: str) -> None:
        if rid != self.load_id:
            return
        self.load_id = None
        self.panel.notice.hide()
        self.show()
        self.panel.show_error(f"Could not load the model: {message}")
