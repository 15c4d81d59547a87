"""Text generation as a plain generator of small frozen events.

    for ev in generate(model, tok, tok.encode("Hi"), SamplingParams(temperature=0)):
        PromptDone -> the prompt is in the cache;  Token -> one new token;  Done -> finished

The CLI, the tests and the Qt worker all drive this one function. The prompt is processed in
batched chunks, then one token per step with the static KV cache.

A cache passed in is kept across calls, as llama.cpp's server keeps a slot's: the cache knows the
ids it holds (engine/kv_cache.py `TokenCache`), and only the part of the new prompt after the
longest common prefix is processed (always at least its last token, whose logits give the first
new token). So the next chat turn, a regenerated reply, an edited last message or a changed
system prompt cost only the tokens from the first difference on. PromptDone and Timings count
the tokens processed and the ones reused. Generation stops on an
end-of-generation id, a stop string (not included in the text), max_new_tokens,
`should_stop()` (checked before every step) or the end of the context.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch

from engine.errors import ContextOverflowError, LLMLensError
from engine.kv_cache import KVCache, TokenCache
from engine.sampling import SamplingParams, make_generator, make_sampler
from engine.trace import Recorder

# Tokens per batched prompt pass. It bounds the activations of a pass ([T, n_ff] projections,
# [H, T, S] attention scores): on Gemma 3 270M 128-token passes peak ~10 MB lower than 256-token
# ones (what keeps model memory within 1.3x the file) for ~10% less prompt speed.
PROMPT_CHUNK = 128


@dataclass(frozen=True)
class PromptDone:
    n_tokens: int  # prompt tokens processed by this call
    seconds: float
    tok_s: float
    n_reused: int = 0  # leading prompt tokens whose cache entries were kept from earlier calls


@dataclass(frozen=True)
class Token:
    index: int  # 0-based position among the generated tokens
    id: int
    text: str  # new text this token completes ("" while a UTF-8 char or a possible stop string is pending)
    prob: float  # the model's probability of this token (softmax of the raw logits)
    top: tuple[tuple[int, str, float], ...]  # the top_n (id, text, prob) under the same distribution
    seconds: float  # time to produce this token (forward pass + sampling)


@dataclass(frozen=True)
class Timings:
    prompt_tokens: int  # processed by this call (the prompt is prompt_tokens + prompt_reused)
    prompt_tok_s: float
    ttft_s: float | None  # start of generate() to the first token; None if none came
    gen_tokens: int
    gen_tok_s: float  # decode steps per second (the first token comes from the prompt pass)
    per_token_s: tuple[float, ...]
    cache_bytes_per_token: int
    prompt_reused: int = 0  # prompt tokens taken from the kept cache instead of processed


@dataclass(frozen=True)
class Done:
    reason: Literal["eos", "stop", "length", "cancelled", "context"]
    text: str  # everything generated (the authoritative text: Token.text may hold back a tail)
    timings: Timings


Event = Union[PromptDone, Token, Done]


def _load_malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or a no-op elsewhere."""
    try:
        import ctypes

        fn = ctypes.CDLL("libc.so.6").malloc_trim
        fn.argtypes = [ctypes.c_size_t]
        return lambda: fn(0) and None
    except (OSError, AttributeError):
        return lambda: None


trim_heap = _load_malloc_trim()
"""Give the heap pages freed by a prompt pass (its activations, MBs) back to the OS.

glibc keeps freed chunks mapped, so they would count in RSS for the rest of the conversation,
on top of the KV cache that decoding keeps growing (~6 MB of peak RSS on Gemma 3 270M); costs
well under a millisecond once per prompt."""


def prefill(model, ids: Sequence[int], cache: KVCache, start_pos: int = 0,
            trace: Recorder | None = None) -> torch.Tensor:
    """Process prompt ids in PROMPT_CHUNK-token passes, as generate() does; returns the last
    position's logits [1, n_vocab]."""
    logits = None
    for start in range(0, len(ids), PROMPT_CHUNK):
        chunk = torch.tensor(list(ids[start:start + PROMPT_CHUNK]), dtype=torch.long)
        logits = model.forward(chunk, cache, start_pos + start, trace, all_logits=False)  # [1, V]
    trim_heap()
    return logits


def reusable_prefix(cache: TokenCache | None, prompt: Sequence[int],
                    max_reuse: int | None = None) -> int:
    """How many leading tokens of `prompt` generate() would take from `cache` rather than
    process (0 for a cache that does not track its ids)."""
    if cache is None or not hasattr(cache, "reusable"):
        return 0
    return cache.reusable([int(i) for i in prompt], max_reuse)


def _prompt_pieces(start: int, end: int, checkpoint_at: int | None) -> list[tuple[int, int]]:
    """[start, end) in PROMPT_CHUNK-token passes, with a cut at `checkpoint_at` if given."""
    cuts = [start]
    for stop in ([checkpoint_at] if checkpoint_at is not None else []) + [end]:
        while cuts[-1] < stop:
            cuts.append(min(stop, cuts[-1] + PROMPT_CHUNK))
    return list(zip(cuts, cuts[1:]))


