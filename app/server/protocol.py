"""The OpenAI wire format: request validation and response bodies. No I/O, no model calls.

Every request body is checked here before anything is queued, and every problem becomes an
`ApiError` that the app answers as OpenAI's error object with status 400:
`{"error": {"message", "type", "param", "code"}}`. Fields OpenAI clients send that change
nothing here (`model`, `user`, `frequency_penalty` ...) are ignored, as llama.cpp's server
ignores them; fields asking for something this server cannot do (`n` > 1, `logprobs`,
`tools`, `echo`, `suffix`, a JSON `response_format`) are refused rather than silently dropped.

Sampling defaults are the engine's (= llama.cpp's): temperature 0.8, top_k 40, top_p 0.95,
min_p 0.05, no repeat penalty. llama.cpp's extra fields `top_k`, `min_p`, `repeat_penalty`,
`repeat_last_n` are honoured.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.sampling import SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOPS = 16  # OpenAI allows 4; llama.cpp any number. Each is scanned after every token.
MAX_STOP_CHARS = 1000
_DEFAULTS = SamplingParams()


class ApiError(Exception):
    """An error answered as OpenAI's error object (status 400 unless told)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400, type_: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status
        self.type = type_ or _ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
                500: "server_error", 503: "server_busy"}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# -- parsing ---------------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a dict; ApiError for anything else (NaN and Infinity included)."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ApiError("the request body is not UTF-8 text", code="invalid_json") from None
    except RecursionError:
        raise ApiError("the request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise ApiError(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object", code="invalid_json")
    return body


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v):
        raise ApiError(f"'{name}' must be a number, got {json.dumps(v)[:40]}", param=name,
                       code="invalid_type")
    if not lo <= v <= hi:
        raise ApiError(f"'{name}' must be between {lo:g} and {hi:g}, got {v}", param=name,
                       code="invalid_value")
    return float(v)


def _integer(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int
             ) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not _is_int(v):
        raise ApiError(f"'{name}' must be an integer, got {json.dumps(v)[:40]}", param=name,
                       code="invalid_type")
    if not lo <= v <= hi:
        raise ApiError(f"'{name}' must be between {lo} and {hi}, got {v}", param=name,
                       code="invalid_value")
    return v


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for name, what in (("logprobs", "logprobs"), ("top_logprobs", "logprobs"), ("echo", "echo"),
                       ("tools", "tool calling"), ("functions", "function calling"),
                       ("suffix", "suffix (fill-in-the-middle)")):
        v = body.get(name)
        if v not in (None, False, [], "", 0):
            raise ApiError(f"{what} is not supported by this server", param=name,
                           code="unsupported")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, Mapping) and rf.get("type") == "text"):
        raise ApiError("response_format other than {\"type\": \"text\"} is not supported",
                       param="response_format", code="unsupported")
    n = _integer(body, "n", 1, 1, 1 << 31)
    if n != 1:
        raise ApiError("n must be 1: this server generates one choice per request", param="n",
                       code="unsupported")
    best_of = _integer(body, "best_of", 1, 1, 1 << 31)
    if best_of != 1:
        raise ApiError("best_of must be 1", param="best_of", code="unsupported")


@dataclass(frozen=True)
class GenerationSpec:
    """The validated generation settings of a chat or completion request."""

    params: SamplingParams
    max_tokens: int | None  # None: until the context is full
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    # llama.cpp's `return_tokens`: each streamed piece carries its token ids (`tokens`) and the
    # first chunk the prompt's ids, text and spans (`prompt`), so a client can inspect the
    # exact sequence (the app's remote backend does)
    return_tokens: bool = False


def generation_spec(body: Mapping[str, Any], n_ctx: int) -> GenerationSpec:
    """Sampling, length, stop and streaming fields of `body` (ApiError on a bad one)."""
    _refuse_unsupported(body)
    temperature = _number(body, "temperature", _DEFAULTS.temperature, 0.0, 100.0)
    top_p = _number(body, "top_p", _DEFAULTS.top_p, 0.0, 1.0)
    min_p = _number(body, "min_p", _DEFAULTS.min_p, 0.0, 1.0)
    repeat_penalty = _number(body, "repeat_penalty", _DEFAULTS.repeat_penalty, 1e-3, 100.0)
    top_k = _integer(body, "top_k", _DEFAULTS.top_k, -1, 1 << 31)
    repeat_last_n = _integer(body, "repeat_last_n", _DEFAULTS.repeat_last_n, -1, 1 << 31)
    seed = _integer(body, "seed", None, -1, (1 << 63) - 1)
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):  # the newer name wins when both are set
        if body.get(name) is not None:
            max_tokens = _integer(body, name, None, -(1 << 63), 1 << 63)
            if max_tokens < 1:
                raise ApiError(f"'{name}' must be at least 1, got {max_tokens}", param=name,
                               code="invalid_value")
            if max_tokens > n_ctx:
                raise ApiError(f"'{name}' is {max_tokens} but the context window is {n_ctx} "
                               f"tokens", param=name, code="invalid_value")
            break
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise ApiError("'stop' must be a string or a list of strings", param="stop",
                       code="invalid_type")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(f"'stop' takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} "
                       f"characters", param="stop", code="invalid_value")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError("'stream' must be true or false", param="stream", code="invalid_type")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, Mapping) or not isinstance(opts.get("include_usage", False), bool):
            raise ApiError("'stream_options' must be an object like {\"include_usage\": true}",
                           param="stream_options", code="invalid_type")
        include_usage = bool(opts.get("include_usage", False))
    return_tokens = body.get("return_tokens", False)
    if not isinstance(return_tokens, bool):
        raise ApiError("'return_tokens' must be true or false", param="return_tokens",
                       code="invalid_type")
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                            seed=None if seed == -1 else seed)
    return GenerationSpec(params, max_tokens, tuple(s for s in stops if s), stream, include_usage,
                          return_tokens)


