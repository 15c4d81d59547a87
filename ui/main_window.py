"""The main window shell: panels as tabs, menus, a message banner, a status-bar task indicator.

It knows nothing about GGUF or workers. It emits `open_requested(path)` (File → Open, Open
Recent, drag-and-drop) and `connect_requested()` (File → Connect to Server…), and the app
wires them; other features plug in with
`add_panel(name, widget)` (a tab), `add_dock(name, title, widget)` (a rearrangeable panel
beside the tabs, listed in a View submenu) and `menu(title)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QDockWidget, QFileDialog, QFrame,
                               QHBoxLayout, QLabel, QMainWindow, QMenu, QPlainTextEdit,
                               QProgressBar, QPushButton, QStyle, QTabWidget, QToolButton,
                               QVBoxLayout, QWidget)

GGUF_FILTER = "GGUF models (*.gguf);;All files (*)"
ABOUT_TEXT = ("LLM Lens — see inside a local language model: chat, browse GGUF files, "
              "inspect attention and MoE routing. Pure-PyTorch CPU engine.")


def _gguf_paths(mime) -> list[str]:
    if not mime.hasUrls():
        return []
    return [u.toLocalFile() for u in mime.urls()
            if u.isLocalFile() and u.toLocalFile().lower().endswith(".gguf")]


class MessageBanner(QFrame):
    """An inline, non-modal message strip (errors never block the window or a test)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("MessageBanner")
        self.setFrameShape(QFrame.StyledPanel)
        self.icon = QLabel()
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setAutoRaise(True)
        self.close_button.setToolTip("Dismiss")
        self.close_button.clicked.connect(self.hide)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 6, 6, 6)
        lay.addWidget(self.icon)
        lay.addWidget(self.text, 1)
        lay.addWidget(self.close_button, 0, Qt.AlignTop)
        self.hide()

    def show_message(self, text: str, kind: str = "error") -> None:
        colors = {"error": ("#fdecea", "#b3261e", QStyle.SP_MessageBoxCritical),
                  "info": ("#e8f0fe", "#1a56b0", QStyle.SP_MessageBoxInformation)}
        bg, border, icon = colors.get(kind, colors["info"])
        self.setStyleSheet(f"#MessageBanner {{ background: {bg}; border: 1px solid {border};"
                           f" border-radius: 4px; }} #MessageBanner QLabel {{ color: #202124; }}")
        self.icon.setPixmap(self.style().standardIcon(icon).pixmap(20, 20))
        self.text.setText(text)
        self.kind = kind
        self.show()

    def message(self) -> str:
        return self.text.text() if self.isVisible() else ""


class TaskIndicator(QWidget):
    """Status-bar progress for a long task: label, bar (busy or 0-100 %) and a Cancel button."""

    cancel_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel()
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(160)
        self.bar.setMaximumHeight(14)
        self.bar.setTextVisible(False)
        self.cancel = QPushButton("Cancel")
        self.cancel.setFlat(True)
        self.cancel.clicked.connect(self.cancel_requested)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.label)
        lay.addWidget(self.bar)
        lay.addWidget(self.cancel)
        self.hide()

    def start(self, text: str, busy: bool = True) -> None:
        self.label.setText(text)
        self.bar.setRange(0, 0 if busy else 100)
        self.bar.setValue(0)
        self.show()

    def set_fraction(self, fraction: float) -> None:
        self.bar.setRange(0, 100)
        self.bar.setValue(int(100 * fraction))

    def stop(self) -> None:
        self.hide()


