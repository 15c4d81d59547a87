"""`ThroughputPanel`: generation speed while it happens, and one line per reply afterwards.

Samples arrive in batches (`add_samples`) into a growing buffer; a 10 Hz timer draws whatever
is new, so a fast decode never makes the UI redraw per token. Per reply it shows TTFT, prompt
size and speed, decode speed, time per token (mean and p95), memory, and a llama.cpp-style
summary line; the history plot has one point per reply.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QGridLayout, QLabel, QSplitter, QVBoxLayout, QWidget

from ui.browser.format import human_bytes
from ui.inspect.model import ReplyTimings, ThroughputSample
from ui.inspect.panel import InspectPanel, category_color
from ui.widgets.heatmap import style_plot

REDRAW_MS = 100
STAT_COLUMNS = 4  # two rows of figures: the panel stays narrow enough for a dock


def per_token_stats(seconds: np.ndarray) -> tuple[float, float] | None:
    """(mean, p95) seconds per output token after the first, or None without such tokens.

    The first token is sampled from the prompt pass's logits: its own time is only the sampling,
    and its real cost is in the time to first token. Counting it would show a spike of
    thousands of tok/s and lower the mean, so it is left out, as llama.cpp and vLLM leave it
    out of their time per output token."""
    decode = seconds[1:]
    if decode.size == 0:
        return None
    return float(decode.mean()), float(np.percentile(decode, 95))


def reused_text(n_reused: int) -> str:
    """' (+340 cached)': prompt tokens the engine kept from earlier turns instead of processing."""
    return f" (+{n_reused} cached)" if n_reused else ""


def summary_line(t: ReplyTimings) -> str:
    """llama.cpp-style: 'prompt 34 tok @ 612.1 tok/s · first token 0.06 s · 128 tok @ 92.4
    tok/s (10.8 ms/tok, p95 12.1 ms)'."""
    parts = [f"prompt {t.prompt_tokens} tok @ {t.prompt_tok_s:.1f} tok/s"
             f"{reused_text(t.prompt_reused)}"]
    if t.ttft_s is not None:
        parts.append(f"first token {t.ttft_s:.2f} s")
    gen = f"{t.gen_tokens} tok @ {t.gen_tok_s:.1f} tok/s"
    stats = per_token_stats(np.asarray(t.per_token_s, dtype=np.float64))
    if stats is not None:
        gen += f" ({1000 * stats[0]:.1f} ms/tok, p95 {1000 * stats[1]:.1f} ms)"
    elif t.gen_tok_s > 0:
        gen += f" ({1000 / t.gen_tok_s:.1f} ms/tok)"
    parts.append(gen)
    return " · ".join(parts)


