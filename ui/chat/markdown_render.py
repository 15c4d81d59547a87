"""Markdown -> the HTML subset QTextDocument renders, for chat messages.

Raw HTML in a model's output is shown as text, never interpreted: the `html_block`
preprocessor and the inline `html` pattern are removed from python-markdown.
"""

from __future__ import annotations

import html

import markdown

_EXTENSIONS = ["fenced_code", "tables", "sane_lists", "nl2br"]


def _converter() -> markdown.Markdown:
    md = markdown.Markdown(extensions=_EXTENSIONS, output_format="html")
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md


_MD = _converter()


def render_markdown(text: str) -> str:
    """HTML for `text` as Markdown; code blocks come out as <pre><code>."""
    _MD.reset()
    # python-markdown keeps the newline before </code>: an empty last line in every block.
    return _MD.convert(text).replace("\n</code></pre>", "</code></pre>")


def render_plain(text: str) -> str:
    """HTML that shows `text` exactly (whitespace and newlines kept), for raw completions."""
    return f'<p style="white-space: pre-wrap;">{html.escape(text)}</p>'


def document_css(code_bg: str, code_fg: str, link: str) -> str:
    """Default stylesheet for a message document (colours come from the palette)."""
    return (
        f"pre {{ background-color: {code_bg}; color: {code_fg}; font-family: monospace;"
        f" padding: 6px; margin-top: 4px; margin-bottom: 4px; }}"
        f"code {{ font-family: monospace; background-color: {code_bg}; }}"
        f"a {{ color: {link}; }}"
        "p { margin-top: 2px; margin-bottom: 6px; }"
        "table { border-collapse: collapse; } td, th { padding: 2px 6px; }"
    )