class MainWindow(QMainWindow):
    open_requested = Signal(str)  # a path the user wants to open
    open_default_requested = Signal()
    open_demo_requested = Signal()  # the small trained MoE shipped with the app
    connect_requested = Signal()  # File → Connect to server…: chat with a remote model
    clear_recent_requested = Signal()
    closing = Signal()  # the window is closing: stop background work
    MAX_RECENT_SHOWN = 10

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("LLM Lens")
        self.setAcceptDrops(True)
        self.banner = MessageBanner()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(6, 6, 6, 0)
        lay.setSpacing(6)
        lay.addWidget(self.banner)
        lay.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        self.setDockOptions(QMainWindow.AnimatedDocks | QMainWindow.AllowNestedDocks
                            | QMainWindow.AllowTabbedDocks)
        self.docks: dict[str, QDockWidget] = {}
        self.task = TaskIndicator()
        self.statusBar().addPermanentWidget(self.task)
        self._menus: dict[str, QMenu] = {}
        # Replaceable in tests: returns a path or "" (the real dialog is modal by nature).
        self.ask_open_path: Callable[[], str] = self._ask_open_path
        # Help → About's tabs as (title, plain text): the app supplies versions and licences
        # (app/version.py), which this Qt-only module cannot look up itself.
        self.about_sections: Callable[[], list[tuple[str, str]]] = lambda: [("About", ABOUT_TEXT)]
        self.about_dialog: QDialog | None = None
        self._build_menus()
        self.resize(1400, 860)

    # -- extension points ---------------------------------------------------------------------

    def add_panel(self, name: str, widget: QWidget, *, select: bool = False) -> int:
        """Add a top-level panel (a tab) and return its index."""
        index = self.tabs.addTab(widget, name)
        self.view_menu.addAction(name, lambda w=widget: self.show_panel(w))
        if select:
            self.tabs.setCurrentIndex(index)
        return index

    def show_panel(self, widget_or_name: QWidget | str) -> None:
        for i in range(self.tabs.count()):
            if self.tabs.widget(i) is widget_or_name or self.tabs.tabText(i) == widget_or_name:
                self.tabs.setCurrentIndex(i)
                return
        raise KeyError(widget_or_name)

    def panel(self, name: str) -> QWidget | None:
        for i in range(self.tabs.count()):
            if self.tabs.tabText(i) == name:
                return self.tabs.widget(i)
        return None

    def add_dock(self, name: str, title: str, widget: QWidget,
                 area: Qt.DockWidgetArea = Qt.RightDockWidgetArea,
                 menu: QMenu | None = None) -> QDockWidget:
        """Add `widget` as a hidden dock panel named `name` (the key saveState remembers it by);
        its show/hide action goes into `menu` (default: View)."""
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock-{name}")
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        dock.hide()
        action = dock.toggleViewAction()
        action.setStatusTip(f"Show or hide the {title} panel")
        (menu or self.view_menu).addAction(action)
        self.docks[name] = dock
        return dock

    def menu(self, title: str) -> QMenu:
        """The top-level menu titled `title` ("&File", "&View", ...), created before Help if new."""
        if title not in self._menus:
            menu = QMenu(title, self)
            help_menu = self._menus.get("&Help")
            if help_menu is not None:
                self.menuBar().insertMenu(help_menu.menuAction(), menu)
            else:
                self.menuBar().addMenu(menu)
            self._menus[title] = menu
        return self._menus[title]

    # -- messages and progress ----------------------------------------------------------------

    def show_error(self, text: str) -> None:
        self.banner.show_message(text, "error")

    def show_info(self, text: str) -> None:
        self.banner.show_message(text, "info")

    def clear_message(self) -> None:
        self.banner.hide()

    # -- recent files -------------------------------------------------------------------------

    def set_recent_files(self, paths: list[str]) -> None:
        self.recent_menu.clear()
        for i, path in enumerate(paths[:self.MAX_RECENT_SHOWN]):
            label = f"&{i + 1}  {Path(path).name}" if i < 9 else f"{i + 1}  {Path(path).name}"
            action = self.recent_menu.addAction(label)
            action.setToolTip(path)
            action.setStatusTip(path)
            action.setData(path)
            action.triggered.connect(lambda _=False, p=path: self.open_requested.emit(p))
        if paths:
            self.recent_menu.addSeparator()
        clear = self.recent_menu.addAction("Clear Menu")
        clear.setEnabled(bool(paths))
        clear.triggered.connect(self.clear_recent_requested)
        self.recent_menu.setEnabled(True)

    def recent_actions(self) -> list[QAction]:
        return [a for a in self.recent_menu.actions() if a.data()]

    # -- internals ----------------------------------------------------------------------------

    def _build_menus(self) -> None:
        file_menu = self.menu("&File")
        self.open_action = file_menu.addAction("&Open…")
        self.open_action.setShortcut(QKeySequence.Open)
        self.open_action.triggered.connect(self._on_open)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.open_default_action = file_menu.addAction("Open &Default Model")
        self.open_default_action.setToolTip("The built-in Gemma 3 270M (Q4_K_M)")
        self.open_default_action.triggered.connect(self.open_default_requested)
        self.open_demo_action = file_menu.addAction("Open Demo &MoE")
        self.open_demo_action.setToolTip("A small trained DeepSeek-V2-style mixture of experts: "
                                         "browse it and chat with it to watch expert routing")
        self.open_demo_action.triggered.connect(self.open_demo_requested)
        self.connect_action = file_menu.addAction("&Connect to Server…")
        self.connect_action.setToolTip("Chat with a model served by an OpenAI-compatible server "
                                       "(llmlens serve, llama.cpp's llama-server, …)")
        self.connect_action.triggered.connect(self.connect_requested)
        file_menu.addSeparator()
        quit_action = file_menu.addAction("&Quit")
        quit_action.setShortcut(QKeySequence.Quit)
        quit_action.triggered.connect(self.close)
        self.view_menu = self.menu("&View")
        help_menu = self.menu("&Help")
        help_menu.addAction("&About LLM Lens", self._about)
        self.set_recent_files([])

    def _ask_open_path(self) -> str:
        path, _ = QFileDialog.getOpenFileName(self, "Open GGUF model", "", GGUF_FILTER)
        return path

    def _on_open(self) -> None:
        path = self.ask_open_path()
        if path:
            self.open_requested.emit(path)

    def _about(self) -> None:
        """Help → About: one scrollable, selectable text tab per section (versions, licences)."""
        if self.about_dialog is not None:
            # Rebuilt each time: what it reports can change (kernels loaded, another model).
            self.about_dialog.close()
            self.about_dialog.deleteLater()
        dialog = QDialog(self)
        dialog.setWindowTitle("About LLM Lens")
        tabs = QTabWidget()
        for title, text in self.about_sections():
            view = QPlainTextEdit(text)
            view.setReadOnly(True)
            view.setObjectName(f"about: {title}")
            tabs.addTab(view, title)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(dialog.close)
        lay = QVBoxLayout(dialog)
        lay.addWidget(tabs)
        lay.addWidget(buttons)
        dialog.resize(720, 540)
        self.about_dialog = dialog
        dialog.open()  # window-modal without a nested event loop

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.closing.emit()
        super().closeEvent(event)

    # -- drag and drop ------------------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if _gguf_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        if _gguf_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = _gguf_paths(event.mimeData())
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.open_requested.emit(paths[0])
