"""`llmlens bench MODEL --chat-turns N`: time to first token over a multi-turn conversation.

Plays a conversation of N short user messages through the app's own path: the conversation
settings build the `PromptRequest` (app/conversation_settings.py `prompt_request`), and the
engine worker (app/engine_worker.py `EngineWorker`, called directly on this thread) renders it
with the chat template (or Complete mode for a model without one, as a new conversation in the
app starts), then generates with the cache it keeps across replies. Each reply is greedy and at
most `max_new_tokens` long.

Per turn it reports the time to first token (prompt building included: the template and the
tokenizer see the whole conversation every turn), the prompt tokens actually processed and the
ones kept in the cache. The same conversation is also played with the cache emptied before
every turn (`no_reuse`, what every turn cost before the cache was kept), interleaved with the
first by repetition. The goal: TTFT of turn N depends on the new tokens only, so the last
turn's TTFT stays within 1.2x of the first's.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

USER_MESSAGES = tuple(f"Question {i}: name one animal that lives in the sea." for i in range(1, 65))
WARMUP_MESSAGE = "Say hello."


class _Recorder:
    """Collects one request's signals from the worker (connected directly: same thread)."""

    def __init__(self, worker) -> None:
        self.events: dict[str, Any] = {}
        worker.promptReady.connect(lambda _rid, _text, ids, _spans: self._at("ready", len(ids)))
        worker.promptDone.connect(lambda _rid, info: self._at("prompt", info))
        worker.finished.connect(lambda _rid, result: self._at("finished", result))
        worker.failed.connect(lambda _rid, message: self._at("failed", message))
        worker.loadFailed.connect(lambda _rid, message: self._at("failed", message))

    def _at(self, name: str, value: Any) -> None:
        self.events[name] = (time.perf_counter(), value)

    def clear(self) -> None:
        self.events = {}


def _play(worker, rec: _Recorder, settings: dict[str, Any], turns: int, reuse: bool,
          first_message: int = 0) -> list[dict[str, Any]]:
    """One conversation of `turns` user messages; per turn its figures."""
    from app.conversation_settings import prompt_request
    from app.conversations import Message
    from engine.errors import LLMLensError

    messages: list[Message] = []
    rows = []
    if worker.caches is not None:
        worker.caches.reset()  # turn 1 processes all of its prompt: nothing is kept
    for turn in range(turns):
        messages.append(Message("user", USER_MESSAGES[(first_message + turn) % len(USER_MESSAGES)]))
        request = prompt_request(settings, messages)
        if not reuse and worker.caches is not None:
            worker.caches.reset()  # every turn from scratch, as before the cache was kept
        rec.clear()
        t0 = time.perf_counter()
        worker.generate(turn + 1, request, None)
        if "failed" in rec.events:
            raise LLMLensError(f"turn {turn + 1}: {rec.events['failed'][1]}")
        t_ready, n_prompt = rec.events["ready"]
        result = rec.events["finished"][1]
        t = result["timings"]
        rows.append({"ttft_s": (t_ready - t0) + (t["ttft_s"] or 0.0),
                     "engine_ttft_s": t["ttft_s"], "prompt_build_s": t_ready - t0,
                     "prompt_tokens": t["prompt_tokens"],
                     "prompt_reused": t.get("prompt_reused") or 0,
                     "context_tokens": n_prompt, "gen_tokens": t["gen_tokens"]})
        messages.append(Message("assistant", result["text"] or ""))
    return rows


