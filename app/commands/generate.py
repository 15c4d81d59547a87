"""`llmlens generate [MODEL] -p PROMPT`: stream a continuation to stdout.

With --chat the prompt becomes one user message rendered by the model's chat template; with
--json nothing is streamed and one JSON object (text, ids, prompt ids, timings) is printed.
A summary of speeds goes to stderr.

--trace-routing FILE.json (MoE models) writes which experts every token went to, in every MoE
layer: `{"layers": [...], "tokens": [{"id", "text", "experts", "weights"}]}` for the prompt
tokens and every generated one. generate() never feeds its last token back through the model,
so that token is run once more, with the recorder, into the same cache.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from engine.default_model import resolve_model_path
from engine.errors import LLMLensError
from engine.generate import Done, PromptDone, Token, generate
from engine.gguf.reader import open_gguf
from engine.models.base import load_model
from engine.moe import collect_routing, routing_trace_json
from engine.sampling import SamplingParams
from engine.tokenizer import load_tokenizer
from engine.trace import Recorder

_DEFAULTS = SamplingParams()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the embedded model)")
    p.add_argument("-p", "--prompt", required=True, help="prompt text")
    p.add_argument("-n", "--n-predict", type=int, default=256, help="max new tokens (default 256)")
    p.add_argument("--temperature", "--temp", type=float, default=_DEFAULTS.temperature,
                   help=f"0 = greedy (default {_DEFAULTS.temperature})")
    p.add_argument("--top-k", type=int, default=_DEFAULTS.top_k, help="0 = off")
    p.add_argument("--top-p", type=float, default=_DEFAULTS.top_p, help="1 = off")
    p.add_argument("--min-p", type=float, default=_DEFAULTS.min_p, help="0 = off")
    p.add_argument("--repeat-penalty", type=float, default=_DEFAULTS.repeat_penalty, help="1 = off")
    p.add_argument("--repeat-last-n", type=int, default=_DEFAULTS.repeat_last_n)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when TEXT appears (repeatable); TEXT is not printed")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="context size in tokens")
    p.add_argument("--trace-routing", metavar="FILE.json", default=None,
                   help="MoE models: write the experts each token (prompt and generated) was "
                        "routed to in every MoE layer, with their weights, as JSON")


def chat_prompt_ids(gf, tok, user_text: str) -> list[int]:
    """The prompt as one user turn of the model's chat template (or the arch's fallback)."""
    from engine.chat_template import render_chat

    text = render_chat(gf.metadata, [{"role": "user", "content": user_text}],
                       add_generation_prompt=True)
    ids = tok.encode(text, add_special=True, parse_special=True)
    if len(ids) >= 2 and tok.bos_id is not None and ids[0] == ids[1] == tok.bos_id:
        ids = ids[1:]  # the template wrote BOS and the tokenizer added another (as llama.cpp warns)
    return ids


def _check_moe(gf) -> None:
    """--trace-routing needs routed experts: fail before loading a dense model's weights."""
    arch = gf.architecture
    if not gf.metadata.get(f"{arch}.expert_count"):
        raise LLMLensError(f"--trace-routing needs a mixture-of-experts model, but "
                           f"{gf.path.name} ({arch}) has no experts")


def write_routing_trace(path: str, model, tok, recorder: Recorder, cache, prompt_ids: list[int],
                        gen_ids: list[int]) -> dict:
    """Run the last generated token through the model (generate() stops before feeding it),
    then write the routing of every prompt and generated token to `path`; returns the document."""
    if gen_ids:
        pos = len(prompt_ids) + len(gen_ids) - 1
        model.forward(torch.tensor(gen_ids[-1:], dtype=torch.long), cache, pos, recorder,
                      all_logits=False)
    seq = list(prompt_ids) + list(gen_ids)
    ids, weights = collect_routing(recorder, model.moe_layers)
    if ids and ids[0].shape[0] != len(seq):  # e.g. generation cancelled mid-prompt
        raise LLMLensError(f"routing was recorded for {ids[0].shape[0]} of {len(seq)} tokens")
    texts = [tok.decode([t], skip_special=False) for t in seq]
    doc = routing_trace_json(model.moe_layers, seq, texts, ids, weights)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
        f.write("\n")
    return doc


def run(args: argparse.Namespace) -> int:
    gf = open_gguf(resolve_model_path(args.model))
    if args.trace_routing:
        _check_moe(gf)
    model = load_model(gf, n_ctx=args.ctx_size, threads=args.threads)
    tok = load_tokenizer(model.gguf)
    recorder = cache = None
    if args.trace_routing:
        if not getattr(model, "moe_layers", None):
            raise LLMLensError(f"--trace-routing needs a mixture-of-experts model, but "
                               f"{gf.path.name} has no MoE layers")
        recorder = Recorder(names=("moe_topk_ids", "moe_topk_weights"))
        cache = model.new_cache()  # kept to run the last token through afterwards
    if args.chat:
        prompt_ids = chat_prompt_ids(model.gguf, tok, args.prompt)
    else:
        prompt_ids = tok.encode(args.prompt, add_special=True, parse_special=True)
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                            repeat_last_n=args.repeat_last_n, seed=args.seed)
    out = sys.stdout
    printed, ids, done = "", [], None
    for ev in generate(model, tok, prompt_ids, params, max_new_tokens=args.n_predict,
                       stop_strings=args.stop, trace=recorder, cache=cache):
        if isinstance(ev, Token):
            ids.append(ev.id)
            if not args.json and ev.text:
                out.write(ev.text)
                out.flush()
                printed += ev.text
        elif isinstance(ev, Done):
            done = ev
        elif isinstance(ev, PromptDone):
            pass
    t = done.timings
    if args.trace_routing:
        write_routing_trace(args.trace_routing, model, tok, recorder, cache, list(prompt_ids), ids)
    if args.json:
        json.dump({"text": done.text, "ids": ids, "prompt_ids": list(prompt_ids),
                   "finish_reason": done.reason,
                   "timings": {"prompt_tokens": t.prompt_tokens, "prompt_tok_s": t.prompt_tok_s,
                               "ttft_s": t.ttft_s, "gen_tokens": t.gen_tokens,
                               "gen_tok_s": t.gen_tok_s,
                               "cache_bytes_per_token": t.cache_bytes_per_token}},
                  out, ensure_ascii=False)
        out.write("\n")
    else:
        # Text held back while it could have started a stop string, or a final partial char.
        if done.text.startswith(printed):
            out.write(done.text[len(printed):])
        out.write("\n")
    out.flush()
    print(f"[{done.reason}] prompt: {t.prompt_tokens} tokens, {t.prompt_tok_s:.1f} tok/s; "
          f"generated: {t.gen_tokens} tokens, {t.gen_tok_s:.1f} tok/s", file=sys.stderr)
    return 0
