"""The one long-lived engine worker: a QObject living on its own QThread that owns the model.

The GUI thread never calls into the model. It talks to the worker through `EngineHost`, whose
request signals reach the worker's slots as queued calls, so requests run one at a time in
arrival order and never interleave. The worker answers with signals (also queued back to the
GUI thread), each carrying the request id and plain data only:

    loadStarted(id, path)    loadProgress(id, percent)  # at most ~20 per second
    modelLoaded(id, info)    loadFailed(id, message)    loadCancelled(id)
    promptReady(id, text, ids, spans)                   # the exact prompt, before generation
    promptDone(id, {n_tokens, seconds, tok_s})
    tokens(id, [TokenRecord, ...])                      # batched: at most one emit per ~40 ms
    finished(id, {reason, text, timings})               failed(id, message)
    preview(id, text, ids, spans)                       # prompt preview, no generation
    snapshot(id, kind, payload)                         # open-ended: attention / routing later

Cancellation is a thread-safe flag per request that `generate()`'s `should_stop` polls between
tokens, so Stop takes effect within one token. `load_model` polls the same flag before every
weight it builds, so cancelling a load stops it within one layer (`LoadCancelled`); the worker
keeps the previous model, and the GUI returns to normal at once.

Engine modules (and torch) are imported inside the worker methods: importing torch takes
seconds, and doing it on the worker thread keeps the window responsive while the app starts.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import QObject, QThread, Signal, Slot

BATCH_SECONDS = 0.04  # token batches reach the GUI at most ~25 times a second
PROGRESS_SECONDS = 0.05  # load progress reaches the GUI at most ~20 times a second


@dataclass(frozen=True)
class TokenRecord:
    """One generated token as the GUI sees it (a plain copy of `engine.generate.Token`)."""
    index: int
    id: int
    text: str
    prob: float
    top: tuple[tuple[int, str, float], ...]
    seconds: float


@dataclass(frozen=True)
class PromptRequest:
    """What to send to the model: the conversation, the mode and the sampling settings."""
    mode: str  # "chat": through the chat template; "complete": raw text continuation
    system_prompt: str
    messages: tuple[tuple[str, str], ...]  # (role, content), roles "user" | "assistant"
    params: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields
    max_new_tokens: int = 256
    threads: int = 0  # 0: the engine's default (all physical cores)


def memory_estimate(path: str | Path, n_ctx: int | None = None) -> tuple[int, int]:
    """(bytes the model would need once loaded, bytes available now), from the GGUF header.

    With the fused kernels the engine keeps weights in their packed GGUF form (about the file's
    tensor bytes); without them (or in exact mode) it dequantizes matrices to float32, while the
    token embedding stays in the file unless the output head is tied to it. Add the KV cache
    preallocated for `n_ctx` positions (the engine's default when None).
    """
    from engine import kernels
    from engine.gguf.reader import open_gguf
    from engine.linear import exact_mode
    from engine.models.base import DEFAULT_N_CTX

    packed = not exact_mode() and kernels.available()
    with open_gguf(path) as gf:
        if packed:
            weights = sum(t.n_bytes for t in gf.tensors)
        else:
            tied = not gf.has_tensor("output.weight")
            weights = 4 * sum(t.n_elements for t in gf.tensors
                              if t.name != "token_embd.weight" or tied)
        md, arch = gf.metadata, gf.architecture

        def key(name: str, default: int) -> int:
            value = md.get(f"{arch}.{name}", default)
            return int(max(value) if hasattr(value, "__len__") else value)  # per-layer arrays

        n_layers, n_embd = key("block_count", 0), key("embedding_length", 0)
        n_head = key("attention.head_count", 1) or 1
        n_kv = key("attention.head_count_kv", n_head) or n_head
        head_k = key("attention.key_length", n_embd // n_head)
        head_v = key("attention.value_length", head_k)
        ctx = n_ctx or min(key("context_length", DEFAULT_N_CTX), DEFAULT_N_CTX)
    kv = n_layers * n_kv * (head_k + head_v) * 4 * ctx
    return weights + kv, psutil.virtual_memory().available


def model_info(model, tokenizer, path: Path, load_seconds: float) -> dict[str, Any]:
    """Plain facts about a loaded model for the status bar and the chat view."""
    gf = model.gguf
    md = gf.metadata
    by_type: dict[str, int] = {}
    for t in gf.tensors:
        if len(t.shape) >= 2:  # the weight matrices define the quantization a user cares about
            by_type[t.type_name] = by_type.get(t.type_name, 0) + t.n_bytes
    quant = max(by_type, key=by_type.get) if by_type else "?"
    try:  # the file's declared type (Q4_K_M) says more than its largest tensor's (Q8_0 embedding)
        import gguf

        quant = gguf.LlamaFileType(int(md["general.file_type"])).name.removeprefix("MOSTLY_")
    except (KeyError, ValueError, TypeError):
        pass
    template = md.get("tokenizer.chat_template")
    return {
        "path": str(path),
        "name": md.get("general.name") or path.stem,
        "arch": gf.architecture,
        "file_size": gf.file_size,
        "n_params": sum(t.n_elements for t in gf.tensors),
        "quant": quant,
        "n_ctx": model.n_ctx,
        "n_ctx_train": int(md.get(f"{gf.architecture}.context_length", model.n_ctx)),
        "n_vocab": model.n_vocab,
        "has_chat_template": isinstance(template, str) and bool(template.strip()),
        "load_seconds": load_seconds,
    }


def build_prompt(tokenizer, metadata: dict[str, Any], request: PromptRequest
                 ) -> tuple[str, list[int]]:
    """Render `request` into the exact text and token ids the model will see.

    Chat mode renders the model's chat template (or the engine's fallback for its architecture
    when the file has none); Complete mode concatenates the messages as raw text. BOS is added
    by the tokenizer unless the rendered template already starts with it.
    """
    if request.mode == "complete":
        text = "".join(content for _, content in request.messages)
        return text, tokenizer.encode(text, add_special=True, parse_special=True)

    from engine.chat_template import render_chat

    messages = []
    if request.system_prompt.strip():
        messages.append({"role": "system", "content": request.system_prompt})
    messages += [{"role": r, "content": c} for r, c in request.messages]
    # The file's own template, or the engine's fallback for its architecture when it has none;
    # bos_token/eos_token default to the file's special tokens.
    text = render_chat(metadata, messages, add_generation_prompt=True)
    bos = tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    has_bos = bool(bos) and text.startswith(bos)
    return text, tokenizer.encode(text, add_special=not has_bos, parse_special=True)


def decode_spans(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text the model sees for `ids` (special tokens shown) and each token's [start, end).

    Streaming the decode keeps multi-byte characters split across tokens whole: the token that
    completes a character owns it, the ones before it get an empty span.
    """
    dec = tokenizer.stream_decoder(skip_special=False)
    text, spans = "", []
    for i in ids:
        start = len(text)
        text += dec.feed(int(i))
        spans.append((start, len(text)))
    tail = dec.flush()
    if tail and spans:
        text += tail
        spans[-1] = (spans[-1][0], len(text))
    return text, spans


