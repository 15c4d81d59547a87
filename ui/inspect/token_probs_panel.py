"""`TokenProbsPanel`: the alternatives the model weighed for the selected token, as bars.

For a generated token: its top-k candidates with their probabilities under the model, the
chosen one highlighted (added below the list when it was not among them), and the sampling
settings in force. For a prompt token: its teacher-forced probability when known, or a note
that it was not sampled.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QFont, QPainter, QPalette
from PySide6.QtWidgets import QLabel, QScrollArea, QWidget

from ui.chat.theme import mix
from ui.inspect.model import TokenView
from ui.inspect.panel import InspectPanel, tint, token_text

Row = tuple[int | None, int, str, float, bool]  # rank (None: outside the list), id, text, prob, chosen


class _BarList(QWidget):
    """Painted rows: rank, token, a bar as long as the probability, the percentage."""

    def __init__(self):
        super().__init__()
        self.rows: list[Row] = []

    def set_rows(self, rows: list[Row]) -> None:
        self.rows = rows
        self.setMinimumHeight(self._row_h() * len(rows) + 4)
        self.update()

    def _row_h(self) -> int:
        return self.fontMetrics().height() + 8

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(360, self.minimumHeight())

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        pal = self.palette()
        p.fillRect(self.rect(), pal.color(QPalette.Base))
        fm = self.fontMetrics()
        rh = self._row_h()
        text_w = min(180, max(80, self.width() // 3))
        pct_w = fm.horizontalAdvance("100.00 %") + 8
        bar_x = 40 + text_w
        bar_w = max(20, self.width() - bar_x - pct_w - 6)
        highlight = pal.color(QPalette.Highlight)
        plain_bar = mix(pal.color(QPalette.Base), pal.color(QPalette.Text), 0.35)
        bold = QFont(self.font())
        bold.setBold(True)
        for i, (rank, _id, text, prob, chosen) in enumerate(self.rows):
            y = 2 + i * rh
            if chosen:
                p.fillRect(QRect(0, y, self.width(), rh), tint(pal, highlight, 0.22))
            p.setFont(bold if chosen else self.font())
            p.setPen(pal.color(QPalette.Text))
            p.drawText(QRect(4, y, 34, rh), Qt.AlignRight | Qt.AlignVCenter,
                       "—" if rank is None else str(rank + 1))
            p.drawText(QRect(44, y, text_w - 8, rh), Qt.AlignLeft | Qt.AlignVCenter,
                       fm.elidedText(token_text(text, _id), Qt.ElideRight, text_w - 8))
            p.fillRect(QRect(bar_x, y + 4, max(1, round(bar_w * prob)), rh - 8),
                       highlight if chosen else plain_bar)
            p.drawText(QRect(bar_x + bar_w + 4, y, pct_w, rh), Qt.AlignRight | Qt.AlignVCenter,
                       f"{100 * prob:.2f} %")


def sampling_text(sampling: dict) -> str:
    """The settings that chose a token, in words. Temperature 0 is greedy decoding, where
    top-k, top-p, min-p and the seed play no part: listing them would suggest they did."""
    if not sampling:
        return "Sampling: settings not recorded"
    if sampling.get("temperature") == 0:
        rest = [f"{k.replace('_', ' ')} {v}" for k, v in sampling.items()
                if k in ("repeat_penalty", "repeat_last_n") and sampling.get("repeat_penalty") != 1]
        return "Sampling: greedy (temperature 0): the most probable token" + (
            " · " + " · ".join(rest) if rest else "")
    return "Sampling: " + " · ".join(
        f"{k.replace('_', ' ')} {'random' if k == 'seed' and v is None else v}"
        for k, v in sampling.items())


class TokenProbsPanel(InspectPanel):
    """Top-k alternatives of the selected token (no signals: it only displays)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Token probabilities: select a token", parent)
        self._token: TokenView | None = None
        self._sampling: dict = {}
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.bars = _BarList()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.bars)
        self.sampling_label = QLabel("")
        self.sampling_label.setWordWrap(True)
        self.sampling_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.body.addWidget(self.status)
        self.body.addWidget(scroll, 1)
        self.body.addWidget(self.sampling_label)

    # -- public -------------------------------------------------------------------------------

    def set_token(self, token: TokenView | None, sampling: dict | None = None) -> None:
        """Show `token`'s alternatives; `sampling` holds the settings that chose it (e.g.
        {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 1})."""
        self._token, self._sampling = token, dict(sampling or {})
        rows: list[Row] = []
        if token is None:
            self.set_caption("Token probabilities: select a token")
            self.status.setText("")
            self.bars.set_rows([])
            self.sampling_label.setText("")
            return
        for rank, (tid, text, prob) in enumerate(token.top):
            rows.append((rank, tid, text, float(prob), tid == token.id))
        if token.prob is not None and not any(r[4] for r in rows) and (rows or token.generated):
            rows.append((None, token.id, token.text, float(token.prob), True))
        self.bars.set_rows(rows)
        label = f"#{token.index} {token_text(token.text, token.id)!s}"
        if token.generated:
            self.set_caption(f"Token probabilities: {label}, the candidates the model weighed "
                             "(probabilities under the model), the chosen one highlighted")
            p = "" if token.prob is None else f"p = {token.prob:.4g}"
            outside = " (not in the top list)" if rows and rows[-1][0] is None else ""
            self.status.setText(f"Sampled {repr(token.text)} (id {token.id}) {p}{outside}")
            self.sampling_label.setText(sampling_text(self._sampling))
        else:
            self.set_caption(f"Token probabilities: {label}, a prompt token")
            self.status.setText("prompt token: not sampled" if token.prob is None else
                                f"prompt token: not sampled; teacher-forced p = {token.prob:.4g} "
                                "(the model's probability of this token given the text before it)")
            self.sampling_label.setText("")

    def rows(self) -> list[Row]:
        """The bars shown: (rank or None, id, text, prob, chosen)."""
        return list(self.bars.rows)

    def status_text(self) -> str:
        return self.status.text()

    def export_data(self, path: str | Path) -> None:
        """CSV: rank (1-based, empty outside the list), id, text, prob, chosen."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["rank", "id", "text", "prob", "chosen"])
            for rank, tid, text, prob, chosen in self.bars.rows:
                w.writerow(["" if rank is None else rank + 1, tid, text, prob, int(chosen)])
