"""File → Connect to server…: the base URL of an OpenAI-compatible server, an optional API
key, a "Fetch models" button listing what the server serves, Connect and Cancel.

The dialog knows nothing of HTTP: it is given `fetch(url, key) -> [model ids]` (blocking,
raising with a one-line message) and runs it on a thread of its own, so a slow or dead
server never freezes the window; `load_key(url)` fills in a remembered key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget)

DEFAULT_URL = "http://127.0.0.1:8080"


class ConnectDialog(QDialog):
    """Ask for a server; `values()` gives (url, key or None, model or None) after Connect."""

    fetched = Signal(int, object, str)  # (attempt, [model ids] | None, error message)

    def __init__(self, parent: QWidget | None, urls: list[str],
                 fetch: Callable[[str, str | None], list[str]],
                 load_key: Callable[[str], str | None] = lambda _url: None,
                 key_note: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle("Connect to server")
        self._fetch, self._load_key = fetch, load_key
        self._attempt = 0
        self.url_box = QComboBox()
        self.url_box.setEditable(True)
        self.url_box.addItems(urls or [DEFAULT_URL])
        self.url_box.setToolTip("The server's base URL, e.g. http://127.0.0.1:8080 "
                                "(`llmlens serve`, llama.cpp's llama-server, vLLM, …)")
        self.key_edit = QLineEdit()
        self.key_edit.setEchoMode(QLineEdit.Password)
        self.key_edit.setPlaceholderText("optional")
        self.key_note = QLabel(key_note)
        self.key_note.setWordWrap(True)
        self.model_box = QComboBox()
        self.model_box.setPlaceholderText("the server's first model")
        self.fetch_button = QPushButton("Fetch models")
        self.fetch_button.clicked.connect(self.fetch_models)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        models_row = QHBoxLayout()
        models_row.addWidget(self.model_box, 1)
        models_row.addWidget(self.fetch_button)
        form = QFormLayout()
        form.addRow("Server URL", self.url_box)
        form.addRow("API key", self.key_edit)
        form.addRow("", self.key_note)
        form.addRow("Model", models_row)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Cancel)
        self.connect_button = self.buttons.addButton("Connect", QDialogButtonBox.AcceptRole)
        self.connect_button.setDefault(True)
        self.buttons.accepted.connect(self._on_connect)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.status)
        lay.addWidget(self.buttons)
        self.fetched.connect(self._on_fetched)
        self.url_box.currentTextChanged.connect(self._url_changed)
        self._url_changed(self.url())
        self.resize(520, self.sizeHint().height())

    def url(self) -> str:
        return self.url_box.currentText().strip()

    def values(self) -> tuple[str, str | None, str | None]:
        return self.url(), self.key_edit.text() or None, self.model_box.currentText() or None

    def models(self) -> list[str]:
        return [self.model_box.itemText(i) for i in range(self.model_box.count())]

    def fetch_models(self) -> None:
        """List the server's models (GET /v1/models) without blocking the window."""
        url, key = self.url(), self.key_edit.text() or None
        if not url:
            self.status.setText("Enter the server's URL first.")
            return
        self._attempt += 1
        attempt = self._attempt
        self.fetch_button.setEnabled(False)
        self.status.setText(f"Asking {url} for its models…")

        def run() -> None:
            try:
                answer = (attempt, list(self._fetch(url, key)), "")
            except Exception as exc:  # noqa: BLE001 - shown in the dialog, whatever it is
                answer = (attempt, None, str(exc) or type(exc).__name__)
            try:
                self.fetched.emit(*answer)  # queued to the GUI thread
            except RuntimeError:
                pass  # the dialog was closed and deleted meanwhile

        threading.Thread(target=run, daemon=True, name="llmlens-fetch-models").start()

    def _on_fetched(self, attempt: int, models: list[str] | None, error: str) -> None:
        if attempt != self._attempt:
            return  # an older answer (the URL changed meanwhile)
        self.fetch_button.setEnabled(True)
        if models is None:
            self.status.setText(f"Could not list the models: {error}")
            return
        keep = self.model_box.currentText()
        self.model_box.clear()
        self.model_box.addItems(models)
        if models:
            self.model_box.setCurrentIndex(models.index(keep) if keep in models else 0)
        self.status.setText(f"{len(models)} model{'s' if len(models) != 1 else ''} available."
                            if models else "The server lists no model.")

    def _url_changed(self, url: str) -> None:
        self._attempt += 1  # answers for another URL no longer apply
        self.fetch_button.setEnabled(True)
        self.model_box.clear()
        key = self._load_key(url.strip()) if url.strip() else None
        if key and not self.key_edit.text():
            self.key_edit.setText(key)

    def _on_connect(self) -> None:
        if not self.url().startswith(("http://", "https://")):
            self.status.setText("The URL must start with http:// or https://")
            return
        self.accept()
