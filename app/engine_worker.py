"""The one long-lived engine worker: a QObject living on its own QThread that owns the model.

The GUI thread never calls into the model. It talks to the worker through `EngineHost`, whose
request signals reach the worker's slots as queued calls, so requests run one at a time in
arrival order and never interleave. The worker answers with signals (also queued back to the
GUI thread), each carrying the request id and plain data only:

    loadStarted(id, path)    loadProgress(id, percent)  # at most ~20 per second
    loadMessage(id, text)                               # "Preparing CPU kernels (first run)…"
    modelLoaded(id, info)    loadFailed(id, message)    loadCancelled(id)
    promptReady(id, text, ids, spans)                   # the exact prompt, before generation
    promptDone(id, {n_tokens, seconds, tok_s})
    tokens(id, [TokenRecord, ...])                      # batched: at most one emit per ~40 ms
    finished(id, {reason, text, timings})               failed(id, message)
    preview(id, text, ids, spans)                       # prompt preview, no generation
    decoded(id, text, spans)                            # a stored prompt's text, token by token
    inspected(id, InspectResult)                        # one teacher-forced inspection pass

A generation may carry a `LiveTrace` (engine/trace.py) that the GUI polls on a timer for the
newest token's attention and the routing so far: large arrays never travel per token.

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
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.inspect_views import InspectRequest, InspectResult, inspection_views
from app.prompting import PromptRequest, build_prompt, decode_spans  # noqa: F401 (re-exported)
from app.reply_tokens import TokenRecord

BATCH_SECONDS = 0.04  # token batches reach the GUI at most ~25 times a second
PROGRESS_SECONDS = 0.05  # load progress reaches the GUI at most ~20 times a second


def memory_estimate(path: str | Path, n_ctx: int | None = None):
    """(`engine.models.base.MemoryEstimate` of the model at `path`, bytes available now).

    From the GGUF header alone: weights as the engine will hold them (packed in the file's
    encoding with the fused kernels, float32 without) plus the KV cache for `n_ctx` positions
    (the engine's default when None).
    """
    from engine.gguf.reader import open_gguf
    from engine.models.base import estimate_memory

    with open_gguf(path) as gf:
        estimate = estimate_memory(gf, n_ctx)
    return estimate, psutil.virtual_memory().available


def model_info(model, tokenizer, path: Path, load_seconds: float) -> dict[str, Any]:
    """Plain facts about a loaded model for the status bar and the chat view."""
    from app.inspect_views import facts

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
    from engine import kernels

    compute, compute_why = kernels.compute_path()
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
        "compute": compute,          # "avx2 kernels", "neon-dotprod kernels", "portable path"
        "compute_why": compute_why,  # which library, or why there is none
        # what the inspection panels need to lay out their axes
        "n_layer": model.config.n_layer,
        "n_head": model.config.n_head,
        **facts(model),  # layer kinds, windows, kv heads, MoE layers, router (with groups)
        "cache_bytes_per_token": int(model.cache_bytes_per_token),
        "cache_bytes": int(model.cache_bytes_per_token) * model.n_ctx,
    }


class EngineSignals(QObject):
    """The signals every engine host answers with: the local worker and the remote host."""

    loadStarted = Signal(int, str)
    loadProgress = Signal(int, int)  # (request id, percent 0-100)
    loadMessage = Signal(int, str)  # a step before the weights: building the kernels
    modelLoaded = Signal(int, dict)
    loadFailed = Signal(int, str)
    loadCancelled = Signal(int)
    promptReady = Signal(int, str, object, object)
    promptDone = Signal(int, dict)
    tokens = Signal(int, object)
    finished = Signal(int, dict)
    failed = Signal(int, str)
    preview = Signal(int, str, object, object)
    decoded = Signal(int, str, object)
    inspected = Signal(int, object)  # (request id, InspectResult)


class EngineWorker(EngineSignals):
    """Owns the model and tokenizer; every slot runs on the worker thread."""

    def __init__(self) -> None:
        super().__init__()
        self.model = None
        self.tokenizer = None
        self.cache = None  # the KV cache of the reply in progress (or the last one)
        # engine.kv_cache.CachePool: the caches of the last few conversations, kept across
        # replies so that no turn re-reads its conversation; one per loaded model
        self.caches = None
        # id(cache) -> (the LiveTrace that recorded the routing of what that cache holds, the
        # ids of the positions it recorded)
        self._cache_traces: dict[int, tuple[Any, list[int]]] = {}
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
            from engine import kernels

            # The first run compiles the fused kernels (a minute or more): say so, then load.
            kernels.load(on_progress=lambda text: self.loadMessage.emit(request_id, text))
            need, available = memory_estimate(resolved, n_ctx or None)
            if need.total_bytes > available:
                raise ModelTooLargeError(
                    f"{resolved.name} needs about {need.total_bytes / 2**30:.1f} GiB once loaded "
                    f"({need.representation} weights {need.weights_bytes / 2**30:.1f} GiB + "
                    f"KV cache {need.cache_bytes / 2**30:.1f} GiB for {need.n_ctx} tokens), "
                    f"but only {available / 2**30:.1f} GiB of memory is available")
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
            self.model, self.tokenizer, self.cache, self.caches = model, tokenizer, None, None
            self._cache_traces = {}
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
    def decode(self, request_id: int, ids: list[int]) -> None:
        """The text of `ids` with each token's span (a stored prompt, for the inspection panels)."""
        if self.model is None:
            self.failed.emit(request_id, "no model loaded")
            return
        try:
            if any(not 0 <= int(i) < self.model.n_vocab for i in ids):
                raise ValueError("the stored tokens are not from this model's vocabulary")
            text, spans = decode_spans(self.tokenizer, list(ids))
            self.decoded.emit(request_id, text, spans)
        except Exception as exc:  # noqa: BLE001
            self.failed.emit(request_id, _message(exc))

    @Slot(int, object)
    def inspect(self, request_id: int, request: InspectRequest) -> None:
        """One teacher-forced pass over `request.ids`; answers once with `inspected` (or
        `failed`). A request cancelled while queued (superseded) is skipped silently."""
        try:
            if self.is_cancelled(request_id):
                return
            if self.model is None:
                raise RuntimeError("no model loaded")
            from engine.inspect import InspectCancelled

            try:
                result = inspection_views(self.model, self.tokenizer, request,
                                          should_stop=lambda: self.is_cancelled(request_id))
            except InspectCancelled:
                return
            self.inspected.emit(request_id, result)
        except Exception as exc:  # noqa: BLE001
            self.failed.emit(request_id, _message(exc))
        finally:
            with self._lock:
                self._cancelled.discard(request_id)

    @Slot(int, object, object)
    def generate(self, request_id: int, request: PromptRequest, trace=None) -> None:
        """Generate a reply to `request`, streaming token batches; ends with finished or failed.

        `trace`: an `engine.trace.LiveTrace` to record into (None: record nothing, no cost)."""
        try:
            self._generate(request_id, request, trace)
        except Exception as exc:  # noqa: BLE001
            self.failed.emit(request_id, _message(exc))
        finally:
            with self._lock:
                self._cancelled.discard(request_id)

    def _generate(self, request_id: int, request: PromptRequest, trace) -> None:
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
        if self.caches is None:
            from engine.kv_cache import CachePool

            # Other conversations' caches may hold up to 1/8 of the memory free now (512 MiB at
            # most) on top of the one the load-time estimate counts.
            budget = min(512 << 20, psutil.virtual_memory().available // 8)
            self.caches = CachePool(model.new_cache, max_caches=3, budget_bytes=budget)
        # The cache is kept across replies: generate() processes only what follows the longest
        # prefix it already holds. A trace must still show every position (see _trace_reuse).
        self.cache = self.caches.take(ids)
        self.caches.trim()  # the other conversations' caches, within the budget
        kept = {id(c) for c in self.caches.caches}
        self._cache_traces = {k: t for k, t in self._cache_traces.items() if k in kept}
        max_reuse = self._trace_reuse(ids, trace)
        self._cache_traces.pop(id(self.cache), None)  # until this reply has recorded into trace
        events = generate(model, tok, ids, params, max_new_tokens=max_new,
                          should_stop=lambda: self.is_cancelled(request_id), cache=self.cache,
                          trace=trace.recorder if trace is not None else None,
                          max_reuse=max_reuse)
        try:
            for ev in events:
                if isinstance(ev, Token):
                    batch.append(TokenRecord(ev.index, ev.id, ev.text, float(ev.prob),
                                             tuple(ev.top), ev.seconds))
                    now = time.perf_counter()
                    if now - last_emit >= BATCH_SECONDS:
                        self.tokens.emit(request_id, batch)
                        batch, last_emit = [], now
                elif isinstance(ev, PromptDone):
                    self.promptDone.emit(request_id, {
                        "n_tokens": ev.n_tokens, "seconds": ev.seconds, "tok_s": ev.tok_s,
                        "n_reused": ev.n_reused})
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
        finally:
            # what the trace's routing rows describe: the positions this reply forwarded
            if trace is not None and trace.recorder.wants("moe_topk_ids"):
                self._cache_traces[id(self.cache)] = (trace, list(self.cache.ids))

    def _trace_reuse(self, ids: list[int], trace) -> int | None:
        """How many cached prompt positions generate() may keep when recording into `trace`.

        Without a trace: all it can. A LiveTrace keeps only the newest step's last attention
        row, which a shorter prompt pass records just the same; but it keeps the routing of
        every position, so for routing the kept positions' rows are copied from the trace that
        recorded them (the previous reply's, when it recorded routing and the GUI has not
        cleared it since), and where that trace has no rows the prompt is processed in full:
        the panels never show missing or stale routing."""
        from engine.generate import reusable_prefix
        from engine.kv_cache import common_prefix

        if trace is None or not trace.recorder.wants("moe_topk_ids"):
            return None if trace is None else reusable_prefix(self.cache, ids)
        previous, recorded = self._cache_traces.get(id(self.cache), (None, []))
        have = 0
        if previous is not None and previous is not trace:
            # rows [0, have) describe exactly these ids (another conversation may have been
            # copied into this cache since, or the GUI cleared that trace)
            have = min(previous.n_tokens, common_prefix(recorded, ids))
        n = reusable_prefix(self.cache, ids, have)
        if n:
            copy_routing(previous, trace, n)
        return n


def copy_routing(source, target, n: int) -> None:
    """Give LiveTrace `target` the routing `source` recorded for positions [0, n), through
    the recorder interface the model itself writes with (one step of n tokens)."""
    import torch

    snap = source.snapshot_routing(0, n)
    fields = {"moe_topk_ids": snap.topk_ids, "moe_topk_weights": snap.topk_weights,
              "moe_probs": snap.router_probs, "moe_select_scores": snap.select_scores,
              "moe_groups_kept": snap.groups_kept}
    rec = target.recorder
    rec.begin_step(0, n)
    for name, by_layer in fields.items():
        for layer, rows in by_layer.items():
            rec.record(name, layer, torch.from_numpy(rows))  # [n, k] or [n, n_expert]


def _timings_dict(t) -> dict[str, Any]:
    out = {}
    for name in ("prompt_tokens", "prompt_tok_s", "ttft_s", "gen_tokens", "gen_tok_s",
                 "cache_bytes_per_token", "prompt_reused"):
        value = getattr(t, name)
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[name] = value
    # each token's time, for the throughput panel's history (a few bytes a token in the store)
    out["per_token_s"] = [round(float(x), 6) for x in t.per_token_s]
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
    _generate = Signal(int, object, object)
    _preview = Signal(int, object)
    _decode = Signal(int, object)
    _inspect = Signal(int, object)

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
        self._decode.connect(self.worker.decode)
        self._inspect.connect(self.worker.inspect)
        self.thread.start()

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def load(self, path: str = "", n_ctx: int = 0, threads: int = 0) -> int:
        rid = self._new_id()
        self._load.emit(rid, path, n_ctx, threads)
        return rid

    def generate(self, request: PromptRequest, trace=None) -> int:
        """Start a reply; `trace` is an optional `engine.trace.LiveTrace` the GUI polls."""
        rid = self._new_id()
        self._generate.emit(rid, request, trace)
        return rid

    def decode(self, ids: list[int]) -> int:
        rid = self._new_id()
        self._decode.emit(rid, list(ids))
        return rid

    def inspect(self, request: InspectRequest) -> int:
        """Queue an inspection pass; cancel() a superseded one (it is then skipped)."""
        rid = self._new_id()
        self._inspect.emit(rid, request)
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