def chat_messages(body: Mapping[str, Any], param: str = "messages") -> list[tuple[str, str]]:
    """(role, content) pairs of a chat request; text content only.

    `developer` (OpenAI's newer name for system instructions) is rendered as `system`, which
    is the role chat templates know."""
    messages = body.get(param)
    if not isinstance(messages, list) or not messages:
        raise ApiError(f"'{param}' must be a non-empty list of messages", param=param,
                       code="invalid_type" if not isinstance(messages, list) else "invalid_value")
    out = []
    for i, m in enumerate(messages):
        where = f"{param}[{i}]"
        if not isinstance(m, Mapping):
            raise ApiError(f"{where} must be an object with 'role' and 'content'", param=where,
                           code="invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(f"{where}.role must be one of {', '.join(ROLES)}, got "
                           f"{json.dumps(role)[:40]}", param=f"{where}.role", code="invalid_value")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, Mapping) and part.get("type") == "text"
                        and isinstance(part.get("text"), str)):
                    raise ApiError(f"{where}.content[{j}]: only text parts "
                                   f"({{\"type\": \"text\", \"text\": ...}}) are supported",
                                   param=f"{where}.content", code="unsupported")
                parts.append(part["text"])
            content = "".join(parts)
        elif not isinstance(content, str):
            raise ApiError(f"{where}.content must be a string or a list of text parts",
                           param=f"{where}.content", code="invalid_type")
        out.append(("system" if role == "developer" else role, content))
    return out


def completion_prompt(body: Mapping[str, Any], n_vocab: int) -> str | list[int]:
    """The `prompt` of a completion request: text, or token ids (one prompt only)."""
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # ["text"] or [[ids]]: one prompt in the batch form
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(_is_int(i) for i in p):
        bad = [i for i in p if not 0 <= i < n_vocab]
        if bad:
            raise ApiError(f"'prompt' token ids must be in [0, {n_vocab}), got {bad[:5]}",
                           param="prompt", code="invalid_value")
        return list(p)
    if isinstance(p, list) and len(p) > 1 and all(isinstance(x, (str, list)) for x in p):
        raise ApiError("only one prompt per request is supported", param="prompt",
                       code="unsupported")
    raise ApiError("'prompt' must be a string or a non-empty list of token ids", param="prompt",
                   code="invalid_type")


def check_prompt_length(n_prompt: int, n_ctx: int, param: str) -> None:
    if n_prompt == 0:
        raise ApiError("the prompt is empty: nothing to generate from", param=param,
                       code="invalid_value")
    if n_prompt >= n_ctx:
        raise ApiError(f"the prompt is {n_prompt} tokens but the context window is {n_ctx} "
                       f"tokens, leaving no room to generate", param=param,
                       code="context_length_exceeded")


# -- responses -------------------------------------------------------------------------------------
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


def timings_body(n_prompt: int, prompt_s: float, per_token_s: Sequence[float],
                 n_cached: int = 0) -> dict[str, Any]:
    """llama.cpp server's `timings` object: `n_prompt` tokens processed, `n_cached` more taken
    from the kept KV cache (llama.cpp's `cache_n`)."""
    n, gen_s = len(per_token_s), float(sum(per_token_s))
    prompt_ms, gen_ms = prompt_s * 1e3, gen_s * 1e3
    return {
        "cache_n": n_cached,
        "prompt_n": n_prompt, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / n_prompt if n_prompt else 0.0,
        "prompt_per_second": n_prompt / prompt_s if prompt_s > 0 else 0.0,
        "predicted_n": n, "predicted_ms": gen_ms,
        "predicted_per_token_ms": gen_ms / n if n else 0.0,
        "predicted_per_second": n / gen_s if gen_s > 0 else 0.0,
    }


def usage_body(n_prompt: int, n_gen: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
            "total_tokens": n_prompt + n_gen}


@dataclass(frozen=True)
class ResponseShape:
    """What differs between chat and completion bodies."""

    chat: bool
    id: str
    model: str
    created: int

    @classmethod
    def new(cls, chat: bool, seq: int, model: str) -> ResponseShape:
        return cls(chat, f"{'chatcmpl' if chat else 'cmpl'}-llmlens-{seq}", model, int(time.time()))

    def _base(self, chunk: bool) -> dict[str, Any]:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat \
            else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, text: str, finish: str, usage: dict, timings: dict) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self._base(False), "choices": [choice], "usage": usage, "timings": timings}

    def chunk(self, text: str | None = None, finish: str | None = None, role: bool = False,
              **extra: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        return {**self._base(True), "choices": [choice], **extra}

    def usage_chunk(self, usage: dict, timings: dict) -> dict[str, Any]:
        return {**self._base(True), "choices": [], "usage": usage, "timings": timings}


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
