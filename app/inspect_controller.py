"""Wiring of the inspection panels (ui/inspect) to the chat's tokens and the engine worker.

`install_inspect(window, chat)` docks the panels beside the chat (hidden until opened from
View → Inspect; the layout is remembered in the app's settings), and keeps one selection for
the whole window (`SelectionModel`): a click on a token in a chat message, a click or an arrow
key in the token strip, or the newest token while a reply streams (unless the selection is
pinned) selects it, and every panel shows that token.

Where the numbers come from:
- a selected token: one `EngineHost.inspect` request (a teacher-forced pass in the worker),
  started INSPECT_DEBOUNCE_MS after the selection settles; a newer request cancels older ones;
- a streaming reply, when a panel is open: the `LiveTrace` given to `generate`, read on a
  LIVE_MS timer (newest token's attention, routing so far); no panel open, no trace, no cost;
- token probabilities: the streamed `TokenRecord`s (kept by `ConversationTokens`);
- throughput: the worker's prompt / token / finished signals, RSS from psutil, the KV cache
  size from the model info; the history from the stored message stats.

With a remote model (`model_info["remote"]`, app/remote_host.py) the same requests go to the
server when it is `llmlens serve` (`model_info["lens"]`); there is no live trace while a reply
streams. Other servers send only text: those panels say so instead (`REMOTE_NOTE`), and the
token probabilities panel does for every server.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QByteArray, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QAction

from app import settings as app_settings_mod
from app.inspect_views import (InspectRequest, InspectResult, LiveRouting, attention_layers,
                               default_range, live_attention_view, routing_view)
from app.remote_host import UNAVAILABLE as REMOTE_NOTE
from ui.inspect.attention_panel import AttentionPanel
from ui.inspect.logit_lens_panel import LogitLensPanel
from ui.inspect.model import ReplyTimings, ThroughputSample
from ui.inspect.routing_panel import RoutingPanel
from ui.inspect.throughput_panel import ThroughputPanel
from ui.inspect.token_probs_panel import TokenProbsPanel
from ui.inspect.token_strip import TokenStrip
from ui.main_window import MainWindow

INSPECT_DEBOUNCE_MS = 150  # arrowing through tokens starts one pass, not one per key
LIVE_MS = 100  # ~10 Hz: how often a streaming reply's trace is read
STATE_KEY = "inspect/window_state"
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                 "seed")


class SelectionModel(QObject):
    """The window's one selected token (an index into the chat's `ConversationTokens`)."""

    changed = Signal(object)  # int | None
    pinnedChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.index: int | None = None
        self.pinned = False

    def select(self, index: int | None) -> None:
        if index != self.index:
            self.index = index
            self.changed.emit(index)

    def follow(self, index: int | None) -> None:
        """Move to `index` (the newest token) unless the user pinned the selection."""
        if not self.pinned:
            self.select(index)

    def set_pinned(self, pinned: bool) -> None:
        if pinned != self.pinned:
            self.pinned = pinned
            self.pinnedChanged.emit(pinned)


class InspectController(QObject):
    """Panels, docks, selection and the requests behind them. GUI thread only."""

    def __init__(self, window: MainWindow, chat) -> None:
        super().__init__(window)
        self.window, self.chat = window, chat
        self.selection = SelectionModel(self)
        self.strip = TokenStrip()
        self.attention = AttentionPanel()
        self.routing = RoutingPanel()
        self.probs = TokenProbsPanel()
        self.lens = LogitLensPanel()
        self.throughput = ThroughputPanel()
        self.panels = {"strip": self.strip, "attention": self.attention, "routing": self.routing,
                       "probs": self.probs, "lens": self.lens, "throughput": self.throughput}
        self._pending: int | None = None  # the inspect request whose answer is awaited
        self._pending_what: tuple[str, ...] = ()
        self._routing_for: int | None = None  # token count the shown routing covers (complete)
        self._layer_head = (0, 0)
        self._matrix_range: tuple[int, int] | None = None
        self._attention_only = False  # the next request: attention alone
        # (selected token, conversation length) whose attention / lens the panels show: docks
        # re-emit visibilityChanged when floated or re-tabbed, which must not start a new pass
        self._shown: dict[str, tuple[int, int]] = {}
        self._was_open: dict[str, bool] = {}
        self._tokens_stale = False
        self._trace_version = -1
        self._live_routing: LiveRouting | None = None
        self._debounce = QTimer(self, singleShot=True, interval=INSPECT_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.request_inspection)
        self._live = QTimer(self, interval=LIVE_MS)
        self._live.timeout.connect(self._read_live)
        self._memory = QTimer(self, interval=1000)
        self._memory.timeout.connect(self._update_memory)
        self._build_docks()
        self._connect()
        chat.trace_factory = self.new_trace

    # -- docks and menu ------------------------------------------------------------------------

    def _build_docks(self) -> None:
        w = self.window
        self.menu = w.view_menu.addMenu("&Inspect")
        titles = {"strip": "Tokens", "attention": "Attention", "routing": "Expert routing",
                  "probs": "Token probabilities", "lens": "Logit lens",
                  "throughput": "Throughput"}
        self.docks = {}
        for name, panel in self.panels.items():
            area = Qt.BottomDockWidgetArea if name == "strip" else Qt.RightDockWidgetArea
            dock = w.add_dock(name, titles[name], panel, area, menu=self.menu)
            dock.visibilityChanged.connect(lambda _v, n=name: self._on_dock_toggled(n))
            self.docks[name] = dock
        # Default layout: attention over routing on the right, the smaller panels tabbed
        # with them; restoreState replaces it with the user's own.
        w.splitDockWidget(self.docks["attention"], self.docks["routing"], Qt.Vertical)
        w.tabifyDockWidget(self.docks["attention"], self.docks["lens"])
        w.tabifyDockWidget(self.docks["routing"], self.docks["probs"])
        w.tabifyDockWidget(self.docks["routing"], self.docks["throughput"])
        self.menu.addSeparator()
        self.show_all_action = QAction("Show &all", self.window)
        self.show_all_action.triggered.connect(self.show_all)
        self.menu.addAction(self.show_all_action)
        state = app_settings_mod.app_settings().value(STATE_KEY)
        if isinstance(state, QByteArray) and not state.isEmpty():
            w.restoreState(state)

    def show_all(self) -> None:
        for dock in self.docks.values():
            dock.show()
        self.docks["attention"].raise_()
        self.docks["routing"].raise_()
        # Leave the chat most of the width: the panels share about 40 % of it.
        self.window.resizeDocks([self.docks["attention"]], [int(self.window.width() * 0.4)],
                                Qt.Horizontal)

    def save_layout(self) -> None:
        s = app_settings_mod.app_settings()
        s.setValue(STATE_KEY, self.window.saveState())
        s.sync()

    def is_open(self, name: str) -> bool:
        """Open (shown, or a tab behind another dock) rather than strictly visible."""
        return self.docks[name].toggleViewAction().isChecked()

    def any_open(self) -> bool:
        return any(self.is_open(n) for n in self.docks)

    def _on_dock_toggled(self, name: str) -> None:
        opened = self.is_open(name)
        if self._was_open.get(name) == opened:
            return  # moved, floated or re-tabbed: nothing to fetch
        self._was_open[name] = opened
        if opened:
            self._refresh_tokens()
            if not self.chat.busy:
                self._debounce.start()
        if self.any_open():
            self._memory.start()
            self._update_memory()
        else:
            self._memory.stop()
        self._highlight(self.selection.index)

    # -- wiring --------------------------------------------------------------------------------

    def _connect(self) -> None:
        c = self.chat
        c.tokensReset.connect(self._on_tokens_reset)
        c.tokensAppended.connect(self._on_tokens_appended)
        c.promptProcessed.connect(self._on_prompt_processed)
        c.replyFinished.connect(self._on_reply_finished)
        for host in c.hosts:
            host.worker.inspected.connect(self._on_inspected)
            host.worker.failed.connect(self._on_failed)  # the chat shows the message
            host.worker.modelLoaded.connect(lambda _rid, _info: self._on_model_loaded())
        c.panel.messages.positionClicked.connect(self._on_chat_clicked)
        self.strip.tokenSelected.connect(self.select_by_user)
        self.strip.pinnedChanged.connect(self.selection.set_pinned)
        self.selection.pinnedChanged.connect(self._on_pinned)
        self.selection.changed.connect(self._on_selected)
        self.attention.layerHeadChosen.connect(self._on_layer_head)
        self.attention.rangeRequested.connect(self._on_range)
        self.routing.openDemoRequested.connect(self.open_demo)

    def open_demo(self) -> None:
        """The dense empty state's button: routing needs experts, load the demo MoE."""
        self.chat.actions["demo"].trigger()

    def _on_model_loaded(self) -> None:
        # Queued after the chat's own slot: model_info is the new model's.
        for panel in (self.attention, self.routing, self.lens):
            self._clear(panel)
        self._update_memory()

    def select_by_user(self, index: int) -> None:
        """A token the user picked: while a reply streams, it also pins the selection."""
        if self.chat.busy:
            self.selection.set_pinned(True)
        self.selection.select(index)

    def _on_chat_clicked(self, message: int, offset: int) -> None:
        index = self.chat.tokens.token_at(message, offset)
        if index is not None:
            self.select_by_user(index)

    def _on_pinned(self, pinned: bool) -> None:
        if self.strip.pinned() != pinned:
            self.strip.set_pinned(pinned)
        if not pinned:
            self.selection.follow(self.chat.tokens.newest)
        self._highlight(self.selection.index)

    # -- tokens --------------------------------------------------------------------------------

    def _on_tokens_reset(self) -> None:
        tokens = self.chat.tokens
        self._routing_for = None
        self._shown.clear()
        self._matrix_range = None
        self._trace_version = -1
        self._live_routing = None
        self._set_all_tokens()
        for panel in (self.attention, self.routing, self.lens):
            self._clear(panel)
        self.strip.set_routing(None)
        if self.chat.busy and len(tokens):
            self.throughput.reply_started(tokens.n_prompt)
        keep = self.selection.index if self.selection.pinned else None
        index = keep if keep is not None and keep < len(tokens) else tokens.newest
        self.selection.index = None  # re-announce even when the number is the same
        self.selection.select(index)
        if not self.chat.busy:
            self.throughput.set_history(self.history())

    def _engine_data(self) -> bool:
        """Whether the model in use can answer inspection passes (local, or llmlens serve)."""
        info = self.chat.model_info
        return info is None or not info.get("remote") or bool(info.get("lens"))

    def _clear(self, panel) -> None:
        if not self._engine_data():
            self._say_unavailable(panel)
            return
        if panel is self.attention:
            panel.set_attention(None)
        elif panel is self.routing:
            info = self.chat.model_info
            empty = routing_view(info, {}, {}, {}) if info is not None else None
            panel.set_routing(empty)  # "no model", "dense", or an MoE awaiting data
        elif panel is self.lens:
            panel.set_lens(None)

    def _say_unavailable(self, panel) -> None:
        """Empty `panel`, saying the remote server cannot fill it."""
        if panel is self.attention:
            panel.set_attention(None)
            panel.set_caption(f"Attention: {REMOTE_NOTE}")
        elif panel is self.routing:
            panel.set_routing(None)
            panel.empty_label.setText(f"Expert routing: {REMOTE_NOTE}")
            panel.demo_button.hide()
        elif panel is self.lens:
            panel.set_lens(None)
            panel.set_caption(f"Logit lens: {REMOTE_NOTE}")
        elif panel is self.probs:
            panel.set_caption("Token probabilities: the remote server does not expose this "
                              "(OpenAI-compatible streams carry no probabilities here)")
            panel.status.setText("")

    def _set_all_tokens(self) -> None:
        self.strip.set_tokens(self.chat.tokens.views())
        self._tokens_stale = True
        self._refresh_tokens()

    def _refresh_tokens(self) -> None:
        """Give the panels that label axes with tokens the current list (the strip has it)."""
        if self._tokens_stale:
            views = self.chat.tokens.views()
            self.attention.set_tokens(views)
            self.routing.set_tokens(views)
            self._tokens_stale = False

    def _on_tokens_appended(self, first: int) -> None:
        tokens = self.chat.tokens
        new = tokens.views(first)
        self.strip.append_tokens(new)
        # The other panels get the longer list on the live timer: not 25 relayouts a second.
        self._tokens_stale = True
        self.throughput.add_samples([
            ThroughputSample(index=v.index - tokens.n_prompt, seconds=tokens.seconds[v.index])
            for v in new if tokens.seconds[v.index] is not None])
        self.selection.follow(tokens.newest)
        if not self._live.isActive() and self.chat.trace is not None:
            self._live.start()

    # -- selection -----------------------------------------------------------------------------

    def _on_selected(self, index: int | None) -> None:
        self._attention_only = False
        self.strip.set_selected(index)
        self.routing.set_selected(index)
        self._highlight(index)
        if index is None:
            self.probs.set_token(None)
            return
        self._show_probs(index)
        if self.chat.busy and not self.selection.pinned:
            return  # following the stream: the live trace feeds the panels
        self._debounce.start()

    def _highlight(self, index: int | None) -> None:
        """Mark the selected token in the chat; not while merely following the stream."""
        view = self.chat.panel.messages
        span = self.chat.tokens.span_of(index) if index is not None else None
        if (span is None or not self.any_open()
                or (self.chat.busy and not self.selection.pinned)):
            view.set_highlight(None)  # a highlight only makes sense next to an open panel
        else:
            view.set_highlight(*span)

    def _show_probs(self, index: int) -> None:
        self.probs.set_token(self.chat.tokens.view(index), self.sampling())
        if (self.chat.model_info or {}).get("remote"):
            self._say_unavailable(self.probs)

    def sampling(self) -> dict[str, Any]:
        s = self.chat.conversation_settings()
        return {k: s[k] for k in SAMPLING_KEYS if k in s}

    def _on_layer_head(self, layer: int, head: int) -> None:
        previous, self._layer_head = self._layer_head, (layer, head)
        kinds = (self.chat.model_info or {}).get("layer_kinds", [])
        no_attention = layer < len(kinds) and kinds[layer] == "conv"  # nothing to fetch
        if layer != previous[0] and not no_attention:
            self._attention_only = True  # the matrix is per layer: fetch that layer's
            self._debounce.start()

    def _on_range(self, start: int, end: int) -> None:
        self._matrix_range = (start, end)
        self._attention_only = True
        self._debounce.start()

    # -- inspection requests -------------------------------------------------------------------

    def wanted(self) -> tuple[str, ...]:
        """What the open panels need for the selected token, minus what is already shown."""
        if not self._engine_data():
            return ()
        moe = bool(self.chat.model_info and self.chat.model_info.get("moe_layers"))
        what = []
        key = (self.selection.index, len(self.chat.tokens))
        if self.is_open("attention") and (self._attention_only
                                          or self._shown.get("attention") != key):
            what.append("attention")
        if (moe and (self.is_open("routing") or self.is_open("strip"))
                and self._routing_for != len(self.chat.tokens)):
            what.append("routing")
        if self.is_open("lens") and self._shown.get("lens") != key:
            what.append("lens")
        return tuple(what)

    def request_inspection(self) -> int | None:
        """Ask the worker for the selected token's data now (the debounce timer calls this)."""
        index, tokens = self.selection.index, self.chat.tokens
        if index is None or self.chat.model_info is None or index >= len(tokens):
            return None
        what = self.wanted()
        if self._attention_only:  # a new matrix layer or range: the rest is shown already
            what = tuple(k for k in what if k == "attention")
            self._attention_only = False
        if self._pending is not None:
            self.chat.engine.cancel(self._pending)  # superseded: but what it was to bring
            what = tuple(k for k in ("attention", "routing", "lens")  # is still wanted
                         if k in what or k in self._pending_what)
            self._pending = None
        if not what:
            return None
        rng = self._matrix_range
        if rng is not None and not rng[0] <= index < rng[1]:
            rng = None  # the selection left the chosen range: centre on it again
        request = InspectRequest(ids=tuple(tokens.ids), query=index, what=what,
                                 matrix_range=rng or default_range(index),
                                 matrix_layer=self._layer_head[0])
        self._pending, self._pending_what = self.chat.engine.inspect(request), what
        if "lens" in what:
            self.lens.set_busy(True)
        return self._pending

    def _on_inspected(self, rid: int, result: InspectResult) -> None:
        if rid != self._pending:
            return
        self._pending = None
        req = result.request
        if tuple(self.chat.tokens.ids[:len(req.ids)]) != req.ids:
            return  # the conversation changed under it
        if result.routing is not None:
            self._routing_for = len(req.ids)
            self.routing.set_routing(result.routing)
            self.strip.set_routing(result.routing)
        if result.attention is not None:
            self.attention.set_attention(result.attention)
            self._shown["attention"] = (req.query, len(req.ids))
        if "lens" in req.what:
            self.lens.set_busy(False)
            self.lens.set_lens(result.lens)
            self._shown["lens"] = (req.query, len(req.ids))
        if req.query != self.selection.index:
            self._debounce.start()  # the selection moved meanwhile

    def _on_failed(self, rid: int, _message: str) -> None:
        if rid == self._pending:
            self._pending = None
            self.lens.set_busy(False)

    # -- streaming: the live trace -------------------------------------------------------------

    def new_trace(self):
        """A LiveTrace for the next reply when a panel is open (else None: no recording)."""
        info = self.chat.model_info
        if info is None or info.get("remote") or not self.any_open():
            return None  # a remote server has no live trace to share
        from engine.trace import LiveTrace

        attention = self.is_open("attention")
        routing = bool(info["moe_layers"]) and (self.is_open("routing") or self.is_open("strip"))
        if not (attention or routing):
            return None
        return LiveTrace(info["n_layer"], attention=attention, routing=routing,
                         attn_layers=attention_layers(info))

    def _read_live(self) -> None:
        trace = self.chat.trace
        self._refresh_tokens()
        if trace is None:
            self._live.stop()
            return
        if trace.version == self._trace_version:
            return
        self._trace_version = trace.version
        info = self.chat.model_info
        if trace.moe_layers:
            if self._live_routing is None:
                self._live_routing = LiveRouting(info)
            view = self._live_routing.update(trace)
            if view is not None:
                self.routing.set_routing(view)
                self.strip.set_routing(view)
        if not self.selection.pinned:
            position, rows = trace.newest_attention()
            if rows:
                self.attention.set_attention(live_attention_view(
                    info, position, rows, trace.newest_sink(position)))

    # -- throughput ----------------------------------------------------------------------------

    def _on_prompt_processed(self, info: dict) -> None:
        self.throughput.prompt_done(int(info["n_tokens"]), float(info["seconds"]),
                                    float(info["tok_s"]), int(info.get("n_reused") or 0))

    def _on_reply_finished(self, stats: dict) -> None:
        self._live.stop()
        self._set_all_tokens()  # the final text: a stop string may have been cut
        timings = reply_timings(stats, self.chat.model_info, self.chat.rss)
        if timings is not None:
            self.throughput.reply_finished(timings)
        self._routing_for = None  # the finished reply: one exact pass over the whole sequence
        index = self.selection.index
        self._highlight(index)
        if index is not None:
            self._show_probs(index)
            self._debounce.start()

    def history(self) -> list[ReplyTimings]:
        info = self.chat.model_info
        return [t for t in (reply_timings(s, info) for s in self.chat.history()) if t is not None]

    def _update_memory(self) -> None:
        info = self.chat.model_info or {}
        # The caption names the kind of cache (MLA keeps a latent, not keys and values).
        label = "MLA latent cache" if "mla" in info.get("layer_kinds", ()) else "KV cache"
        self.throughput.set_memory(self.chat.rss, int(info.get("cache_bytes_per_token", 0)),
                                   int(info.get("cache_bytes", 0)), label)


