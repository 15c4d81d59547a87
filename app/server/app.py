"""The Starlette application behind `llmlens serve`: routes, auth, body limits, streaming.

    GET  /health                 {"status": "ok", "busy": bool, "queued": n}   (never needs a key)
    GET  /v1/models              the one loaded model
    POST /v1/chat/completions    OpenAI chat; messages rendered by the GGUF's chat template
    POST /v1/completions         OpenAI text completion (prompt: text or token ids)
    POST /v1/lens/trace          extension: attention / routing / logit lens as an .npz body
                                 (ids | prompt | messages, what, rows, lens_k, lens_pieces)

Extensions for the app's remote mode: `/v1/models`' `meta.lens` (the layer facts the panels
need) and chat's `return_tokens` (token ids in the stream, see `_stream`).

Chat prompts are built by the app's own `app.prompting.build_prompt`: the file's chat
template, or, for a file without one, the engine's fallback for its architecture (Gemma,
Llama 3 or ChatML; see engine/chat_template.py), exactly as the desktop app does.

Request flow: the body is read with a size cap (413), parsed and validated (400, see
protocol.py), the prompt is rendered and tokenized on a worker thread (so a full engine does
not delay a 400), then the job enters the engine queue (503 + Retry-After when full). Streamed
answers are server-sent events ending with `data: [DONE]`; a client that disconnects cancels its
job (StreamingResponse cancels the stream when the disconnect arrives; non-streamed requests
watch for it), so its generation stops within one token, or never starts if it was waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.server.engine_loop import EngineLoop, Failed, Job, QueueFull
from app.server.protocol import (FINISH_REASONS, ApiError, GenerationSpec, ResponseShape,
                                 chat_messages, check_prompt_length, completion_prompt,
                                 error_body, generation_spec, parse_json_object, sse,
                                 timings_body, usage_body)
from engine.generate import Done, PromptDone, Token, generate

MAX_BODY_BYTES = 8 << 20  # a full 128k-token context is ~0.5 MB of text: 8 MiB is generous
MAX_TRACE_BYTES = 1 << 30  # refuse a trace whose attention arrays would exceed 1 GiB
RETRY_AFTER_S = 2


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _as_api_error(error: Any) -> ApiError:
    from engine.errors import LLMLensError

    if isinstance(error, ApiError):
        return error
    if isinstance(error, LLMLensError):
        return ApiError(str(error))
    if isinstance(error, BaseException):
        return ApiError(f"internal error: {type(error).__name__}: {error}", status=500)
    return ApiError(str(error), status=503)


class ApiKeyMiddleware:
    """With a key, every path but /health needs `Authorization: Bearer KEY` (401 otherwise)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            got = Headers(scope=scope).get("authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(got, self._expected):
                err = ApiError("missing or wrong API key: send 'Authorization: Bearer KEY'",
                               code="invalid_api_key", status=401,
                               headers={"WWW-Authenticate": "Bearer"})
                await _error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Server:
    """The routes' shared state: the engine loop, the model's facts and the limits."""

    def __init__(self, model: Any, tokenizer: Any, model_name: str, max_queue: int,
                 max_body_bytes: int) -> None:
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.engine = EngineLoop(model, tokenizer, max_queue)
        self.max_body_bytes = max_body_bytes
        self.created = int(time.time())

    # -- plumbing ----------------------------------------------------------------------------
    async def read_json(self, request: Request) -> dict[str, Any]:
        limit = self.max_body_bytes
        too_big = ApiError(f"the request body is larger than {limit} bytes", status=413,
                           code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._drain(request, limit)
            raise too_big
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                await self._drain(request, limit)
                raise too_big
            chunks.append(chunk)
        return parse_json_object(b"".join(chunks))

    @staticmethod
    async def _drain(request: Request, limit: int) -> None:
        """Read (and drop) what is left of a refused body, up to a bound, so that the client,
        still sending, reads our 413 instead of a reset connection."""
        seen = 0
        with contextlib.suppress(Exception):
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > 16 * limit:
                    break

    def submit(self, job: Job) -> Job:
        try:
            return self.engine.submit(job)
        except QueueFull as exc:
            raise ApiError(f"the server is busy ({exc}); retry later", status=503,
                           code="server_busy",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    @staticmethod
    async def _wait_disconnect(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def collect(self, job: Job, request: Request) -> list[Any] | None:
        """All of a non-streamed job's events up to its last; None if the client left first
        (the job is then cancelled)."""
        watcher = asyncio.ensure_future(self._wait_disconnect(request))
        events: list[Any] = []
        try:
            while True:
                getter = asyncio.ensure_future(job.events.get())
                done, _ = await asyncio.wait({getter, watcher},
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return None
                ev = getter.result()
                events.append(ev)
                if _is_last(ev):
                    return events
        finally:
            watcher.cancel()
            job.cancel()  # a no-op once the job has finished

    # -- prompts (worker thread) ---------------------------------------------------------------
    def chat_ids(self, messages: Sequence[tuple[str, str]], param: str = "messages") -> list[int]:
        from app.prompting import PromptRequest, build_prompt
        from engine.errors import TemplateError

        request = PromptRequest(mode="chat", system_prompt="", messages=tuple(messages))
        try:
            _, ids = build_prompt(self.tokenizer, self.model.gguf.metadata, request)
        except TemplateError as exc:
            raise ApiError(f"the chat template failed on these messages: {exc}", param=param,
                           code="template_error") from None
        return ids

    def prompt_pieces(self, ids: list[int]) -> dict[str, Any]:
        """`return_tokens`' description of a prompt: ids, text and each token's span."""
        from app.prompting import decode_spans

        text, spans = decode_spans(self.tokenizer, ids)
        return {"ids": list(ids), "text": text, "spans": [list(s) for s in spans]}

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special=True, parse_special=True)

    # -- routes --------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "busy": self.engine.running is not None,
                             "queued": self.engine.queued})

    async def models(self, request: Request) -> Response:
        gf = self.model.gguf
        return JSONResponse({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created,
            "owned_by": "llmlens",
            "meta": {"arch": gf.architecture, "n_ctx": self.model.n_ctx,
                     "n_vocab": self.model.n_vocab, "size": gf.file_size,
                     "n_params": sum(t.n_elements for t in gf.tensors),
                     # what a client needs to lay out /v1/lens/trace's arrays; its presence
                     # also tells the app that this server has the lens extension
                     "lens": self.lens_facts()}}]})

    def lens_facts(self) -> dict[str, Any]:
        m = self.model
        from app.inspect_views import facts

        return {"n_layer": m.config.n_layer, "n_head": m.config.n_head, **facts(m),
                "has_chat_template": bool(str(m.gguf.metadata.get("tokenizer.chat_template")
                                              or "").strip())}

    async def chat_completions(self, request: Request) -> Response:
        body = await self.read_json(request)
        spec = generation_spec(body, self.model.n_ctx)
        messages = chat_messages(body)
        ids = await run_in_threadpool(self.chat_ids, messages)
        check_prompt_length(len(ids), self.model.n_ctx, "messages")
        return await self._generate(request, True, ids, spec)

    async def completions(self, request: Request) -> Response:
        body = await self.read_json(request)
        spec = generation_spec(body, self.model.n_ctx)
        prompt = completion_prompt(body, self.model.n_vocab)
        ids = prompt if isinstance(prompt, list) else await run_in_threadpool(self.text_ids, prompt)
        check_prompt_length(len(ids), self.model.n_ctx, "prompt")
        return await self._generate(request, False, ids, spec)

    async def _generate(self, request: Request, chat: bool, ids: list[int],
                        spec: GenerationSpec) -> Response:
        max_new = self.model.n_ctx - len(ids)
        if spec.max_tokens is not None:
            max_new = min(max_new, spec.max_tokens)  # past the context: finish_reason "length"
        job = self.submit(Job("generate", _generation_work(ids, spec, max_new),
                              asyncio.get_running_loop()))
        shape = ResponseShape.new(chat, job.seq, self.model_name)
        if spec.stream:
            prompt = (await run_in_threadpool(self.prompt_pieces, ids)
                      if spec.return_tokens else None)
            return StreamingResponse(_stream(job, shape, spec, len(ids), prompt),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        events = await self.collect(job, request)
        if events is None:
            return Response(status_code=204)  # nobody is there to read it
        last = events[-1]
        if isinstance(last, Failed):
            return _error_response(_as_api_error(last.error))
        if last.reason == "cancelled":
            return _error_response(ApiError("the request was cancelled (server stopping)",
                                            status=503, code="cancelled"))
        prompt_s = next((e.seconds for e in events if isinstance(e, PromptDone)), 0.0)
        t = last.timings
        return JSONResponse(shape.full(last.text, FINISH_REASONS[last.reason],
                                       usage_body(len(ids), t.gen_tokens),
                                       timings_body(t.prompt_tokens, prompt_s, t.per_token_s,
                                                    t.prompt_reused)))

    async def trace(self, request: Request) -> Response:
        from app.commands.trace import LENS_K
        from engine.inspect import KINDS

        body = await self.read_json(request)
        sources = [k for k in ("ids", "prompt", "messages") if body.get(k) is not None]
        if len(sources) != 1:
            raise ApiError("give exactly one of 'ids', 'prompt' or 'messages'",
                           param=sources[1] if len(sources) > 1 else "ids", code="invalid_value")
        what = body.get("what", list(KINDS))
        if (not isinstance(what, list) or not what
                or any(not isinstance(w, str) or w not in KINDS for w in what)):
            raise ApiError(f"'what' must be a non-empty list drawn from {list(KINDS)}",
                           param="what", code="invalid_value")
        if sources[0] == "ids":
            ids = body["ids"]
            n_vocab = self.model.n_vocab
            if not (isinstance(ids, list) and ids and all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_vocab
                    for i in ids)):
                raise ApiError(f"'ids' must be a non-empty list of token ids in [0, {n_vocab})",
                               param="ids", code="invalid_value")
        elif sources[0] == "prompt":
            if not isinstance(body["prompt"], str):
                raise ApiError("'prompt' must be a string", param="prompt", code="invalid_type")
            ids = await run_in_threadpool(self.text_ids, body["prompt"])
        else:
            ids = await run_in_threadpool(self.chat_ids, chat_messages(body))
        T = len(ids)
        if not 0 < T <= self.model.n_ctx:
            raise ApiError(f"{T} tokens: a trace takes 1 to {self.model.n_ctx} (the context)",
                           param=sources[0], code="context_length_exceeded")
        rows = body.get("rows")
        if rows is not None:
            if not (isinstance(rows, list) and len(rows) == 2
                    and all(isinstance(r, int) and not isinstance(r, bool) for r in rows)
                    and 0 <= rows[0] < rows[1] <= T):
                raise ApiError(f"'rows' must be [a, b] with 0 <= a < b <= {T} (the token count)",
                               param="rows", code="invalid_value")
            rows = (rows[0], rows[1])
        n_rows = T if rows is None else rows[1] - rows[0]
        c = self.model.config
        attn_bytes = 4 * c.n_head * n_rows * T * c.n_layer if "attention" in what else 0
        if attn_bytes > MAX_TRACE_BYTES:
            raise ApiError(f"the attention arrays would take {attn_bytes / 2**20:.0f} MiB "
                           f"(limit {MAX_TRACE_BYTES >> 20} MiB): ask for fewer 'rows'",
                           param="rows", code="invalid_value")
        lens_k, pieces = body.get("lens_k", LENS_K), body.get("lens_pieces", 0)
        for name, value, top in (("lens_k", lens_k, self.model.n_vocab),
                                 ("lens_pieces", pieces, 1 << 16)):
            if not (isinstance(value, int) and not isinstance(value, bool)
                    and (name == "lens_pieces" or value >= 1) and 0 <= value <= top):
                raise ApiError(f"'{name}' must be an integer in [{int(name == 'lens_k')}, {top}]",
                               param=name, code="invalid_value")
        if "lens" in what and 8 * lens_k * n_rows * c.n_layer > MAX_TRACE_BYTES:
            raise ApiError(f"the lens arrays would exceed {MAX_TRACE_BYTES >> 20} MiB: ask for "
                           f"fewer 'rows' or a smaller 'lens_k'", param="lens_k",
                           code="invalid_value")
        job = self.submit(Job("trace", _trace_work(ids, tuple(what), rows, lens_k, pieces),
                              asyncio.get_running_loop()))
        events = await self.collect(job, request)
        if events is None:
            return Response(status_code=204)
        last = events[-1]
        if isinstance(last, Failed):
            return _error_response(_as_api_error(last.error))
        return Response(last, media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="trace.npz"'})


def _is_last(ev: Any) -> bool:
    return isinstance(ev, (Failed, bytes, Done))


def _generation_work(ids: list[int], spec: GenerationSpec, max_new: int):
    def work(engine: EngineLoop, job: Job) -> str:
        if engine.cache is None:
            engine.cache = engine.model.new_cache()  # one for the server's life
        reason = "error"
        for ev in generate(engine.model, engine.tokenizer, ids, spec.params,
                           max_new_tokens=max_new, stop_strings=spec.stop,
                           should_stop=job.should_stop, top_n=0, cache=engine.cache):
            if isinstance(ev, Token):
                job.n_tokens += 1
            elif isinstance(ev, Done):
                reason = ev.reason
            job.emit(ev)
        return reason
    return work


def _trace_work(ids: list[int], what: tuple[str, ...], rows: tuple[int, int] | None,
                lens_k: int, lens_pieces: int = 0):
    """The trace job; `lens_pieces` > 0 adds `lens_pieces.L`, unicode [R, lens_pieces]: the
    text of the first ids of each lens row (a client has no tokenizer to name them)."""
    def work(engine: EngineLoop, job: Job) -> str:
        from app.server.trace_npz import npz_bytes
        from engine.inspect import InspectCancelled, inspect, to_arrays

        try:
            res = inspect(engine.model, ids, what=what, rows=rows, lens_k=lens_k,
                          should_stop=job.should_stop)
        except InspectCancelled:
            job.emit(Failed(ApiError("the trace was cancelled", status=503, code="cancelled")))
            return "cancelled"
        arrays = to_arrays(res)
        if lens_pieces:
            import numpy as np

            tok = engine.tokenizer
            for layer, top in res.lens_ids.items():
                arrays[f"lens_pieces.{layer}"] = np.array(
                    [[tok.token_bytes(int(i), special=True).decode("utf-8", errors="replace")
                      for i in row[:lens_pieces]] for row in top], dtype=str)
        job.emit(npz_bytes(arrays))
        return "ok"
    return work


async def _stream(job: Job, shape: ResponseShape, spec: GenerationSpec, n_prompt: int,
                  prompt: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
    """The SSE body of a streamed job. Chat streams open with a role chunk once the prompt is
    processed; the finish chunk (and the usage chunk, if asked for) carry `timings`. With
    `return_tokens`, the role chunk carries `prompt` and every token its own chunk with
    `tokens: [id]`, text or not (a token ending inside a UTF-8 character has none)."""
    sent, prompt_s = "", 0.0
    try:
        while True:
            ev = await job.events.get()
            if isinstance(ev, PromptDone):
                prompt_s = ev.seconds
                if shape.chat:
                    yield sse(shape.chunk("", role=True,
                                          **({"prompt": prompt} if prompt is not None else {})))
            elif isinstance(ev, Token):
                if spec.return_tokens:
                    sent += ev.text
                    yield sse(shape.chunk(ev.text, tokens=[int(ev.id)]))
                elif ev.text:
                    sent += ev.text
                    yield sse(shape.chunk(ev.text))
            elif isinstance(ev, Done):
                if ev.reason == "cancelled":
                    yield sse(error_body("the request was cancelled (server stopping)",
                                         "server_busy", None, "cancelled"))
                    yield sse("[DONE]")
                    return
                # text held back while it could have begun a stop string, or a final
                # partial character: Done.text is the authoritative whole
                if ev.text.startswith(sent) and len(ev.text) > len(sent):
                    yield sse(shape.chunk(ev.text[len(sent):]))
                timings = timings_body(ev.timings.prompt_tokens, prompt_s,
                                       ev.timings.per_token_s, ev.timings.prompt_reused)
                usage = usage_body(n_prompt, ev.timings.gen_tokens)
                yield sse(shape.chunk(finish=FINISH_REASONS[ev.reason], timings=timings))
                if spec.include_usage:
                    yield sse(shape.usage_chunk(usage, timings))
                yield sse("[DONE]")
                return
            elif isinstance(ev, Failed):
                yield sse(_as_api_error(ev.error).body())
                yield sse("[DONE]")
                return
    finally:
        job.cancel()  # the client left (the stream was cancelled) or we are done: a no-op then


def create_app(model: Any, tokenizer: Any, *, model_name: str, api_key: str | None = None,
               max_queue: int = 16, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The ASGI app serving `model`; `app.state.server.engine` is its `EngineLoop` (started by
    the app's lifespan, so run it under a server that runs lifespans, as uvicorn does)."""
    server = Server(model, tokenizer, model_name, max_queue, max_body_bytes)

    def api(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as err:
                return _error_response(err)
        return endpoint

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse(error_body(exc.detail or "error",
                                       "not_found_error" if exc.status_code == 404
                                       else "invalid_request_error"),
                            status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}",
                                       "server_error"), status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(server.engine.stop)

    routes = [
        Route("/health", api(server.health), methods=["GET"]),
        Route("/v1/models", api(server.models), methods=["GET"]),
        Route("/v1/chat/completions", api(server.chat_completions), methods=["POST"]),
        Route("/v1/completions", api(server.completions), methods=["POST"]),
        Route("/v1/lens/trace", api(server.trace), methods=["POST"]),
    ]
    middleware = [Middleware(ApiKeyMiddleware, api_key=api_key)] if api_key else []
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.server = server
    return app
