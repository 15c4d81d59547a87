"""What every inspection panel shares: a one-line caption, an export menu, colours, token text.

A panel is a plain widget fed plain data (`ui/inspect/model.py`); it computes nothing about the
model. `export_png(path, scale)` saves the panel as drawn (scale 2 for a high-resolution
figure) and `export_data(path)` saves the numbers behind it (CSV for lists and tables, NPZ for
matrices); the Export button offers both through a file dialog.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

from PySide6.QtCore import QEvent, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QMenu, QMessageBox, QSizePolicy,
                               QToolButton, QVBoxLayout, QWidget)

from ui.chat.theme import is_dark, mix

# Tableau-10 then its light partners: distinguishable categories for experts and heads.
_CATEGORICAL = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def category_color(i: int) -> QColor:
    """Colour of category `i` (an expert, a head); past 20 a golden-ratio walk round the hues."""
    if i < len(_CATEGORICAL):
        return QColor(_CATEGORICAL[i])
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.55 + 0.3 * ((i // 7) % 2), 0.85)
    return QColor(round(r * 255), round(g * 255), round(b * 255))


def tint(palette: QPalette, color: QColor, t: float) -> QColor:
    """`color` laid over the base colour with strength t (0..1): text stays readable on it."""
    return mix(palette.color(QPalette.Base), color, max(0.0, min(1.0, t)))


def heat_color(palette: QPalette, t: float) -> QColor:
    """A one-hue scale for cell backgrounds (probabilities): base colour at 0, accent at 1."""
    accent = QColor(90, 150, 230) if is_dark(palette) else QColor(60, 120, 215)
    return tint(palette, accent, 0.75 * t)


def token_text(text: str, token_id: int | None = None) -> str:
    """A token as one visible line: spaces as '·', newline and tab as symbols, empty or partial
    UTF-8 pieces as their id (so every token has a width and boundaries stay visible)."""
    if not text or "\ufffd" in text:
        return f"⟨{token_id}⟩" if token_id is not None else "⟨?⟩"
    return (text.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍"))


class _Caption(QLabel):
    """A one-line label that elides instead of widening the panel; the full text is the tooltip."""

    def __init__(self, text: str = ""):
        super().__init__()
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(20, super().minimumSizeHint().height())

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.setPen(self.palette().color(QPalette.WindowText))
        shown = self.fontMetrics().elidedText(self.text(), Qt.ElideRight, self.width())
        p.drawText(self.rect(), Qt.AlignLeft | Qt.AlignVCenter, shown)


class InspectPanel(QWidget):
    """Base of the panels: caption row (caption, optional controls, Export) over a body layout."""

    DATA_KIND = "CSV (*.csv)"  # subclasses that export matrices say "NumPy archive (*.npz)"

    def __init__(self, caption: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.caption_label = _Caption(caption)
        self.export_button = QToolButton()
        self.export_button.setText("Export")
        self.export_button.setPopupMode(QToolButton.InstantPopup)
        self.export_button.setToolTip("Save this panel as a picture or its data as a file")
        menu = QMenu(self.export_button)
        menu.addAction("Figure as PNG…", lambda: self._ask_png(1.0))
        menu.addAction("Figure as PNG at 2×…", lambda: self._ask_png(2.0))
        menu.addAction(f"Data as {self._data_ext()[1:].upper()}…", self._ask_data)
        self.export_button.setMenu(menu)
        self.header = QHBoxLayout()
        self.header.setContentsMargins(0, 0, 0, 0)
        self.header.addWidget(self.caption_label, 1)
        self.header.addWidget(self.export_button)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(6, 4, 6, 4)
        outer.setSpacing(4)
        outer.addLayout(self.header)
        self.body = QVBoxLayout()
        self.body.setContentsMargins(0, 0, 0, 0)
        self.body.setSpacing(4)
        outer.addLayout(self.body, 1)
        self._styled = True

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        # PaletteChange arrives after the widget has its new palette (the app-level watcher
        # fires before that), so palette-derived colours are rebuilt here.
        if event.type() == QEvent.PaletteChange and getattr(self, "_styled", False):
            self.restyle()
        super().changeEvent(event)

    def restyle(self) -> None:
        """Rebuild colours taken from the palette (subclasses that bake colours in)."""

    def caption(self) -> str:
        return self.caption_label.text()

    def set_caption(self, text: str) -> None:
        self.caption_label.setText(text)

    def add_header_widget(self, widget: QWidget) -> None:
        """Controls that belong on the caption row, before the Export button."""
        self.header.insertWidget(self.header.count() - 1, widget)

    def export_png(self, path: str | Path, scale: float = 1.0) -> None:
        """Save the panel as drawn; scale 2 gives a figure at twice the screen resolution."""
        dpr = self.devicePixelRatioF() * scale
        size = self.size()
        pixmap = QPixmap(QSize(max(1, round(size.width() * dpr)), max(1, round(size.height() * dpr))))
        pixmap.setDevicePixelRatio(dpr)
        pixmap.fill(self.palette().color(QPalette.Window))
        self.render(pixmap)
        if not pixmap.save(str(path), "PNG"):
            raise OSError(f"could not write {path}")

    def export_data(self, path: str | Path) -> None:
        """Save the numbers the panel shows (each panel says what it writes)."""
        raise NotImplementedError

    # -- dialogs ------------------------------------------------------------------------------

    def _ask_png(self, scale: float) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save figure", "", "PNG image (*.png)")
        if path:
            self.export_png(path if path.lower().endswith(".png") else path + ".png", scale)

    def _data_ext(self) -> str:
        return "." + self.DATA_KIND.split("*.")[1].rstrip(")")

    def _ask_data(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save data", "", self.DATA_KIND)
        if path:
            ext = self._data_ext()
            try:
                self.export_data(path if path.lower().endswith(ext) else path + ext)
            except (ValueError, OSError) as e:
                QMessageBox.warning(self, "Export", f"Nothing saved: {e}")