def _first_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Index of the earliest stop string occurring at or after `start`."""
    found = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(found) if found else None


def _pending_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-n:]):
                best = n
                break
    return best


def generate(model, tokenizer, prompt_ids: Sequence[int], params: SamplingParams = SamplingParams(),
             max_new_tokens: int = 256, stop_strings: Sequence[str] = (),
             should_stop: Callable[[], bool] = lambda: False, trace: Recorder | None = None,
             top_n: int = 5, cache: TokenCache | None = None,
             max_reuse: int | None = None) -> Iterator[Event]:
    """Generate from `prompt_ids`; yields PromptDone, then Token per token, then Done.

    `cache` may be passed to keep buffers and entries across calls: the longest prefix of the
    prompt it already holds (at most `max_reuse` tokens) is not processed again; its n_ctx
    (else model.n_ctx) bounds prompt plus generation. A `trace` records only the positions
    processed, so with a trace nothing is reused unless `max_reuse` says how much may be
    (the caller knows whether its recorder needs the earlier rows; a LiveTrace keeps only
    the last attention row, but routing of every position).
    """
    prompt = [int(i) for i in prompt_ids]
    n_ctx = cache.n_ctx if cache is not None else model.n_ctx
    if not prompt:
        raise LLMLensError("the prompt is empty: nothing to generate from")
    if len(prompt) >= n_ctx:
        raise ContextOverflowError(
            f"the prompt is {len(prompt)} tokens but the context window is {n_ctx} tokens, "
            f"leaving no room to generate; shorten the prompt or raise the context size")
    stops = tuple(s for s in stop_strings if s)
    t_start = time.perf_counter()
    cache = cache if cache is not None else model.new_cache(n_ctx)
    tracked = hasattr(cache, "reusable")  # a TokenCache (every model's new_cache makes one)
    if max_reuse is None and trace is not None:
        max_reuse = 0  # the recorder would miss the reused positions
    reused = reusable_prefix(cache, prompt, max_reuse)
    if tracked:
        cache.truncate(reused)
    else:
        cache.reset()
    n_new = len(prompt) - reused

    def timings(per_token: list[float], prompt_s: float, ttft: float | None) -> Timings:
        decode_s = sum(per_token[1:])
        return Timings(prompt_tokens=n_new,
                       prompt_tok_s=n_new / prompt_s if prompt_s > 0 else 0.0,
                       ttft_s=ttft, gen_tokens=len(per_token),
                       gen_tok_s=(len(per_token) - 1) / decode_s if decode_s > 0 else 0.0,
                       per_token_s=tuple(per_token), cache_bytes_per_token=cache.bytes_per_token,
                       prompt_reused=reused)

    # -- prompt: batched passes over what the cache does not hold; only the last row of logits
    # is needed. A cache that cannot go back to any position (a convolution state) saves its
    # state before the last prompt token: regenerating this prompt restarts from there.
    checkpoint_at = (len(prompt) - 1 if tracked and not cache.any_position
                     and n_new > 1 else None)
    logits = None
    for start, end in _prompt_pieces(reused, len(prompt), checkpoint_at):
        if should_stop():
            yield Done("cancelled", "", timings([], 0.0, None))
            return
        if start == checkpoint_at:
            cache.checkpoint()
        chunk = torch.tensor(prompt[start:end], dtype=torch.long)
        logits = model.forward(chunk, cache, start, trace, all_logits=False)  # [1, V]
        if tracked:
            cache.extend(prompt[start:end])
    trim_heap()
    prompt_s = time.perf_counter() - t_start
    yield PromptDone(n_new, prompt_s, n_new / prompt_s if prompt_s > 0 else 0.0, reused)

    # -- decode: one token per step
    eog = set(tokenizer.eot_ids) | ({tokenizer.eos_id} if tokenizer.eos_id is not None else set())
    sampler = make_sampler(params)
    generator = make_generator(params.seed)
    decoder = tokenizer.stream_decoder()
    history = list(prompt)
    text, emitted = "", 0  # all decoded text; how much of it the Token events carried
    per_token: list[float] = []
    ttft = None
    reason = None
    t_step = time.perf_counter()
    while reason is None:
        if max_new_tokens <= len(per_token):
            reason = "length"
            break
        if should_stop():
            reason = "cancelled"
            break
        if per_token:  # the first token comes from the prompt's logits
            pos = len(history) - 1
            if pos >= n_ctx:
                reason = "context"
                break
            ids = torch.tensor(history[-1:], dtype=torch.long)
            logits = model.forward(ids, cache, pos, trace, all_logits=False)  # [1, V]
            if tracked:
                cache.extend(history[-1:])
        row = logits[-1].float()  # [V]
        tid = sampler(row, history, generator)
        if tid in eog:
            reason = "eos"
            break
        history.append(tid)
        probs = torch.softmax(row, -1)  # [V]
        top_p, top_i = torch.topk(probs, top_n) if top_n > 0 else (probs[:0], probs[:0].long())
        top = tuple((int(i), tokenizer.decode([int(i)], skip_special=False), float(p))
                    for p, i in zip(top_p, top_i))
        text += decoder.feed(tid)
        cut = _first_stop(text, stops, emitted) if stops else None
        if cut is not None:
            text, reason = text[:cut], "stop"
            safe = cut
        else:
            safe = len(text) - (_pending_len(text, stops) if stops else 0)
        piece, emitted = text[emitted:safe], max(emitted, safe)
        now = time.perf_counter()
        per_token.append(now - t_step)
        if ttft is None:
            ttft = now - t_start
        yield Token(len(per_token) - 1, tid, piece, float(probs[tid]), top, per_token[-1])
        t_step = time.perf_counter()  # time spent by the consumer is not ours
        if reason is None and len(history) >= n_ctx:
            reason = "context"
    if reason != "stop":
        text += decoder.flush()
    yield Done(reason, text, timings(per_token, prompt_s, ttft))