class EngineWorker(QObject):
    """Owns the model and tokenizer; every slot runs on the worker thread."""

    loadStarted = Signal(int, str)
    loadProgress = Signal(int, int)  # (request id, percent 0-100)
    modelLoaded = Signal(int, dict)
    loadFailed = Signal(int, str)
    loadCancelled = Signal(int)
    promptReady = Signal(int, str, object, object)
    promptDone = Signal(int, dict)
    tokens = Signal(int, object)
    finished = Signal(int, dict)
    failed = Signal(int, str)
    preview = Signal(int, str, object, object)
    snapshot = Signal(int, str, object)  # (request id, kind, payload): for inspection panels

    def __init__(self) -> None:
        super().__init__()
        self.model = None
        self.tokenizer = None
        self.cache = None  # the KV cache, preallocated once per loaded model
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()

    # -- called from any thread ----------------------------------------------------------------

    def cancel(self, request_id: int) -> None:
        """Ask request `request_id` to stop; thread-safe, takes effect within one token."""
        with self._lock:
            self._cancelled.add(request_id)

    def is_cancelled(self, request_id: int) -> bool:
        with self._lock:
            return request_id in self._cancelled

    # -- slots (worker thread) -----------------------------------------------------------------

    @Slot(int, str, int, int)
    def load(self, request_id: int, path: str, n_ctx: int, threads: int) -> None:
        """Load `path` ("" = the embedded default model); n_ctx/threads 0 = automatic."""
        try:
            from engine.default_model import resolve_model_path
            from engine.errors import LoadCancelled, ModelTooLargeError
            from engine.models.base import load_model
            from engine.tokenizer import load_tokenizer

            if self.is_cancelled(request_id):
                self.loadCancelled.emit(request_id)
                return
            resolved = resolve_model_path(path or None)
            self.loadStarted.emit(request_id, str(resolved))
            need, available = memory_estimate(resolved, n_ctx or None)
            if need > available:
                raise ModelTooLargeError(
                    f"{resolved.name} needs about {need / 2**30:.1f} GiB once loaded "
                    f"(float32 weights + KV cache), but only {available / 2**30:.1f} GiB "
                    f"of memory is available")
            t0 = time.perf_counter()
            try:
                model = load_model(resolved, n_ctx=n_ctx or None, threads=threads or None,
                                   progress=self._progress_reporter(request_id),
                                   should_stop=lambda: self.is_cancelled(request_id))
                tokenizer = load_tokenizer(model.gguf)
            except LoadCancelled:
                self.loadCancelled.emit(request_id)  # keep the previous model
                return
            if self.is_cancelled(request_id):
                self.loadCancelled.emit(request_id)
                return
            self.model, self.tokenizer, self.cache = model, tokenizer, None
            self.info = model_info(model, tokenizer, resolved, time.perf_counter() - t0)
            self.modelLoaded.emit(request_id, dict(self.info))
        except Exception as exc:  # noqa: BLE001 - any failure must reach the window, not kill the thread
            self.loadFailed.emit(request_id, _message(exc))
        finally:
            with self._lock:
                self._cancelled.discard(request_id)

    def _progress_reporter(self, request_id: int):
        """`load_model`'s progress callback: whole percents, throttled to PROGRESS_SECONDS."""
        last = {"t": 0.0, "pct": -1}

        def report(fraction: float) -> None:
            pct, now = int(fraction * 100), time.perf_counter()
            if pct != last["pct"] and (pct == 100 or now - last["t"] >= PROGRESS_SECONDS):
                last["t"], last["pct"] = now, pct
                self.loadProgress.emit(request_id, pct)

        return report

    @Slot(int, object)
    def make_preview(self, request_id: int, request: PromptRequest) -> None:
        """Render the prompt `request` would send, with token spans, without generating."""
        if self.model is None:
            self.failed.emit(request_id, "no model loaded")
            return
        try:
            _, ids = build_prompt(self.tokenizer, self.model.gguf.metadata, request)
            text, spans = decode_spans(self.tokenizer, ids)
            self.preview.emit(request_id, text, list(ids), spans)
        except Exception as exc:  # noqa: BLE001
            self.failed.emit(request_id, _message(exc))

    @Slot(int, object)
    def generate(self, request_id: int, request: PromptRequest) -> None:
        """Generate a reply to `request`, streaming token batches; ends with finished or failed."""
        try:
            self._generate(request_id, request)
        except Exception as exc:  # noqa: BLE001
            self.failed.emit(request_id, _message(exc))
        finally:
            with self._lock:
                self._cancelled.discard(request_id)

    def _generate(self, request_id: int, request: PromptRequest) -> None:
        from engine.generate import Done, PromptDone, Token, generate
        from engine.sampling import SamplingParams
        from engine.threads import set_threads

        if self.model is None:
            raise RuntimeError("no model loaded")
        model, tok = self.model, self.tokenizer
        _, ids = build_prompt(tok, model.gguf.metadata, request)
        text, spans = decode_spans(tok, ids)
        self.promptReady.emit(request_id, text, list(ids), spans)
        set_threads(request.threads or None)
        max_new = max(1, min(request.max_new_tokens, model.n_ctx - len(ids)))
        params = SamplingParams(**request.params)
        batch: list[TokenRecord] = []
        last_emit = time.perf_counter()
        if self.cache is None:
            self.cache = model.new_cache()  # reused: no 100 MB allocation per reply
        events = generate(model, tok, ids, params, max_new_tokens=max_new,
                          should_stop=lambda: self.is_cancelled(request_id), cache=self.cache)
        for ev in events:
            if isinstance(ev, Token):
                batch.append(TokenRecord(ev.index, ev.id, ev.text, float(ev.prob),
                                         tuple(ev.top), ev.seconds))
                now = time.perf_counter()
                if now - last_emit >= BATCH_SECONDS:
                    self.tokens.emit(request_id, batch)
                    batch, last_emit = [], now
            elif isinstance(ev, PromptDone):
                self.promptDone.emit(request_id, {"n_tokens": ev.n_tokens, "seconds": ev.seconds,
                                                  "tok_s": ev.tok_s})
            elif isinstance(ev, Done):
                if batch:
                    self.tokens.emit(request_id, batch)
                    batch = []
                self.finished.emit(request_id, {"reason": ev.reason, "text": ev.text,
                                                "timings": _timings_dict(ev.timings),
                                                "n_ctx": model.n_ctx})
                return
        if batch:  # a generator that ended without Done (should not happen): still deliver
            self.tokens.emit(request_id, batch)
        self.finished.emit(request_id, {"reason": "stop", "text": None, "timings": {},
                                        "n_ctx": model.n_ctx})