class ThroughputPanel(InspectPanel):
    """Live tokens per second and per-reply timings (no signals: it only displays)."""

    STAT_NAMES = ("TTFT", "Prompt", "Decode", "Per token", "Generated", "Process RSS", "Cache")

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Throughput: no reply yet", parent)
        self._seconds = np.zeros(1024, np.float64)  # the reply's per-token times, grown by doubling
        self._n = 0
        self._drawn = 0
        self._prompt_s: float | None = None
        self._history: list[ReplyTimings] = []
        self._generating = False

        grid = QGridLayout()
        grid.setHorizontalSpacing(14)
        grid.setVerticalSpacing(0)
        self.stats: dict[str, QLabel] = {}
        self._stat_captions: dict[str, QLabel] = {}
        self._cache_label = "KV cache"
        for i, name in enumerate(self.STAT_NAMES):
            row, col = 2 * (i // STAT_COLUMNS), i % STAT_COLUMNS
            caption = QLabel(name)
            caption.setEnabled(False)  # dimmed, palette-aware
            value = QLabel("—")
            value.setTextInteractionFlags(Qt.TextSelectableByMouse)
            f = value.font()
            f.setBold(True)
            value.setFont(f)
            grid.addWidget(caption, row, col)
            grid.addWidget(value, row + 1, col)
            self.stats[name] = value
            self._stat_captions[name] = caption
        grid.setColumnStretch(STAT_COLUMNS, 1)
        self.body.addLayout(grid)
        self.summary = QLabel("")
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.summary.setWordWrap(True)
        self.body.addWidget(self.summary)

        self.live_widget = pg.PlotWidget()
        self.live_plot = self.live_widget.getPlotItem()
        self.live_plot.setLabel("bottom", "token of the reply")
        self.live_plot.setLabel("left", "tok/s")
        self.live_plot.setClipToView(True)
        self.live_plot.setDownsampling(auto=True, mode="peak")
        self.live_curve = self.live_plot.plot()
        self.history_widget = pg.GraphicsLayoutWidget()
        self.speed_plot = self.history_widget.addPlot(title="decode tok/s per reply")
        self.ttft_plot = self.history_widget.addPlot(title="time to first token (s) per reply")
        self.speed_curve = self.speed_plot.plot(symbol="o", symbolSize=6)
        self.ttft_curve = self.ttft_plot.plot(symbol="o", symbolSize=6)
        for plot in (self.speed_plot, self.ttft_plot):
            plot.setLabel("bottom", "reply")
        plots = QSplitter(Qt.Vertical)
        plots.addWidget(self.live_widget)
        plots.addWidget(self.history_widget)
        plots.setStretchFactor(0, 3)
        plots.setStretchFactor(1, 2)
        box = QVBoxLayout()
        box.addWidget(plots)
        self.body.addLayout(box, 1)

        self._timer = QTimer(self, interval=REDRAW_MS)
        self._timer.timeout.connect(self.flush)
        self.restyle()

    # -- public -------------------------------------------------------------------------------

    def reply_started(self, prompt_tokens: int) -> None:
        self._n = self._drawn = 0
        self._prompt_s = None
        self._generating = True
        self.live_curve.setData([], [])
        for name in ("TTFT", "Decode", "Per token", "Generated"):
            self.stats[name].setText("—")
        self.stats["Prompt"].setText(f"{prompt_tokens} tok…")
        self.set_caption(f"Throughput: processing a {prompt_tokens}-token prompt…")
        self._timer.start()

    def prompt_done(self, n_tokens: int, seconds: float, tok_s: float, n_reused: int = 0) -> None:
        """n_tokens processed; n_reused more were kept in the cache from earlier turns."""
        self._prompt_s = seconds
        self.stats["Prompt"].setText(f"{n_tokens} tok @ {tok_s:.1f} tok/s{reused_text(n_reused)}")
        self.set_caption("Throughput: generating… (tokens per second of each token, live)")

    def add_samples(self, samples: list[ThroughputSample]) -> None:
        """A batch of generated tokens' timings; drawn by the timer, not here."""
        need = self._n + len(samples)
        if need > self._seconds.size:
            grown = np.zeros(max(need, 2 * self._seconds.size), np.float64)
            grown[:self._n] = self._seconds[:self._n]
            self._seconds = grown
        for s in samples:
            self._seconds[self._n] = s.seconds
            self._n += 1

    def reply_finished(self, timings: ReplyTimings) -> None:
        self.flush()
        self._timer.stop()
        self._generating = False
        self._history.append(timings)
        self._show_timings(timings)
        self._draw_history()
        self._history_caption()

    def _history_caption(self) -> None:
        n = len(self._history)
        self.set_caption(f"Throughput: {n} repl{'y' if n == 1 else 'ies'} · last reply's tok/s per "
                         "token above, one point per reply below" if n else "Throughput: no reply yet")

    def set_memory(self, rss_bytes: int, cache_bytes_per_token: int, cache_bytes: int,
                   cache_label: str = "KV cache") -> None:
        self.stats["Process RSS"].setText(human_bytes(rss_bytes))
        self.stats["Cache"].setText(f"{human_bytes(cache_bytes_per_token)}/tok · {human_bytes(cache_bytes)}")
        self._cache_label = cache_label
        self._stat_captions["Cache"].setText(cache_label)

    def set_history(self, history: list[ReplyTimings]) -> None:
        """Restore the per-reply history (e.g. after switching conversations)."""
        self._history = list(history)
        self._draw_history()
        self._history_caption()
        if self._history:
            last = self._history[-1]
            self._n = self._drawn = 0
            self.add_samples([ThroughputSample(i, s) for i, s in enumerate(last.per_token_s)])
            self.flush()
            self._show_timings(last)
        else:
            self.live_curve.setData([], [])
            self.summary.setText("")

    def history(self) -> list[ReplyTimings]:
        return list(self._history)

    def flush(self) -> None:
        """Draw samples that arrived since the last redraw (the timer calls this at 10 Hz)."""
        if self._drawn == self._n:
            return
        seconds = self._seconds[:self._n]
        tok_s = 1.0 / np.maximum(seconds[1:], 1e-9)  # decode steps: see per_token_stats
        self.live_curve.setData(np.arange(1, self._n, dtype=np.float64), tok_s)
        self._drawn = self._n
        self.stats["Generated"].setText(f"{self._n}")
        stats = per_token_stats(seconds)
        if stats is not None:
            self.stats["Per token"].setText(f"{1000 * stats[0]:.1f} ms, p95 {1000 * stats[1]:.1f} ms")
            self.stats["Decode"].setText(f"{1.0 / stats[0]:.1f} tok/s")
        if self._prompt_s is not None and self._generating:
            self.stats["TTFT"].setText(f"{self._prompt_s + seconds[0]:.2f} s")

    def live_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(token index, tok/s) as plotted."""
        x, y = self.live_curve.getData()
        return (np.zeros(0), np.zeros(0)) if x is None else (np.asarray(x), np.asarray(y))

    def export_data(self, path: str | Path) -> None:
        """CSV, one row per reply: prompt_tokens, prompt_tok_s, ttft_s, gen_tokens, gen_tok_s,
        ms_per_tok_mean, ms_per_tok_p95, cache_bytes_per_token, cache_bytes, rss_bytes, summary."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["reply", "prompt_tokens", "prompt_tok_s", "ttft_s", "gen_tokens", "gen_tok_s",
                        "ms_per_tok_mean", "ms_per_tok_p95", "cache_bytes_per_token", "cache_bytes",
                        "rss_bytes", "summary"])
            for i, t in enumerate(self._history):
                stats = per_token_stats(np.asarray(t.per_token_s, dtype=np.float64))
                w.writerow([i, t.prompt_tokens, t.prompt_tok_s, "" if t.ttft_s is None else t.ttft_s,
                            t.gen_tokens, t.gen_tok_s, "" if stats is None else 1000 * stats[0],
                            "" if stats is None else 1000 * stats[1], t.cache_bytes_per_token,
                            t.cache_bytes, t.rss_bytes, summary_line(t)])

    # -- internals ----------------------------------------------------------------------------

    def _show_timings(self, t: ReplyTimings) -> None:
        self.summary.setText(summary_line(t))
        self.stats["TTFT"].setText("—" if t.ttft_s is None else f"{t.ttft_s:.2f} s")
        self.stats["Prompt"].setText(f"{t.prompt_tokens} tok @ {t.prompt_tok_s:.1f} tok/s"
                                     f"{reused_text(t.prompt_reused)}")
        self.stats["Decode"].setText(f"{t.gen_tok_s:.1f} tok/s")
        self.stats["Generated"].setText(f"{t.gen_tokens}")
        stats = per_token_stats(np.asarray(t.per_token_s, dtype=np.float64))
        if stats is not None:
            self.stats["Per token"].setText(f"{1000 * stats[0]:.1f} ms, p95 {1000 * stats[1]:.1f} ms")
        if t.rss_bytes or t.cache_bytes:
            self.set_memory(t.rss_bytes, t.cache_bytes_per_token, t.cache_bytes, self._cache_label)

    def _draw_history(self) -> None:
        x = np.arange(1, len(self._history) + 1, dtype=np.float64)
        for plot in (self.speed_plot, self.ttft_plot):
            axis = plot.getAxis("bottom")
            if len(x) <= 20:
                axis.setTickSpacing(1, 1)  # replies are whole numbers
            else:
                axis.setTickSpacing()
        self.speed_curve.setData(x, np.asarray([t.gen_tok_s for t in self._history], dtype=np.float64))
        ttft = [(i + 1, t.ttft_s) for i, t in enumerate(self._history) if t.ttft_s is not None]
        self.ttft_curve.setData(np.asarray([a for a, _ in ttft], dtype=np.float64),
                                np.asarray([b for _, b in ttft], dtype=np.float64))

    def history_data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(reply number, decode tok/s, TTFT s) as plotted (TTFT NaN where unknown)."""
        x, speed = self.speed_curve.getData()
        if x is None:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        ttft = np.full(len(x), np.nan)
        tx, ty = self.ttft_curve.getData()
        if tx is not None:
            ttft[np.asarray(tx, dtype=int) - 1] = ty
        return np.asarray(x), np.asarray(speed), ttft

    def restyle(self) -> None:
        pal = self.palette()
        base = pal.color(QPalette.Base)
        self.live_widget.setBackground(base)
        self.history_widget.setBackground(base)
        accent = pal.color(QPalette.Highlight)
        for plot in (self.live_plot, self.speed_plot, self.ttft_plot):
            style_plot(plot, self)
        self.live_curve.setPen(pg.mkPen(accent, width=1.5))
        for curve, color in ((self.speed_curve, accent), (self.ttft_curve, category_color(1))):
            curve.setPen(pg.mkPen(color, width=1.5))
            curve.setSymbolBrush(pg.mkBrush(color))
            curve.setSymbolPen(pg.mkPen(color))
