"""The app as a client of an OpenAI-compatible server (`llmlens serve`, llama.cpp's server, ...).

Qt-free and torch-free: `OpenAIClient.stream_chat` is a plain generator yielding the same event
kinds as `engine.generate` (same class names and fields), so a worker can drive either:

    PromptDone(n_tokens, seconds, tok_s)  when the first streamed event arrives: `seconds` is
                                          the time to first byte (queueing + prompt processing);
                                          n_tokens and tok_s are 0 (the stream does not say)
    Token(index, id, text, prob, top, seconds)  one per content piece; id -1, prob nan, top ()
                                          (the API does not send them); seconds since the last
    Done(reason, text, timings, message)  always last, exactly once

With `return_tokens=True` (understood by `llmlens serve`; other servers ignore it) the stream
also says which tokens it is made of: `Prompt(text, ids, spans)` comes first (the rendered
prompt as the model saw it), and each `Token` carries its real id, one per generated token
(text "" for a token that ends inside a UTF-8 character).

`models_info()` returns /v1/models' entries; `lens_facts(entry)` says whether that server has
`llmlens serve`'s extension, and `trace()` calls it (`POST /v1/lens/trace`, arrays as numpy).

`Done.reason` is "eos" (OpenAI's "stop": the turn ended or a stop string matched), "length",
"cancelled" (`should_stop()` returned True; checked as each streamed line arrives) or "error"
(connection refused, timeout, 401, 4xx/5xx, a stream that ends before its finish chunk, or an
error event): `message` then says what happened in one line, and `text` keeps what arrived.
`Timings` are measured on this side of the wire (ttft, inter-token times) and completed from
the server's `usage` and llama.cpp-style `timings` object when it sends them (`Timings.server`).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import httpx
import numpy as np

DEFAULT_TIMEOUT = httpx.Timeout(10.0, read=300.0)  # a long prompt on a CPU may take minutes
PARAM_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n",
                "ignore_eos",  # llama.cpp and vLLM: decode on past EOS (`llmlens bench --url`)
                "seed", "max_tokens", "stop")


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PromptDone:
    n_tokens: int
    seconds: float
    tok_s: float


@dataclass(frozen=True)
class Token:
    index: int
    id: int
    text: str
    prob: float
    top: tuple[tuple[int, str, float], ...]
    seconds: float


@dataclass(frozen=True)
class Timings:
    prompt_tokens: int
    prompt_tok_s: float
    ttft_s: float | None
    gen_tokens: int
    gen_tok_s: float
    per_token_s: tuple[float, ...]
    cache_bytes_per_token: int = 0
    server: dict[str, Any] | None = None  # the server's own `timings` object, if it sent one


@dataclass(frozen=True)
class Done:
    reason: Literal["eos", "stop", "length", "cancelled", "context", "error"]
    text: str
    timings: Timings
    message: str = ""  # why, when reason is "error"


Event = Union[Prompt, PromptDone, Token, Done]

_FINISH = {"stop": "eos", "length": "length"}


class _Failure(Exception):
    """Ends a stream with Done("error", message)."""


class OpenAIClient:
    """A client for one OpenAI-compatible server. `base_url` may end in /v1 or not."""

    def __init__(self, base_url: str, api_key: str | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, model: str | None = None
                 ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def models(self) -> list[str]:
        """The ids the server serves; raises ConnectionError with a one-line message."""
        return [m["id"] for m in self.models_info()]

    def models_info(self) -> list[dict[str, Any]]:
        """/v1/models' entries (each has an "id"); raises ConnectionError with a one-line
        message."""
        try:
            r = self._http.get("/models")
        except httpx.HTTPError as exc:
            raise ConnectionError(_network_message(exc, self.base_url)) from None
        if r.status_code != 200:
            raise ConnectionError(_status_message(r.status_code, r.text))
        try:
            data = r.json()["data"]
            if not all(isinstance(m, dict) and isinstance(m["id"], str) for m in data):
                raise TypeError
            return data
        except (ValueError, KeyError, TypeError):
            raise ConnectionError(f"{self.base_url}/models did not answer a model list") from None

    def trace(self, ids: Sequence[int], what: Sequence[str], rows: tuple[int, int] | None = None,
              lens_k: int | None = None, lens_pieces: int = 0) -> dict[str, np.ndarray]:
        """`llmlens serve`'s `POST /v1/lens/trace` over `ids`: the arrays of `llmlens trace`
        (engine.inspect.to_arrays' names), plus `lens_pieces.L` when asked. Raises
        ConnectionError with a one-line message."""
        body: dict[str, Any] = {"ids": [int(i) for i in ids], "what": list(what)}
        if rows is not None:
            body["rows"] = [int(rows[0]), int(rows[1])]
        if lens_k is not None:
            body["lens_k"] = int(lens_k)
        if lens_pieces:
            body["lens_pieces"] = int(lens_pieces)
        try:
            r = self._http.post("/lens/trace", json=body)
        except httpx.HTTPError as exc:
            raise ConnectionError(_network_message(exc, self.base_url)) from None
        if r.status_code != 200:
            raise ConnectionError(_status_message(r.status_code, r.text))
        try:
            with np.load(io.BytesIO(r.content), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except (ValueError, OSError):
            raise ConnectionError(f"{self.base_url}/lens/trace did not answer an .npz") from None

    def stream_chat(self, messages: Sequence[Mapping[str, str] | tuple[str, str]],
                    params: Mapping[str, Any] | None = None,
                    should_stop: Callable[[], bool] = lambda: False,
                    return_tokens: bool = False) -> Iterator[Event]:
        """Stream a chat reply; see the module docstring for the events. `params` takes
        SamplingParams' fields plus max_tokens and stop; None values are left out."""
        state = _StreamState(time.perf_counter())
        try:
            body = self._chat_body(messages, params or {})
            if return_tokens:
                body["return_tokens"] = True
            with self._http.stream("POST", "/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise _Failure(_status_message(r.status_code, r.text))
                for line in r.iter_lines():
                    if should_stop():
                        yield state.done("cancelled")
                        return
                    for ev in state.feed(line):
                        yield ev
                    if state.finished:
                        break
        except _Failure as exc:
            yield state.done("error", str(exc))
            return
        except httpx.HTTPError as exc:
            yield state.done("error", _network_message(exc, self.base_url, state.got_any))
            return
        if not state.finished:
            yield state.done("error", f"the stream ended early, after {state.index} pieces "
                                      f"(the server stopped or the connection dropped)")
            return
        yield state.done(state.reason)

    def _chat_body(self, messages, params: Mapping[str, Any]) -> dict[str, Any]:
        msgs = [m if isinstance(m, Mapping) else {"role": m[0], "content": m[1]}
                for m in messages]
        if self.model is None:
            try:
                names = self.models()
            except ConnectionError as exc:
                raise _Failure(str(exc)) from None
            self.model = names[0] if names else ""
        body: dict[str, Any] = {"model": self.model, "messages": msgs, "stream": True,
                                "stream_options": {"include_usage": True}}
        for key in PARAM_FIELDS:
            if params.get(key) is not None:
                body[key] = params[key]
        if "max_new_tokens" in params and "max_tokens" not in body:
            body["max_tokens"] = params["max_new_tokens"]
        return body


class _StreamState:
    """What has arrived so far on one stream, turned into events."""

    def __init__(self, t_start: float) -> None:
        self.t_start = self.t_last = t_start
        self.got_any = False
        self.finished = False
        self.reason = "eos"
        self.text = ""
        self.index = 0
        self.ttft: float | None = None
        self.per_token: list[float] = []
        self.usage: dict[str, Any] = {}
        self.server_timings: dict[str, Any] | None = None
        self.n_prompt = 0  # known from the stream's `prompt` (return_tokens)
        self.with_ids = False  # the server names each piece's token ids (return_tokens)

    def feed(self, line: str) -> Iterator[Event]:
        if not line.startswith("data:"):
            return  # blank separators, comments (": ping"), "event:" lines
        data = line[5:].strip()
        now = time.perf_counter()
        if data == "[DONE]":
            yield from self._first(now)
            self.finished = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise _Failure(f"the server sent something that is not JSON: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise _Failure(f"the server sent an unexpected event: {data[:80]!r}")
        prompt = chunk.get("prompt")
        if not self.got_any and isinstance(prompt, dict):
            self.with_ids = True
            try:
                self.n_prompt = len(prompt["ids"])
                yield Prompt(str(prompt["text"]), tuple(int(i) for i in prompt["ids"]),
                             tuple((int(a), int(b)) for a, b in prompt["spans"]))
            except (KeyError, TypeError, ValueError):
                raise _Failure("the server sent a malformed 'prompt' object") from None
        yield from self._first(now)
        if "error" in chunk:
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else err
            raise _Failure(f"the server reported an error: {msg}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("timings"), dict):
            self.server_timings = chunk["timings"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            piece = delta.get("content")
            piece = piece if isinstance(piece, str) else ""
            ids = chunk.get("tokens")
            if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
                self.with_ids = True
            elif self.with_ids:
                # text without tokens in a stream that names them: what the server held back
                # (a possible stop string) or a decoder's tail, part of the last token
                self.text += piece
                ids = []
            else:
                ids = [-1] if piece else []
            # one Token per id; a chunk's text goes with its last id (the one completing it)
            for k, tid in enumerate(ids):
                text = piece if k == len(ids) - 1 else ""
                self.text += text
                if self.ttft is None:
                    self.ttft = now - self.t_start
                self.per_token.append(now - self.t_last)
                yield Token(self.index, tid, text, math.nan, (), now - self.t_last)
                self.index += 1
                self.t_last = now
            if choice.get("finish_reason"):
                self.reason = _FINISH.get(choice["finish_reason"], "stop")
        self.t_last = now

    def _first(self, now: float) -> Iterator[Event]:
        if not self.got_any:
            self.got_any = True
            yield PromptDone(self.n_prompt, now - self.t_start, 0.0)

    def done(self, reason: str, message: str = "") -> Done:
        st = self.server_timings or {}
        n_gen = int(self.usage.get("completion_tokens", st.get("predicted_n", self.index)))
        decode_s = sum(self.per_token[1:])
        timings = Timings(
            prompt_tokens=int(self.usage.get("prompt_tokens", st.get("prompt_n", 0))),
            prompt_tok_s=float(st.get("prompt_per_second", 0.0)),
            ttft_s=self.ttft, gen_tokens=n_gen,
            gen_tok_s=(len(self.per_token) - 1) / decode_s if decode_s > 0 else 0.0,
            per_token_s=tuple(self.per_token), server=self.server_timings)
        return Done(reason, self.text, timings, message)  # type: ignore[arg-type]


def _status_message(status: int, text: str) -> str:
    try:
        err = json.loads(text)["error"]
        detail = err["message"] if isinstance(err, dict) else str(err)
    except (ValueError, KeyError, TypeError):
        detail = text.strip()[:200]
    if status == 401:
        return f"the server refused the API key (401): {detail}"
    if status == 503:
        return f"the server is busy (503): {detail}"
    return f"the server answered {status}: {detail}"


def _network_message(exc: httpx.HTTPError, url: str, midway: bool = False) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {url}: {exc or 'connection refused'}"
    if isinstance(exc, httpx.TimeoutException):
        return f"{url} did not answer in time ({type(exc).__name__})"
    if midway:
        return f"the connection to {url} broke mid-reply: {type(exc).__name__}: {exc}"
    return f"request to {url} failed: {type(exc).__name__}: {exc}"
