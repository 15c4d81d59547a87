"""Colour helpers: the chat widgets derive every colour from the current palette.

Following the palette (instead of fixed colours) is what makes the chat readable in both the
system's light and dark themes, and makes it restyle itself when the theme changes.
"""

from __future__ import annotations

from PySide6.QtCore import QCoreApplication, QEvent, QObject, Signal
from PySide6.QtGui import QColor, QPalette


def is_dark(palette: QPalette) -> bool:
    """True when the window background is darker than its text."""
    return palette.color(QPalette.Window).lightness() < palette.color(QPalette.WindowText).lightness()


def mix(a: QColor, b: QColor, t: float) -> QColor:
    """Linear blend: t=0 gives `a`, t=1 gives `b`."""
    return QColor(round(a.red() + (b.red() - a.red()) * t),
                  round(a.green() + (b.green() - a.green()) * t),
                  round(a.blue() + (b.blue() - a.blue()) * t))


def dark_palette() -> QPalette:
    """A dark palette (Fusion-style) for screenshots and for platforms without a dark theme."""
    p = QPalette()
    window, base, text = QColor(37, 37, 40), QColor(28, 28, 31), QColor(222, 222, 226)
    for group in (QPalette.Active, QPalette.Inactive):
        p.setColor(group, QPalette.Window, window)
        p.setColor(group, QPalette.WindowText, text)
        p.setColor(group, QPalette.Base, base)
        p.setColor(group, QPalette.AlternateBase, QColor(44, 44, 48))
        p.setColor(group, QPalette.Text, text)
        p.setColor(group, QPalette.Button, QColor(48, 48, 52))
        p.setColor(group, QPalette.ButtonText, text)
        p.setColor(group, QPalette.ToolTipBase, window)
        p.setColor(group, QPalette.ToolTipText, text)
        p.setColor(group, QPalette.PlaceholderText, QColor(130, 130, 136))
        p.setColor(group, QPalette.Highlight, QColor(64, 128, 216))
        p.setColor(group, QPalette.HighlightedText, QColor(255, 255, 255))
        p.setColor(group, QPalette.Link, QColor(110, 170, 255))
        p.setColor(group, QPalette.BrightText, QColor(255, 90, 90))
    disabled = QColor(120, 120, 126)
    for role in (QPalette.WindowText, QPalette.Text, QPalette.ButtonText):
        p.setColor(QPalette.Disabled, role, disabled)
    p.setColor(QPalette.Disabled, QPalette.Window, window)
    p.setColor(QPalette.Disabled, QPalette.Base, base)
    p.setColor(QPalette.Disabled, QPalette.Button, QColor(48, 48, 52))
    return p


class PaletteWatcher(QObject):
    """Emits `changed` when the application palette changes (a theme switch).

    Qt sends ApplicationPaletteChange to the application and to top-level windows only, and a
    widget with its own style sheet gets no PaletteChange either, so widgets that derive
    colours from the palette subscribe here instead.
    """

    changed = Signal()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.ApplicationPaletteChange and obj is QCoreApplication.instance():
            self.changed.emit()
        return False


_watcher: PaletteWatcher | None = None


def palette_watcher() -> PaletteWatcher:
    global _watcher
    if _watcher is None:
        app = QCoreApplication.instance()
        _watcher = PaletteWatcher(app)
        app.installEventFilter(_watcher)
    return _watcher