def reply_timings(stats: dict[str, Any], info: dict[str, Any] | None,
                  rss: int = 0) -> ReplyTimings | None:
    """A message's stored stats as the throughput panel's ReplyTimings (None: no timings)."""
    if not stats.get("gen_tokens") and not stats.get("prompt_tokens"):
        return None
    per_token = int(stats.get("cache_bytes_per_token") or (info or {}).get("cache_bytes_per_token")
                    or 0)
    n = (int(stats.get("prompt_tokens") or 0) + int(stats.get("prompt_reused") or 0)
         + int(stats.get("gen_tokens") or 0))  # positions in the cache, kept ones included
    return ReplyTimings(prompt_tokens=int(stats.get("prompt_tokens") or 0),
                        prompt_tok_s=float(stats.get("prompt_tok_s") or 0.0),
                        ttft_s=stats.get("ttft_s"), gen_tokens=int(stats.get("gen_tokens") or 0),
                        gen_tok_s=float(stats.get("gen_tok_s") or 0.0),
                        per_token_s=tuple(stats.get("per_token_s") or ()),
                        cache_bytes_per_token=per_token, cache_bytes=per_token * n,
                        rss_bytes=int(rss), prompt_reused=int(stats.get("prompt_reused") or 0))


def install_inspect(window: MainWindow, chat) -> InspectController:
    """Dock the inspection panels in `window`, linked to the chat controller `chat`."""
    ctl = InspectController(window, chat)
    window.closing.connect(ctl.save_layout)
    return ctl
