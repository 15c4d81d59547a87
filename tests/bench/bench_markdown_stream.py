"""Benchmark: stream a long Markdown reply through the real chat message widget (offscreen) and
report the largest event-loop gap, the figure a user feels as a stutter (target < 50 ms).

    QT_QPA_PLATFORM=offscreen python tests/bench/bench_markdown_stream.py [--tokens 4000]
        [--batch 2] [--full]

Token batches are posted from a timer the way the engine worker's signals arrive; a 1 ms timer
records when the event loop gets control back. `--full` converts the whole reply on every batch
(the behaviour before `StreamingMarkdown`), for comparison. Wall-clock figures depend on the
machine's load; the GUI thread's CPU time for the updates does much less.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PARAGRAPH = ("The **model** reads the prompt, then writes one token at a time; each `token` is "
             "chosen from the [distribution](https://example.org) of the next word. ")
CODE = "```python\ndef step(x):\n    # one decode step\n    return model(x)\n\nprint(step(1))\n```"
LIST = ("Steps:\n\n1. load the weights\n2. tokenize the prompt\n3. decode\n    - greedily\n"
        "    - or sampled")
TABLE = "| layer | heads | size |\n|---|---|---|\n| 0 | 4 | 640 |\n| 1 | 4 | 640 |"


def reply_tokens(n_tokens: int) -> list[str]:
    """A reply of about `n_tokens` tokens (~4 characters each) mixing every block kind."""
    blocks, i = [], 0
    while sum(len(b) for b in blocks) < 4 * n_tokens:
        blocks.append(PARAGRAPH * (1 + i % 3))
        blocks.append((CODE, LIST, TABLE, "## Section %d" % i)[i % 4])
        i += 1
    text = "\n\n".join(blocks)[: 4 * n_tokens]
    return [text[j:j + 4] for j in range(0, len(text), 4)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=2, help="tokens per update (the worker's batch)")
    ap.add_argument("--full", action="store_true", help="re-convert the whole text every update")
    args = ap.parse_args()

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from ui.chat import markdown_render
    from ui.chat.messages import MessageList

    app = QApplication.instance() or QApplication([])
    if args.full:
        markdown_render.MarkdownView.show = (
            lambda self, text: self.view.setHtml(markdown_render.render_markdown(text)))
    view = MessageList()
    view.resize(800, 900)
    view.show()
    widget = view.add_message("assistant")
    tokens = reply_tokens(args.tokens)
    state = {"i": 0, "text": "", "update_s": 0.0, "worst_update_s": 0.0, "cpu_s": 0.0,
             "worst_cpu_s": 0.0}
    ticks: list[float] = []

    tick = QTimer()
    tick.setInterval(1)
    tick.timeout.connect(lambda: ticks.append(time.perf_counter()))

    feed = QTimer()
    feed.setInterval(5)

    def push() -> None:
        i = state["i"]
        if i >= len(tokens):
            feed.stop()
            t0 = time.perf_counter()
            widget.set_text(state["text"])  # the final update, as on generation end
            state["final_s"] = time.perf_counter() - t0
            QTimer.singleShot(100, app.quit)
            return
        state["text"] += "".join(tokens[i:i + args.batch])
        state["i"] = i + args.batch
        t0, c0 = time.perf_counter(), time.thread_time()
        widget.set_text(state["text"])
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        state["update_s"] += dt
        state["worst_update_s"] = max(state["worst_update_s"], dt)
        state["cpu_s"] += dc
        state["worst_cpu_s"] = max(state["worst_cpu_s"], dc)

    feed.timeout.connect(push)
    tick.start()
    feed.start()
    t_start = time.perf_counter()
    app.exec()
    wall = time.perf_counter() - t_start
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    same = widget.body.toHtml() == _full_document_html(widget, state["text"])
    print(f"mode: {'full re-render' if args.full else 'incremental'}; {len(tokens)} tokens, "
          f"{len(state['text'])} chars, batches of {args.batch}")
    print(f"largest event-loop gap: {max(gaps) * 1000:.1f} ms (target < 50 ms)")
    print(f"set_text: total {state['update_s']:.2f} s over {wall:.1f} s wall, worst "
          f"{state['worst_update_s'] * 1000:.1f} ms, final {state['final_s'] * 1000:.1f} ms")
    # CPU time of the GUI thread: what the updates cost, whatever else runs on the machine.
    print(f"set_text CPU: total {state['cpu_s']:.2f} s, worst {state['worst_cpu_s'] * 1000:.1f} ms"
          f" (load average {os.getloadavg()[0]:.1f})")
    print(f"final document equals a full render: {same}")
    return 0 if same else 1


def _full_document_html(widget, text: str) -> str:
    from PySide6.QtGui import QTextDocument

    from ui.chat.markdown_render import render_markdown

    doc = QTextDocument()
    doc.setDefaultStyleSheet(widget.body.document().defaultStyleSheet())
    doc.setDocumentMargin(widget.body.document().documentMargin())
    doc.setDefaultFont(widget.body.document().defaultFont())
    doc.setHtml(render_markdown(text))
    return doc.toHtml()


if __name__ == "__main__":
    sys.exit(main())