def run_chat_bench(path: str | Path, turns: int = 10, max_new_tokens: int = 16,
                   threads: int | None = None, reps: int = 3,
                   progress=None) -> dict[str, Any]:
    """Play `reps` conversations of `turns` turns with the cache kept, and as many with it
    emptied before each turn, interleaved; per turn the median over reps."""
    from app.engine_worker import EngineWorker
    from engine.errors import LLMLensError

    if turns < 1 or max_new_tokens < 1 or reps < 1:
        raise LLMLensError(f"--chat-turns needs at least 1 turn, -n >= 1 and --reps >= 1 "
                           f"(got {turns} turns, -n {max_new_tokens}, --reps {reps})")
    worker = EngineWorker()
    rec = _Recorder(worker)
    worker.load(0, str(path), 0, threads or 0)
    if "failed" in rec.events or worker.model is None:
        raise LLMLensError(f"cannot load {path}: {rec.events.get('failed', (0, '?'))[1]}")
    info = worker.info
    mode = "chat" if info["has_chat_template"] else "complete"
    settings = {"mode": mode, "system_prompt": "", "temperature": 0.0, "seed": 0,
                "max_new_tokens": max_new_tokens, "threads": threads or 0}
    # kernels, allocator and the cache's pages warm up on a conversation of its own
    _play(worker, rec, {**settings, "max_new_tokens": 4}, 2, True, first_message=40)
    runs: dict[bool, list[list[dict[str, Any]]]] = {True: [], False: []}
    for rep in range(reps):
        for reuse in (True, False):
            runs[reuse].append(_play(worker, rec, settings, turns, reuse))
            if progress:
                ttft = [r["ttft_s"] for r in runs[reuse][-1]]
                progress(f"rep {rep + 1}/{reps} {'kept cache' if reuse else 'no reuse  '}: "
                         f"TTFT turn 1 {ttft[0] * 1000:.1f} ms, turn {turns} "
                         f"{ttft[-1] * 1000:.1f} ms")

    def per_turn(reuse: bool, key: str, digits: int = 5) -> list:
        values = [statistics.median(run[t][key] for run in runs[reuse]) for t in range(turns)]
        return [round(v, digits) if isinstance(v, float) else v for v in values]

    def block(reuse: bool) -> dict[str, Any]:
        ttft = per_turn(reuse, "ttft_s")
        return {"ttft_s_per_turn": ttft,
                "prompt_tokens_per_turn": per_turn(reuse, "prompt_tokens"),
                "ttft_ratio_last_first": round(ttft[-1] / ttft[0], 3) if ttft[0] > 0 else None}

    return {"model": str(path), "mode": mode, "turns": turns, "reps": reps,
            "max_new_tokens": max_new_tokens, "threads": threads or 0,
            **block(True),
            "prompt_reused_per_turn": per_turn(True, "prompt_reused"),
            "context_tokens_per_turn": per_turn(True, "context_tokens"),
            "gen_tokens_per_turn": per_turn(True, "gen_tokens"),
            "engine_ttft_s_per_turn": per_turn(True, "engine_ttft_s"),
            "prompt_build_s_per_turn": per_turn(True, "prompt_build_s"),
            "cache_bytes_per_token": int(info["cache_bytes_per_token"]),
            "no_reuse": block(False)}


def print_chat_bench(s: dict[str, Any]) -> None:
    """The human-readable table of `run_chat_bench`'s result."""
    print(f"model   {s['model']}  ({s['mode']} mode, {s['turns']} turns, {s['reps']} reps, "
          f"replies of up to {s['max_new_tokens']} tokens, greedy)")
    print(f"{'turn':>4} {'context':>8} {'processed':>9} {'kept':>6} {'TTFT ms':>9} "
          f"{'no reuse: processed':>20} {'TTFT ms':>9}")
    nr = s["no_reuse"]
    for t in range(s["turns"]):
        print(f"{t + 1:>4} {s['context_tokens_per_turn'][t]:>8} "
              f"{s['prompt_tokens_per_turn'][t]:>9} {s['prompt_reused_per_turn'][t]:>6} {s['ttft_s_per_turn'][t] * 1000:>9.1f} "
              f"{nr['prompt_tokens_per_turn'][t]:>20} {nr['ttft_s_per_turn'][t] * 1000:>9.1f}")
    print(f"ratio   TTFT turn {s['turns']} / turn 1: {s['ttft_ratio_last_first']} with the kept "
          f"cache, {nr['ttft_ratio_last_first']} without (goal: <= 1.2)")
    print(f"KV      {s['cache_bytes_per_token'] / 2**10:.1f} KiB per token of context")
