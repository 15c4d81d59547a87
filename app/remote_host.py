"""The chat's remote backend: `RemoteHost` talks to an OpenAI-compatible server with the same
requests and signals as `EngineHost` (app/engine_worker.py), so the chat controller only
chooses which host it uses.

    host.worker.loadStarted / modelLoaded / loadFailed     load() = connect: GET /v1/models
    host.worker.promptReady / promptDone / tokens / finished / failed     generate()
    host.worker.preview / inspected                         preview(), inspect()

Each request runs on its own daemon thread (`OpenAIClient` blocks on the network) and answers
through the signals, queued to the GUI thread. Separate threads, not one queue as in the
engine worker, because a server that stops answering must not hold the next request back:
`cancel()` stops a stream at its next line, and a generation that has not ended
CANCEL_GRACE_MS after Stop is answered as cancelled at once (its thread is abandoned and
exits with its connection's timeout). Request ids start at ID_BASE, apart from the engine
host's, so one controller can listen to both hosts and never mistake one's answer for the
other's.

What a server exposes: every server streams text, so chat, Stop, regenerate and the
throughput panel (TTFT and tok/s measured on the stream, completed by the server's `usage`
and llama.cpp-style `timings`) work everywhere. `llmlens serve` (detected by `meta.lens` in
its /v1/models) also names the stream's tokens (`return_tokens`) and answers
`POST /v1/lens/trace`, so attention, routing and the logit lens work as with the local
engine, on the token ids the chat shows; `info["lens"]` says which. Token probabilities are
not sent by either.

Also here: the saved server URLs (QSettings, like recent files) and the API key's storage
(the system keyring through the optional `keyring` package when it has a usable backend;
otherwise this process's memory only). Keys never go into the conversations database.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QTimer

from app.engine_worker import EngineSignals
from app.inspect_views import (InspectRequest, InspectResult, attention_view, default_range,
                               routing_view)
from app.prompting import PromptRequest
from app.reply_tokens import TokenRecord
from app.remote_backend import Done, OpenAIClient, Prompt, PromptDone, Token
from ui.inspect.model import LensView

ID_BASE = 1 << 30  # EngineHost counts from 1: the two never meet
BATCH_SECONDS = 0.04  # as the engine worker: token batches at most ~25 times a second
CANCEL_GRACE_MS = 1500
UNAVAILABLE = "The remote server does not expose this (it sends only the reply's text)."
SERVERS_KEY = "remote/servers"
KEYRING_SERVICE = "llmlens"
MAX_SERVERS = 10


class RemoteSignals(EngineSignals):
    """The signals of `EngineWorker`, emitted by RemoteHost's request threads."""