def _timings_dict(t) -> dict[str, Any]:
    out = {}
    for name in ("prompt_tokens", "prompt_tok_s", "ttft_s", "gen_tokens", "gen_tok_s",
                 "cache_bytes_per_token"):
        value = getattr(t, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[name] = value
    return out


def _message(exc: BaseException) -> str:
    from engine.errors import LLMLensError

    if isinstance(exc, LLMLensError):
        return str(exc)
    # An unexpected failure: keep the type and the innermost frame for a bug report.
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


class EngineHost(QObject):
    """GUI-thread handle on the worker: starts its thread and sends it requests by signal."""

    _load = Signal(int, str, int, int)
    _generate = Signal(int, object)
    _preview = Signal(int, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._next_id = 0
        self.thread = QThread()
        self.thread.setObjectName("llmlens-engine")
        self.worker = EngineWorker()
        self.worker.moveToThread(self.thread)
        # Cross-thread connections are queued: the worker runs one request at a time, in order.
        self._load.connect(self.worker.load)
        self._generate.connect(self.worker.generate)
        self._preview.connect(self.worker.make_preview)
        self.thread.start()

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def load(self, path: str = "", n_ctx: int = 0, threads: int = 0) -> int:
        rid = self._new_id()
        self._load.emit(rid, path, n_ctx, threads)
        return rid

    def generate(self, request: PromptRequest) -> int:
        rid = self._new_id()
        self._generate.emit(rid, request)
        return rid

    def preview(self, request: PromptRequest) -> int:
        rid = self._new_id()
        self._preview.emit(rid, request)
        return rid

    def cancel(self, request_id: int) -> None:
        self.worker.cancel(request_id)

    def shutdown(self, timeout_ms: int = 60_000) -> None:
        """Cancel everything pending and stop the thread.

        A generation stops within one token and a model load within one layer; the wait (up to
        `timeout_ms`) avoids destroying a running QThread.
        """
        for rid in range(1, self._next_id + 1):
            self.worker.cancel(rid)
        self.thread.quit()
        self.thread.wait(timeout_ms)
