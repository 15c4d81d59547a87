"""The demo MoE's training and held-out text, gathered from files already on the machine.

Training: the Python standard library's own source (every `*.py` under the running
interpreter's `stdlib` directory, tests and `pydoc_data/topics.py` — the language reference
as text — included): code plus English docstrings and comments, PSF License 2.0.
Held-out: a DIFFERENT source, the installed Jinja2 and Python-Markdown packages (both
BSD-3-Clause, both dependencies of llmlens, so present wherever it is installed).

Documents are whole files, read as UTF-8 with a few filters that drop data dumps (huge files,
files that are mostly non-ASCII); the order is a seeded shuffle of the sorted paths, so the
same interpreter gives the same corpus byte for byte.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 800_000      # larger .py files in the stdlib are tables, not prose or code
MAX_NON_ASCII = 0.02          # encodings tests, unicode tables: mostly bytes we cannot learn from
HELD_OUT_PACKAGES = ("jinja2", "markdown")


@dataclass(frozen=True)
class Corpus:
    name: str
    licence: str
    root: str
    docs: tuple[str, ...]

    @property
    def n_bytes(self) -> int:
        return sum(len(d.encode()) for d in self.docs)


def _read_docs(paths: list[Path]) -> list[str]:
    docs = []
    for p in paths:
        if p.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        if sum(ord(ch) > 127 for ch in text) > MAX_NON_ASCII * len(text):
            continue
        docs.append(text)
    return docs


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def training_corpus(seed: int) -> Corpus:
    """Every usable `*.py` of the standard library (not site-packages), in a seeded order."""
    root = stdlib_dir()
    paths = sorted(p for p in root.rglob("*.py")
                   if "site-packages" not in p.parts and "dist-packages" not in p.parts)
    random.Random(seed).shuffle(paths)
    return Corpus(f"CPython {sys.version.split()[0]} standard library (*.py)",
                  "PSF License Agreement for Python (PSF-2.0)", str(root), tuple(_read_docs(paths)))


def held_out_corpus() -> Corpus:
    """The installed Jinja2 and Markdown packages' `*.py` files, sorted."""
    paths: list[Path] = []
    versions = []
    for name in HELD_OUT_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"held-out source package {name!r} is not installed")
        pkg_dir = Path(next(iter(spec.submodule_search_locations)))
        paths += sorted(pkg_dir.rglob("*.py"))
        dist = {"jinja2": "Jinja2", "markdown": "Markdown"}[name]
        versions.append(f"{dist} {importlib.metadata.version(dist)}")
    return Corpus(" + ".join(versions) + " (*.py)", "BSD-3-Clause (both)",
                  str(Path(paths[0]).parents[1]), tuple(_read_docs(paths)))
