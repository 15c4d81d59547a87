"""Where the app keeps its settings: QSettings (org "LLMLens", app "llmlens").

`LLMLENS_CONFIG_DIR` redirects them to `<dir>/llmlens.ini`, so tests (and portable installs)
never touch the user's real settings.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings

ORG, APP = "LLMLens", "llmlens"
RECENT_KEY = "recent_files"
MAX_RECENT = 10


def app_settings() -> QSettings:
    config_dir = os.environ.get("LLMLENS_CONFIG_DIR")
    if config_dir:
        Path(config_dir).mkdir(parents=True, exist_ok=True)
        return QSettings(str(Path(config_dir) / "llmlens.ini"), QSettings.IniFormat)
    return QSettings(ORG, APP)


def recent_files(settings: QSettings | None = None) -> list[str]:
    s = settings or app_settings()
    value = s.value(RECENT_KEY, [])
    if isinstance(value, str):  # QSettings returns a bare string for one-item lists in INI files
        value = [value]
    return [str(v) for v in (value or []) if v]


def add_recent_file(path: str | os.PathLike, settings: QSettings | None = None) -> list[str]:
    s = settings or app_settings()
    path = str(Path(path).resolve())
    paths = [path] + [p for p in recent_files(s) if p != path]
    paths = paths[:MAX_RECENT]
    s.setValue(RECENT_KEY, paths)
    s.sync()
    return paths


def clear_recent_files(settings: QSettings | None = None) -> None:
    s = settings or app_settings()
    s.setValue(RECENT_KEY, [])
    s.sync()
