"""The chat's status-bar fields: model, context use, process memory, speed / current activity.

Plain data in (names, counts, byte sizes, a timings dict); `app/` decides when to update them.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QLabel, QStatusBar

from ui.format import human_bytes, human_count


def speed_text(stats: dict[str, Any]) -> str:
    """'prompt 812 tok/s · TTFT 0.12 s · 41.3 tok/s' from a reply's timings (missing parts left out)."""
    parts = []
    if stats.get("prompt_tok_s"):
        parts.append(f"prompt {stats['prompt_tok_s']:.0f} tok/s")
    if stats.get("ttft_s") is not None:
        parts.append(f"TTFT {stats['ttft_s']:.2f} s")
    if stats.get("gen_tok_s"):
        parts.append(f"{stats['gen_tok_s']:.1f} tok/s")
    return " · ".join(parts)


def reply_stats_text(n_tokens: int, complete: bool, stats: dict[str, Any]) -> str:
    """The line above a reply: '24 tokens · prompt 812 tok/s · … · stopped'."""
    if not complete:
        return f"interrupted · {n_tokens} tokens"
    parts = [f"{n_tokens} tokens"]
    speed = speed_text(stats)
    if speed:
        parts.append(speed)
    reason = {"cancelled": "stopped", "length": "length limit", "context": "context full",
              "error": "error"}.get(stats.get("reason"))
    if reason:
        parts.append(reason)
    return " · ".join(parts)


class ChatStatus:
    """Four permanent status-bar labels; `install(bar)` adds them to a window's status bar."""

    def __init__(self) -> None:
        self.model_label = QLabel("No model")
        self.ctx_label = QLabel("")
        self.mem_label = QLabel("")
        self.speed_label = QLabel("")
        for lab in self.labels():
            lab.setContentsMargins(6, 0, 6, 0)

    def labels(self) -> tuple[QLabel, ...]:
        return (self.model_label, self.ctx_label, self.mem_label, self.speed_label)

    def install(self, bar: QStatusBar) -> None:
        for lab in self.labels():
            bar.addPermanentWidget(lab)

    def set_model(self, name: str, arch: str, n_params: int, quant: str, file_size: int,
                  path: str, compute: str = "", compute_why: str = "") -> None:
        """`compute`: which code multiplies the weights ("avx2 kernels", "portable path"), with
        the reason in the tooltip."""
        text = (f"{name} · {arch} · {human_count(n_params)} params · {quant} · "
                f"{human_bytes(file_size)}")
        self.model_label.setText(f"{text} · {compute}" if compute else text)
        tip = path if not compute_why else f"{path}\nCPU path: {compute} ({compute_why})"
        self.model_label.setToolTip(tip)

    def set_model_text(self, text: str) -> None:
        """Free text in the model field: "No model", "Loading X…"."""
        self.model_label.setText(text)

    def set_context(self, used: int | None, n_ctx: int | None) -> None:
        """`used` of `n_ctx` positions; `n_ctx` None (no model) clears the field."""
        self.ctx_label.setText("" if n_ctx is None else f"Context {used or 0} / {n_ctx}")

    def set_memory(self, rss_bytes: int) -> None:
        self.mem_label.setText(f"Memory {human_bytes(rss_bytes)}")

    def set_activity(self, text: str) -> None:
        """What the engine is doing or last did: 'Generating: 12 tokens · 30.1 tok/s'."""
        self.speed_label.setText(text)

    def set_speed(self, stats: dict[str, Any]) -> None:
        self.speed_label.setText(speed_text(stats))