class RemoteHost(QObject):
    """GUI-thread handle on one OpenAI-compatible server (`configure`, then `load`)."""

    sets_context = False  # the server chose its context size: nothing to reload for it

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker = RemoteSignals(self)
        self.url = ""
        self.api_key: str | None = None
        self.model: str | None = None  # the server's model id; None: its first
        self.info: dict[str, Any] | None = None  # the connected server's model_info
        self._next_id = ID_BASE
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()
        self._abandoned: set[int] = set()  # answered already on the GUI thread
        self._running: dict[int, threading.Thread] = {}
        self._closed = False

    def configure(self, url: str, api_key: str | None = None, model: str | None = None) -> None:
        """The server the next `load` connects to."""
        self.url, self.api_key, self.model = url.strip(), api_key or None, model or None

    def client(self) -> OpenAIClient:
        return OpenAIClient(self.url, self.api_key, model=self.model)

    # -- requests (GUI thread) -------------------------------------------------------------

    def load(self, path: str = "", n_ctx: int = 0, threads: int = 0) -> int:
        """Connect: read the server's model list (arguments are the engine host's; unused)."""
        return self._start(self._load)

    def generate(self, request: PromptRequest, trace=None) -> int:
        """Stream a reply (`trace`, the engine's live recorder, has no remote equivalent)."""
        return self._start(self._generate, request)

    def inspect(self, request: InspectRequest) -> int:
        return self._start(self._inspect, request)

    def preview(self, request: PromptRequest) -> int:
        rid = self._new_id()
        text = ("The server renders the prompt itself: its exact text and tokens are shown "
                "here after the next reply." if self.info and self.info.get("lens") else
                "The server renders the prompt itself and does not say how.")
        # the receiver as context: a timer outliving this host is dropped with it
        QTimer.singleShot(0, self, lambda: self.worker.preview.emit(rid, text, [], []))
        return rid

    def decode(self, ids: list[int]) -> int:
        """Servers have no detokenize endpoint in common: a stored prompt's tokens stay
        unshown (no answer, as for a superseded request)."""
        return self._new_id()

    def cancel(self, request_id: int) -> None:
        with self._lock:
            self._cancelled.add(request_id)
        QTimer.singleShot(CANCEL_GRACE_MS, self, lambda: self._abandon(request_id))

    def shutdown(self, timeout_ms: int = 0) -> None:
        """Cancel everything; threads are daemons blocked at most by their timeouts."""
        self._closed = True
        with self._lock:
            self._cancelled.update(self._running)

    # -- plumbing --------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _start(self, work: Callable, *args: Any) -> int:
        rid = self._new_id()
        thread = threading.Thread(target=self._run, args=(work, rid, *args), daemon=True,
                                  name=f"llmlens-remote-{rid}")
        with self._lock:
            self._running[rid] = thread
        thread.start()
        return rid

    def _run(self, work: Callable, rid: int, *args: Any) -> None:
        try:
            work(rid, *args)
        except Exception as exc:  # noqa: BLE001 - any failure must reach the window
            self._emit(rid, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.pop(rid, None)
                self._cancelled.discard(rid)

    def is_cancelled(self, rid: int) -> bool:
        with self._lock:
            return rid in self._cancelled or self._closed

    def _emit(self, rid: int, name: str, *args: Any) -> None:
        with self._lock:
            if rid in self._abandoned:
                return
        try:
            getattr(self.worker, name).emit(rid, *args)
        except RuntimeError:
            pass  # the window closed and took the signals with it: nobody is listening

    def _abandon(self, rid: int) -> None:
        """Stop's deadline: a generation still running is answered as cancelled now."""
        with self._lock:
            thread = self._running.get(rid)
            if thread is None or not getattr(thread, "generation", False):
                return
            self._abandoned.add(rid)
        self.worker.finished.emit(rid, {"reason": "cancelled", "text": None, "timings": {},
                                        "n_ctx": (self.info or {}).get("n_ctx")})

    # -- work (request threads) ------------------------------------------------------------

    def _load(self, rid: int) -> None:
        self._emit(rid, "loadStarted", self.url)
        t0 = time.perf_counter()
        try:
            with self.client() as client:
                entries = client.models_info()
                base = client.base_url
        except ConnectionError as exc:
            self._emit(rid, "loadFailed", str(exc))
            return
        if not entries:
            self._emit(rid, "loadFailed", f"{self.url} serves no model")
            return
        entry = next((e for e in entries if e["id"] == self.model), None)
        if entry is None and self.model is not None:
            self._emit(rid, "loadFailed", f"{self.url} does not serve {self.model!r} (it serves "
                                          f"{', '.join(e['id'] for e in entries)})")
            return
        entry = entry or entries[0]
        self.model = entry["id"]
        info = remote_model_info(base, entry, time.perf_counter() - t0)
        if self.is_cancelled(rid):
            self._emit(rid, "loadCancelled")
            return
        self.info = info
        self._emit(rid, "modelLoaded", dict(info))

    def _generate(self, rid: int, request: PromptRequest) -> None:
        threading.current_thread().generation = True  # type: ignore[attr-defined]
        if request.mode != "chat":
            self._emit(rid, "failed", "Complete mode continues raw text, which an "
                                      "OpenAI-compatible chat server does not offer: switch "
                                      "this conversation to Chat mode")
            return
        lens = bool(self.info and self.info.get("lens"))
        messages = ([("system", request.system_prompt)] if request.system_prompt.strip() else [])
        messages += list(request.messages)
        n_ctx = (self.info or {}).get("n_ctx")
        # a server refuses max_tokens above its context (llmlens serve: 400); it stops at the
        # context's end by itself ("length")
        max_tokens = min(request.max_new_tokens, n_ctx) if n_ctx else request.max_new_tokens
        params = {**request.params, "max_tokens": max_tokens}
        prompt_seen = not lens
        if not lens:
            # No token ids will come: the context is just the reply, as streamed
            self._emit(rid, "promptReady", "", [], [])
        batch: list[TokenRecord] = []
        last_emit = 0.0  # the first token goes out at once: it is the time to first token
        with self.client() as client:
            events = client.stream_chat(messages, params, return_tokens=lens,
                                        should_stop=lambda: self.is_cancelled(rid))
            for ev in events:
                if isinstance(ev, Prompt):
                    prompt_seen = True
                    self._emit(rid, "promptReady", ev.text, list(ev.ids),
                               [tuple(s) for s in ev.spans])
                elif isinstance(ev, PromptDone):
                    if not prompt_seen:  # a server that did not name its tokens after all
                        prompt_seen = True
                        self._emit(rid, "promptReady", "", [], [])
                    self._emit(rid, "promptDone", {"n_tokens": ev.n_tokens,
                                                   "seconds": ev.seconds, "tok_s": ev.tok_s})
                elif isinstance(ev, Token):
                    batch.append(TokenRecord(ev.index, ev.id, ev.text, math.nan, (), ev.seconds))
                    now = time.perf_counter()
                    if now - last_emit >= BATCH_SECONDS:
                        self._emit(rid, "tokens", batch)
                        batch, last_emit = [], now
                elif isinstance(ev, Done):
                    if batch:
                        self._emit(rid, "tokens", batch)
                    if ev.reason == "error":
                        self._emit(rid, "failed", f"The server stopped the reply: {ev.message}")
                    else:
                        self._emit(rid, "finished", {
                            "reason": ev.reason, "text": ev.text,
                            "timings": timings_dict(ev.timings),
                            "n_ctx": (self.info or {}).get("n_ctx")})
                    return

    def _inspect(self, rid: int, request: InspectRequest) -> None:
        if self.is_cancelled(rid):
            return  # superseded while it waited
        info = self.info or {}
        if not info.get("lens"):
            self._emit(rid, "failed", UNAVAILABLE)
            return
        with self.client() as client:
            try:
                result = remote_inspection(client, info, request)
            except ConnectionError as exc:
                self._emit(rid, "failed", f"The inspection failed: {exc}")
                return
        if not self.is_cancelled(rid):
            self._emit(rid, "inspected", result)


def remote_model_info(base_url: str, entry: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A server's /v1/models entry as the chat's `model_info` (engine_worker.model_info's
    keys): `meta` fills what llmlens serve (and llama.cpp's server, partly) says; `remote` is
    the server's URL and `lens` whether it has llmlens serve's inspection extension."""
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    lens = meta.get("lens") if isinstance(meta.get("lens"), dict) else None
    facts = lens or {}
    n_ctx = meta.get("n_ctx") or meta.get("n_ctx_train")
    return {
        "path": f"{base_url}#{entry['id']}",
        "name": entry["id"],
        "arch": str(meta.get("arch") or "remote"),
        "file_size": int(meta.get("size") or 0),
        "n_params": int(meta.get("n_params") or 0),
        "quant": "",
        "n_ctx": int(n_ctx) if n_ctx else None,  # None: the server does not say
        "n_ctx_train": int(meta.get("n_ctx_train") or n_ctx or 0),
        "n_vocab": int(meta.get("n_vocab") or 0),
        # the server applies its own template; Complete mode is not offered remotely
        "has_chat_template": True,
        "load_seconds": seconds,
        "n_layer": int(facts.get("n_layer", 0)),
        "n_head": int(facts.get("n_head", 0)),
        "layer_kinds": list(facts.get("layer_kinds", [])),
        "layer_windows": list(facts.get("layer_windows", [])),
        "kv_head_of": list(facts.get("kv_head_of", [])),
        "moe_layers": list(facts.get("moe_layers", [])),
        "router_info": facts.get("router_info"),
        "cache_bytes_per_token": 0,
        "cache_bytes": 0,
        "remote": base_url,
        "lens": lens is not None,
    }


def remote_inspection(client: OpenAIClient, info: dict[str, Any], request: InspectRequest
                      ) -> InspectResult:
    """What `app.inspect_views.inspection_views` computes locally, through `client.trace`:
    the same passes (rows and spans) and the same views."""
    from engine.inspect import from_arrays

    ids, q, what = list(request.ids), request.query, set(request.what)
    if not 0 <= q < len(ids):
        raise ValueError(f"token {q} is outside the {len(ids)} tokens")
    attention = routing = lens = None
    if what & {"attention", "routing"}:
        a, b = request.matrix_range or default_range(q)
        a, b = max(0, min(a, q)), min(len(ids), max(b, q + 1))
        kinds = [k for k in ("attention", "routing") if k in what]
        span = ids if "routing" in what else ids[:b]  # attention is causal: keys past b unused
        ins = from_arrays(client.trace(span, kinds, rows=(a, b)))
        if "attention" in what:
            attention = attention_view(info, ins, q, a, b, request.matrix_layer)
        if "routing" in what:
            routing = routing_view(info, ins.topk_ids, ins.topk_weights, ins.router_probs,
                                   select_scores=ins.select_scores, groups_kept=ins.groups_kept)
    if "lens" in what:
        lens = remote_lens(client, info, ids, q, request.lens_k)
    return InspectResult(request, attention, routing, lens)


def remote_lens(client: OpenAIClient, info: dict[str, Any], ids: list[int], q: int,
                k: int) -> LensView:
    """`inspect_views.lens_view` through the server: every vocabulary entry comes back (for a
    true softmax and the next token's exact rank), with the text of the first k."""
    arrays = client.trace(ids[:q + 1], ["lens"], rows=(q, q + 1), lens_k=info["n_vocab"],
                          lens_pieces=k)
    layers = sorted(int(n.split(".")[1]) for n in arrays if n.startswith("lens_ids."))
    chosen = int(ids[q + 1]) if q + 1 < len(ids) else None
    top_ids, top_probs, ranks, texts = [], [], [], []
    for layer in layers:
        order = arrays[f"lens_ids.{layer}"][0]                          # [V] best first
        logits = arrays[f"lens_logits.{layer}"][0].astype(np.float64)  # [V] descending
        lse = logits[0] + np.log(np.exp(logits - logits[0]).sum())
        top_ids.append(order[:k])
        top_probs.append(np.exp(logits[:k] - lse))
        texts.append([str(t) for t in arrays[f"lens_pieces.{layer}"][0][:k]])
        if chosen is not None:
            ranks.append(int(np.nonzero(order == chosen)[0][0]))
    return LensView(position=q, ids=np.asarray(top_ids, dtype=np.int32),
                    probs=np.asarray(top_probs, dtype=np.float32), texts=texts,
                    chosen_id=chosen, chosen_rank=ranks if chosen is not None else None)


def timings_dict(t) -> dict[str, Any]:
    """A remote `Timings` as the stats a message stores (engine_worker's keys), plus the
    server's own `timings` object when it sent one."""
    out: dict[str, Any] = {}
    for name in ("prompt_tokens", "prompt_tok_s", "ttft_s", "gen_tokens", "gen_tok_s"):
        value = getattr(t, name)
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[name] = value
    out["per_token_s"] = [round(float(x), 6) for x in t.per_token_s]
    if t.server:
        out["server_timings"] = dict(t.server)
    return out


# -- saved servers and keys ------------------------------------------------------------------

_SESSION_KEYS: dict[str, str] = {}  # the fallback without a keyring: this process only


def saved_servers(settings=None) -> list[str]:
    from app import settings as app_settings_mod

    s = settings or app_settings_mod.app_settings()
    value = s.value(SERVERS_KEY, [])
    if isinstance(value, str):  # INI files give a bare string for a one-item list
        value = [value]
    return [str(v) for v in (value or []) if v]


def add_saved_server(url: str, settings=None) -> list[str]:
    from app import settings as app_settings_mod

    s = settings or app_settings_mod.app_settings()
    urls = ([url] + [u for u in saved_servers(s) if u != url])[:MAX_SERVERS]
    s.setValue(SERVERS_KEY, urls)
    s.sync()
    return urls


def keyring_backend():
    """The `keyring` module when it is installed and has a usable backend, else None."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    try:
        backend = keyring.get_keyring()
        usable = not isinstance(backend, fail.Keyring) and backend.priority > 0
    except Exception:  # noqa: BLE001 - a broken backend is no backend
        return None
    return keyring if usable else None


def key_storage_note() -> str:
    if keyring_backend() is not None:
        return "The API key is kept in the system keyring."
    return ("No system keyring is available: the API key is kept in memory until LLM Lens "
            "quits, and asked for again next time.")


def save_api_key(url: str, key: str | None) -> bool:
    """Remember `key` for `url`; True when it went to the system keyring."""
    if key:
        _SESSION_KEYS[url] = key
    else:
        _SESSION_KEYS.pop(url, None)
    kr = keyring_backend()
    if kr is None:
        return False
    try:
        if key:
            kr.set_password(KEYRING_SERVICE, url, key)
        else:
            try:
                kr.delete_password(KEYRING_SERVICE, url)
            except Exception:  # noqa: BLE001 - nothing stored: nothing to delete
                pass
        return True
    except Exception:  # noqa: BLE001 - a locked or refusing keyring: the session copy stays
        return False


def load_api_key(url: str) -> str | None:
    if url in _SESSION_KEYS:
        return _SESSION_KEYS[url]
    kr = keyring_backend()
    if kr is None:
        return None
    try:
        return kr.get_password(KEYRING_SERVICE, url)
    except Exception:  # noqa: BLE001
        return None


def fetch_models(url: str, api_key: str | None) -> list[str]:
    """The connect dialog's "Fetch models" (runs off the GUI thread); ConnectionError with
    a one-line message on failure."""
    with OpenAIClient(url, api_key, timeout=10.0) as client:
        return client.models()


def open_connect_dialog(window, chat):
    """File → Connect to server…: the dialog (non-modal, returned) connects `chat` (a
    ChatController) on Connect, and saves the URL and key."""
    from ui.connect_dialog import ConnectDialog

    dialog = ConnectDialog(window, saved_servers(), fetch_models, load_api_key,
                           key_storage_note())

    def accepted() -> None:
        url, key, model = dialog.values()
        add_saved_server(url)
        save_api_key(url, key)
        chat.connect_remote(url, key, model)

    dialog.accepted.connect(accepted)
    dialog.open()
    return dialog
