"""Per-conversation settings: mode, system prompt, sampling, length, context and threads.

`set_values(dict)` fills the form without emitting; every user change emits `changed(dict)`
with the full set, which the controller stores with the conversation. Keys:
mode, system_prompt, temperature, top_k, top_p, min_p, repeat_penalty, seed (None = random),
max_new_tokens, n_ctx, threads.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QPlainTextEdit,
                               QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget)


class SettingsPanel(QScrollArea):
    changed = Signal(dict)

    def __init__(self, defaults: dict[str, Any], max_threads: int,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.defaults = dict(defaults)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setFrameShape(QScrollArea.NoFrame)
        inner = QWidget()
        self.mode = QComboBox()
        self.mode.addItem("Chat", "chat")
        self.mode.addItem("Complete", "complete")
        self.mode.setItemData(0, "Messages go through the model's chat template", Qt.ToolTipRole)
        self.mode.setItemData(1, "Raw text continuation: right for base models", Qt.ToolTipRole)
        self.mode_reason = QLabel()
        self.mode_reason.setWordWrap(True)
        self.mode_reason.setObjectName("modeReason")
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setPlaceholderText("System prompt for this conversation (Chat mode)")
        self.system_prompt.setFixedHeight(90)
        self.temperature = self._dspin(0.0, 5.0, 0.05, 2, "0 = greedy (always the most likely token)")
        self.top_k = self._spin(0, 100000, "Keep the k most likely tokens; 0 = off")
        self.top_p = self._dspin(0.0, 1.0, 0.01, 2, "Nucleus sampling; 1 = off")
        self.min_p = self._dspin(0.0, 1.0, 0.01, 2, "Drop tokens below min_p × the top probability; 0 = off")
        self.repeat_penalty = self._dspin(0.5, 3.0, 0.01, 2, "Penalise recently used tokens; 1 = off")
        self.seed = self._spin(-1, 2**31 - 1, "Random seed; -1 = a new random seed each time")
        self.seed.setSpecialValueText("random")
        self.max_new_tokens = self._spin(1, 65536, "Longest reply, in tokens")
        self.n_ctx = self._spin(0, 1 << 20, "Context window in tokens (the model reloads when "
                                            "it changes); 0 = automatic")
        self.n_ctx.setSpecialValueText("automatic")
        self.n_ctx.setSingleStep(512)
        self.threads = self._spin(0, max(1, max_threads), "CPU threads; 0 = automatic")
        self.threads.setSpecialValueText("automatic")
        self.reset_button = QPushButton("Reset sampling to defaults")

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        form.addRow("Mode", self.mode)
        form.addRow(self.mode_reason)
        form.addRow("System prompt", self.system_prompt)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-k", self.top_k)
        form.addRow("Top-p", self.top_p)
        form.addRow("Min-p", self.min_p)
        form.addRow("Repetition penalty", self.repeat_penalty)
        form.addRow("Seed", self.seed)
        form.addRow("Max new tokens", self.max_new_tokens)
        form.addRow("Context length", self.n_ctx)
        form.addRow("CPU threads", self.threads)
        layout = QVBoxLayout(inner)
        layout.addLayout(form)
        layout.addWidget(self.reset_button, 0, Qt.AlignLeft)
        layout.addStretch(1)
        self.setWidget(inner)

        self._filling = False
        # The system prompt is typed a character at a time: store it once typing pauses.
        self._debounce = QTimer(self, singleShot=True, interval=400)
        self._debounce.timeout.connect(self._emit)
        for w in (self.temperature, self.top_k, self.top_p, self.min_p, self.repeat_penalty,
                  self.seed, self.max_new_tokens, self.n_ctx, self.threads):
            w.valueChanged.connect(self._emit)
        self.mode.currentIndexChanged.connect(self._emit)
        self.system_prompt.textChanged.connect(lambda: None if self._filling else self._debounce.start())
        self.reset_button.clicked.connect(self._reset)
        self.set_values(self.defaults)
        self.set_mode_reason("")

    @staticmethod
    def _spin(lo: int, hi: int, tip: str) -> QSpinBox:
        s = QSpinBox()
        s.setRange(lo, hi)
        s.setToolTip(tip)
        s.setKeyboardTracking(False)
        return s

    @staticmethod
    def _dspin(lo: float, hi: float, step: float, decimals: int, tip: str) -> QDoubleSpinBox:
        s = QDoubleSpinBox()
        s.setRange(lo, hi)
        s.setSingleStep(step)
        s.setDecimals(decimals)
        s.setToolTip(tip)
        s.setKeyboardTracking(False)
        return s

    def values(self) -> dict[str, Any]:
        seed = self.seed.value()
        return {
            "mode": self.mode.currentData(),
            "system_prompt": self.system_prompt.toPlainText(),
            "temperature": round(self.temperature.value(), 4),
            "top_k": self.top_k.value(),
            "top_p": round(self.top_p.value(), 4),
            "min_p": round(self.min_p.value(), 4),
            "repeat_penalty": round(self.repeat_penalty.value(), 4),
            "seed": None if seed < 0 else seed,
            "max_new_tokens": self.max_new_tokens.value(),
            "n_ctx": self.n_ctx.value(),
            "threads": self.threads.value(),
        }

    def set_values(self, values: dict[str, Any]) -> None:
        v = {**self.defaults, **{k: x for k, x in values.items() if x is not None or k == "seed"}}
        self._filling = True
        try:
            i = self.mode.findData(v.get("mode", "chat"))
            self.mode.setCurrentIndex(max(i, 0))
            if self.system_prompt.toPlainText() != v.get("system_prompt", ""):
                self.system_prompt.setPlainText(v.get("system_prompt", ""))
            self.temperature.setValue(float(v["temperature"]))
            self.top_k.setValue(int(v["top_k"]))
            self.top_p.setValue(float(v["top_p"]))
            self.min_p.setValue(float(v["min_p"]))
            self.repeat_penalty.setValue(float(v["repeat_penalty"]))
            self.seed.setValue(-1 if v.get("seed") is None else int(v["seed"]))
            self.max_new_tokens.setValue(int(v["max_new_tokens"]))
            self.n_ctx.setValue(int(v.get("n_ctx") or 0))
            self.threads.setValue(int(v.get("threads") or 0))
        finally:
            self._filling = False

    def set_mode_reason(self, text: str) -> None:
        self.mode_reason.setText(text)
        self.mode_reason.setVisible(bool(text))

    def _reset(self) -> None:
        keep = {k: self.values()[k] for k in ("mode", "system_prompt", "n_ctx", "threads")}
        self.set_values({**self.defaults, **keep})
        self._emit()

    def _emit(self, *_) -> None:
        if not self._filling:
            self._debounce.stop()
            self.changed.emit(self.values())
