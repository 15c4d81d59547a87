"""Train the demo DeepSeek-V2 MoE from scratch and ship it as engine/assets/demo-moe.gguf.

    .venv/bin/python packaging/demo_moe/train.py             # the full, seeded run
    .venv/bin/python packaging/demo_moe/train.py --probe 120 # measure tokens/s for 120 s, no export
    .venv/bin/python packaging/demo_moe/train.py --resume    # redo export + measurements from the
                                                             # checkpoint in build/demo_moe/

Run it as a script path: `packaging` is also the name of a PyPI package that pip imports.
Steps, in order: gather the text (corpus.py), train a 4k byte-level BPE with the pre-tokenizer
llama.cpp calls `deepseek-llm`, train `transformers`' own DeepseekV2ForCausalLM with an
auxiliary load-balancing loss, measure held-out perplexity against a bigram model on the same
tokens, convert with llama.cpp's convert_hf_to_gguf.py (F16), then measure the routing of the
GGUF with OUR engine and write the model card, the loss curve and the routing summary.
Everything random is seeded; the step count is fixed (not a time budget), so a rerun on the
same interpreter and library versions retrains the same model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]  # corpus/routing_stats, then engine and tests.fixtures

import numpy as np  # noqa: E402

import corpus  # noqa: E402
import routing_stats  # noqa: E402

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"   # DeepSeek's own special-token spelling
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
PRE = "deepseek-llm"   # llama.cpp pre-tokenizer name; we train with exactly its regexes


@dataclass(frozen=True)
class Setup:
    seed: int = 1234
    vocab_size: int = 4096
    tokenizer_bytes: int = 6_000_000   # text the BPE trainer sees (the first docs of the shuffle)
    # model: DeepSeek-V2 layout at toy scale; llama.cpp needs q LoRA unless n_layer is 26/27
    hidden: int = 192
    layers: int = 5
    dense_layers: int = 1               # first_k_dense_replace, as DeepSeek does
    heads: int = 4
    q_lora_rank: int = 64
    kv_lora_rank: int = 48
    qk_nope: int = 32
    qk_rope: int = 16
    v_head: int = 32
    dense_ffn: int = 512
    experts: int = 8
    top_k: int = 2
    expert_ffn: int = 128
    shared_experts: int = 1
    # training
    ctx: int = 256
    batch: int = 8
    steps: int = 1100
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup: int = 60
    weight_decay: float = 0.1
    aux_coef: float = 0.01              # Switch-style balance loss, per MoE layer, averaged
    eval_every: int = 100
    heldout_tokens: int = 131_072       # final held-out evaluation (the first N tokens)


# ----------------------------------------------------------------------------- progress

class Progress:
    """A one-line bar on a terminal; a plain line every `every` steps in a log file."""

    def __init__(self, total: int, every: int = 10):
        self.total, self.every, self.t0 = total, every, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, step: int, text: str) -> None:
        done = step / self.total
        el = time.perf_counter() - self.t0
        eta = el / done - el if done > 0 else 0.0
        bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
        line = f"[{bar}] {step}/{self.total} {text} {el / 60:.1f}m<{eta / 60:.1f}m"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif step % self.every == 0 or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- tokenizer

def train_tokenizer(docs: tuple[str, ...], s: Setup, out: Path):
    """Byte-level BPE whose pre-tokenizer is llama.cpp's `deepseek-llm` regex sequence."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from engine.tokenizer.pretokenize import REGEXES

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in REGEXES["DEEPSEEK_LLM"]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=s.vocab_size, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    sample, n = [], 0
    for d in docs:
        if n >= s.tokenizer_bytes:
            break
        sample.append(d)
        n += len(d)
    tok.train_from_iterator(sample, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   model_max_length=s.ctx)
    fast.save_pretrained(out)
    # The converter loads this with AutoTokenizer: name the class, or it would rebuild a
    # DeepSeek tokenizer from vocab/merges with another pre-tokenizer.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True, add_eos_token=False)
    cfg_path.write_text(json.dumps(cfg, indent=1, ensure_ascii=False))
    return tok


def encode_stream(tok, docs: tuple[str, ...]) -> np.ndarray:
    """[BOS] doc [EOS] for every doc, concatenated: one int32 token stream."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    parts = []
    for i in range(0, len(docs), 256):
        for enc in tok.encode_batch(list(docs[i:i + 256]), add_special_tokens=False):
            parts.append(np.array([bos, *enc.ids, eos], dtype=np.int32))
    return np.concatenate(parts)


# ----------------------------------------------------------------------------- bigram baseline

def bigram_nll(train: np.ndarray, evals: np.ndarray, vocab: int, tune: np.ndarray
               ) -> tuple[float, float]:
    """Mean NLL (nats) on `evals` of an interpolated bigram P(b|a) = (c(a,b) + alpha P(b)) /
    (c(a) + alpha), alpha picked on `tune` (a held-back slice of the TRAINING source)."""
    counts = np.bincount(train[:-1].astype(np.int64) * vocab + train[1:], minlength=vocab * vocab)
    counts = counts.reshape(vocab, vocab).astype(np.float64)                # [V, V]
    row = counts.sum(1)                                                     # [V]
    uni = (np.bincount(train, minlength=vocab) + 1.0) / (len(train) + vocab)  # [V] add-one

    def nll(seq: np.ndarray, alpha: float) -> float:
        a, b = seq[:-1].astype(np.int64), seq[1:].astype(np.int64)
        p = (counts[a, b] + alpha * uni[b]) / (row[a] + alpha)
        return float(-np.log(p).mean())

    best = min((nll(tune, a), a) for a in (0.1, 0.3, 1, 3, 10, 30, 100, 300))
    return nll(evals, best[1]), best[1]


# ----------------------------------------------------------------------------- model

def build_model(s: Setup, tok_vocab: int, bos_id: int, eos_id: int):
    import torch
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    cfg = DeepseekV2Config(
        vocab_size=tok_vocab, hidden_size=s.hidden, intermediate_size=s.dense_ffn,
        moe_intermediate_size=s.expert_ffn, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.heads, q_lora_rank=s.q_lora_rank,
        kv_lora_rank=s.kv_lora_rank, qk_nope_head_dim=s.qk_nope, qk_rope_head_dim=s.qk_rope,
        v_head_dim=s.v_head, n_routed_experts=s.experts, num_experts_per_tok=s.top_k,
        n_shared_experts=s.shared_experts, first_k_dense_replace=s.dense_layers,
        topk_method="greedy", n_group=None, topk_group=None, norm_topk_prob=False,
        routed_scaling_factor=1.0, max_position_embeddings=4 * s.ctx, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=None,
        initializer_range=0.02, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg.architectures = ["DeepseekV2ForCausalLM"]
    torch.manual_seed(s.seed)
    model = DeepseekV2ForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():
        # HF initialises the router to zeros (every expert tied): break the symmetry
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.02)
    return model


class RouterTap:
    """Forward hooks on every router: its logits [N, E] and chosen experts [N, k] per call."""

    def __init__(self, model):
        self.logits: list = []
        self.topk: list = []
        self.hooks = []
        for name, mod in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(mod, "top_k"):
                self.hooks.append(mod.register_forward_hook(self._hook))

    def _hook(self, mod, inputs, out) -> None:
        router_logits, _, topk_idx = out
        self.logits.append(router_logits)
        self.topk.append(topk_idx)

    def clear(self) -> None:
        self.logits.clear()
        self.topk.clear()

    def aux_loss(self, n_expert: int):
        """Switch-Transformer balance loss E * sum_e f_e P_e, averaged over MoE layers: f_e is
        the share of top-k slots given to e (no gradient), P_e the mean router probability."""
        import torch

        losses = []
        for logits, idx in zip(self.logits, self.topk):
            probs = torch.softmax(logits.float(), dim=-1)                    # [N, E]
            f = torch.bincount(idx.reshape(-1), minlength=n_expert).float() / idx.numel()  # [E]
            losses.append(n_expert * (f * probs.mean(0)).sum())
        return torch.stack(losses).mean()


def lr_at(step: int, s: Setup) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_frac + (1 - s.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def eval_nll(model, stream: np.ndarray, ctx: int, max_tokens: int, batch: int = 16) -> float:
    """Mean next-token NLL (nats) over non-overlapping windows of ctx+1 tokens."""
    import torch
    import torch.nn.functional as F

    n_win = min(len(stream) - 1, max_tokens) // ctx
    wins = np.stack([stream[i * ctx:i * ctx + ctx + 1] for i in range(n_win)]).astype(np.int64)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, n_win, batch):
            x = torch.from_numpy(wins[i:i + batch])                          # [B, ctx+1]
            logits = model(input_ids=x[:, :-1], use_cache=False).logits       # [B, ctx, V]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           x[:, 1:].reshape(-1), reduction="sum"))
            count += x[:, 1:].numel()
    model.train()
    return total / count


def train(model, stream: np.ndarray, heldout: np.ndarray, s: Setup, max_seconds: float | None
          ) -> dict:
    """The training loop. max_seconds (probe only) stops early and reports throughput."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(s.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "gate.weight" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "gate.weight" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.95), eps=1e-8)
    tap = RouterTap(model)
    hist: dict[str, list] = {"step": [], "loss": [], "aux": [], "eval_step": [], "eval_loss": []}
    bar = Progress(s.steps)
    model.train()
    t0 = time.perf_counter()
    tokens = 0
    for step in range(s.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s)
        starts = rng.integers(0, len(stream) - s.ctx - 1, s.batch)
        x = torch.from_numpy(np.stack([stream[a:a + s.ctx + 1] for a in starts]).astype(np.int64))
        tap.clear()
        logits = model(input_ids=x[:, :-1], use_cache=False).logits           # [B, ctx, V]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        aux = tap.aux_loss(s.experts)
        loss = ce + s.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += x[:, 1:].numel()
        hist["step"].append(step + 1)
        hist["loss"].append(round(ce.item(), 4))
        hist["aux"].append(round(aux.item(), 4))
        el = time.perf_counter() - t0
        bar.update(step + 1, f"loss {float(ce):.3f} aux {float(aux):.3f} {tokens / el:.0f} tok/s")
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            tap.clear()
            ev = eval_nll(model, heldout, s.ctx, 8192)
            hist["eval_step"].append(step + 1)
            hist["eval_loss"].append(round(ev, 4))
            log(f"step {step + 1}: held-out loss {ev:.3f} (ppl {math.exp(ev):.1f})")
        if max_seconds is not None and el > max_seconds:
            break
    bar.close()
    for h in tap.hooks:
        h.remove()
    hist["seconds"] = round(time.perf_counter() - t0, 1)
    hist["tokens"] = tokens
    return hist


# ----------------------------------------------------------------------------- outputs

def plot_loss(hist: dict, bigram: float, path: Path) -> None:
    """Training loss (per-step, smoothed), held-out loss and the bigram line, drawn with Qt."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import QColor, QFont, QGuiApplication, QImage, QPainter, QPen

    app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841 (fonts need it)
    W, H, L, R, T, B = 800, 480, 70, 20, 40, 50
    img = QImage(W, H, QImage.Format.Format_RGB32)
    img.fill(QColor("white"))
    p = QPainter(img)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setFont(QFont("Sans", 9))
    steps = np.array(hist["step"], dtype=float)
    loss = np.array(hist["loss"], dtype=float)
    k = 20
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid") if len(loss) > k else loss
    s_steps = steps[len(steps) - len(smooth):]
    ymax = float(np.ceil(max(loss[min(len(loss) - 1, 20):].max(), bigram) + 0.5))
    ymin = float(np.floor(min(loss.min(), min(hist["eval_loss"] or [loss.min()])) - 0.5))
    xmax = float(steps.max())

    def pt(x: float, y: float) -> QPointF:
        return QPointF(L + (W - L - R) * x / xmax,
                       T + (H - T - B) * (1 - (min(max(y, ymin), ymax) - ymin) / (ymax - ymin)))

    p.setPen(QPen(QColor("#888")))
    p.drawRect(QRectF(L, T, W - L - R, H - T - B))
    for y in np.arange(ymin, ymax + 1e-9, 1.0):
        p.drawText(QRectF(0, pt(0, y).y() - 8, L - 6, 16),
                   Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{y:.0f}")
    for x in np.linspace(0, xmax, 6):
        p.drawText(QRectF(pt(x, ymin).x() - 30, H - B + 4, 60, 16),
                   Qt.AlignmentFlag.AlignCenter, f"{x:.0f}")
    p.drawText(QRectF(L, H - 22, W - L - R, 16), Qt.AlignmentFlag.AlignCenter, "step")
    p.drawText(QRectF(L, 8, W - L - R, 20), Qt.AlignmentFlag.AlignCenter,
               "demo-moe: cross-entropy (nats/token)")

    def line(xs, ys, color: str, width: float, dash: bool = False) -> None:
        pen = QPen(QColor(color), width)
        if dash:
            pen.setStyle(Qt.PenStyle.DashLine)
        p.setPen(pen)
        pts = [pt(x, y) for x, y in zip(xs, ys)]
        for a, b in zip(pts, pts[1:]):
            p.drawLine(a, b)

    line(steps, loss, "#c6dbef", 1.0)
    line(s_steps, smooth, "#2171b5", 2.0)
    line(hist["eval_step"], hist["eval_loss"], "#d94801", 2.0)
    line([0, xmax], [bigram, bigram], "#555", 1.5, dash=True)
    legend = [("#2171b5", "training (20-step mean)"), ("#d94801", "held-out (Jinja2 + Markdown)"),
              ("#555", "bigram baseline, held-out")]
    for i, (color, text) in enumerate(legend):
        y = T + 16 + 18 * i
        p.setPen(QPen(QColor(color), 2.5))
        p.drawLine(QPointF(W - R - 240, y), QPointF(W - R - 215, y))
        p.setPen(QPen(QColor("#222")))
        p.drawText(QPointF(W - R - 208, y + 4), text)
    p.end()
    if not img.save(str(path), "PNG"):
        raise OSError(f"could not write {path}")


def measure_gguf(gguf_path: Path, heldout_ids: np.ndarray, n_expert: int, n_tokens: int = 4096
                 ) -> tuple[dict, float]:
    """Our engine on the shipped file: routing summary over held-out text, and its NLL there."""
    import torch

    from engine.gguf.reader import open_gguf
    from engine.models.base import load_model
    from engine.tokenizer import load_tokenizer

    gf = open_gguf(gguf_path)
    model = load_model(gf, n_ctx=512)
    tok = load_tokenizer(gf)
    ids = [int(i) for i in heldout_ids[:n_tokens]]
    layers, topk, logits = routing_stats.engine_routing(model, ids)
    texts = routing_stats.token_texts(tok, ids)
    summary = routing_stats.routing_summary(layers, topk, texts, n_expert)
    # NLL of each window's tokens 1.. given the window's prefix (as engine_routing ran them)
    lp = torch.log_softmax(torch.from_numpy(logits), -1).numpy()            # [N, V]
    nll, cnt = 0.0, 0
    for start in range(0, len(ids), 256):
        w = ids[start:start + 256]
        nll -= float(lp[start + np.arange(len(w) - 1), w[1:]].sum())
        cnt += len(w) - 1
    doc = {"tokens": len(ids), "source": "held-out text (Jinja2 + Markdown), 256-token windows",
           "token_ids": ids,
           "classes": list(routing_stats.TOKEN_CLASSES),
           "class_counts": np.bincount([routing_stats.token_class(t) for t in texts],
                                       minlength=len(routing_stats.TOKEN_CLASSES)).tolist(),
           "layers": [asdict(r) for r in summary]}
    return doc, nll / cnt


def init_mi(s: Setup, vocab: int, bos: int, eos: int, ids: list[int], texts: list[str]
            ) -> list[float]:
    """I(first-choice expert; token class) of the UNTRAINED model (same seed, same init) on the
    same tokens: the router sees the token's own embedding, so even random routing carries
    some class information; training should add much more."""
    import torch

    model = build_model(s, vocab, bos, eos).eval()
    tap = RouterTap(model)
    firsts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, len(ids), s.ctx):
            tap.clear()
            model(input_ids=torch.tensor([ids[start:start + s.ctx]]), use_cache=False)
            for li, lg in enumerate(tap.logits):                              # lg [T, E]
                if li == len(firsts):
                    firsts.append([])
                firsts[li].append(lg.argmax(-1).numpy())
    classes = np.array([routing_stats.token_class(t) for t in texts])
    return [round(routing_stats.mutual_information(np.concatenate(f), classes), 5) for f in firsts]


def llama_cpp_agreement(gguf_path: Path, heldout_ids: np.ndarray, n_windows: int = 2,
                        ctx: int = 256) -> dict:
    """Teacher-forced on held-out windows: our engine vs llama.cpp (llama-cpp-python) on the
    same file, logits and router choices (read from llama.cpp's graph, routing_stats)."""
    import torch

    from engine.gguf.reader import open_gguf
    from engine.models.base import load_model
    from engine.moe import collect_routing
    from engine.trace import Recorder

    model = load_model(open_gguf(gguf_path), n_ctx=ctx)
    ids = [int(i) for i in heldout_ids[:n_windows * ctx]]
    windows = [ids[i:i + ctx] for i in range(0, len(ids), ctx)]
    rec = Recorder(names=("moe_topk_ids", "moe_topk_weights", "moe_probs"))
    ours = np.concatenate([model.forward(torch.tensor(w), model.new_cache(ctx), 0, rec).numpy()
                           for w in windows])                                  # [N, V]
    layers = list(model.moe_layers)
    k = model.config.n_expert_used
    theirs, their_experts, their_probs = routing_stats.llama_cpp_run(gguf_path, windows, layers, k)
    our_experts, _ = collect_routing(rec, layers)
    same_set, same_first, prob_diff = [], [], 0.0
    for li, layer in enumerate(layers):
        probs = np.concatenate([st.get("moe_probs", layer) for st in rec.steps])  # [N, E]
        prob_diff = max(prob_diff, float(np.abs(probs - their_probs[layer]).max()))
        same_set.append((np.sort(our_experts[li], 1) == np.sort(their_experts[layer], 1)).all(1))
        same_first.append(our_experts[li][:, 0] == their_experts[layer][:, 0])
    return {"tokens": len(ids), "top1_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean()),
            "max_logit_rel_err": float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
            "same_expert_set": float(np.mean(same_set)), "same_first_expert": float(np.mean(same_first)),
            "max_router_prob_diff": prob_diff}


def greedy_samples(gguf_path: Path, prompts: list[str], n: int = 24) -> list[tuple[str, str]]:
    import torch

    from engine.gguf.reader import open_gguf
    from engine.models.base import load_model
    from engine.tokenizer import load_tokenizer

    gf = open_gguf(gguf_path)
    model = load_model(gf, n_ctx=256)
    tok = load_tokenizer(gf)
    out = []
    for prompt in prompts:
        ids = tok.encode(prompt)
        cache = model.new_cache(len(ids) + n + 1)
        logits = model.forward(torch.tensor(ids), cache, 0)
        gen: list[int] = []
        for _ in range(n):
            nxt = int(logits[-1].argmax())
            if nxt == tok.eos_id:
                break
            gen.append(nxt)
            logits = model.forward(torch.tensor([nxt]), cache, len(ids) + len(gen) - 1)
        out.append((prompt, tok.decode(gen)))
    return out


# English prompts in the places English occurs in the training text (docstrings, comments),
# then code. Chosen before seeing any output; all of them go into the card.
PROMPTS = ["This module provides", '    """Return the', "# If the", "The following", "def "]


def write_card(path: Path, s: Setup, info: dict) -> None:
    r = info["routing"]
    lines = [
        "# demo-moe: a small trained DeepSeek-V2 mixture of experts",
        "",
        "A toy model shipped with LLM Lens so that the routing views show experts that learned",
        "something. It writes Python-flavoured English and code; it is not an assistant.",
        "",
        "## Architecture",
        "",
        f"`transformers`' `DeepseekV2ForCausalLM`, converted by llama.cpp's `convert_hf_to_gguf.py` "
        f"(architecture `deepseek2`, {info['gguf_type']}).",
        "",
        "| | |", "|---|---|",
        f"| parameters | {info['params']:,} ({info['active_params']:,} active per token, "
        "embedding table excluded) |",
        f"| file size | {info['file_bytes']:,} bytes ({info['file_bytes'] / 2**20:.1f} MiB) |",
        f"| layers | {s.layers} (layer 0 dense SwiGLU {s.dense_ffn}, then MoE) |",
        f"| width | {s.hidden}, {s.heads} heads |",
        f"| attention | MLA: q LoRA {s.q_lora_rank}, kv LoRA {s.kv_lora_rank}, "
        f"nope {s.qk_nope} + rope {s.qk_rope} per head, v {s.v_head} |",
        f"| experts | {s.experts} routed (SwiGLU {s.expert_ffn}), top-{s.top_k} softmax gating "
        f"(weights not renormalised), {s.shared_experts} shared expert |",
        f"| vocabulary | {info['vocab']} byte-level BPE (`tokenizers`), pre-tokenizer `{PRE}` |",
        f"| context | trained on {s.ctx}-token windows |",
        "",
        "## Data and licences",
        "",
        f"- Training: {info['train_name']} — {info['train_licence']}. "
        f"{info['train_docs']} files, {info['train_bytes'] / 1e6:.1f} MB, "
        f"{info['train_tokens']:,} tokens. Code, docstrings, comments and "
        "`pydoc_data/topics.py` (the language reference as text).",
        f"- Held-out (a different source, never trained on): {info['held_name']} — "
        f"{info['held_licence']}. {info['held_tokens']:,} tokens.",
        "- Files that are mostly non-ASCII or over 800 kB (data tables) are skipped.",
        "",
        "## Tokenizer",
        "",
        f"Trained on the first {s.tokenizer_bytes / 1e6:.0f} MB of the shuffled training text with "
        f"the regex sequence llama.cpp implements for the pre-tokenizer name `{PRE}` "
        "(`engine/tokenizer/pretokenize.py`, transcribed from `src/llama-vocab.cpp`). A new "
        "vocabulary hashes to nothing `convert_hf_to_gguf.py` knows, so the converter is run "
        f"with `get_vocab_base_pre` pinned to `{PRE}` (the same wrapper the test fixtures use, "
        "`tests/fixtures/make_tiny_models.py`); the GGUF says `tokenizer.ggml.pre = "
        f"{PRE}`, which is exactly the splitting the vocabulary was trained with.",
        "",
        "## Training",
        "",
        f"{s.steps} steps of {s.batch} x {s.ctx} tokens ({info['trained_tokens']:,} tokens), "
        f"AdamW (lr {s.lr}, warmup {s.warmup}, cosine to {s.min_lr_frac:g}x, weight decay "
        f"{s.weight_decay}), seed {s.seed}, float32 on {info['threads']} CPU thread(s): "
        f"{info['train_seconds'] / 60:.1f} minutes "
        f"({info['trained_tokens'] / info['train_seconds']:.0f} tokens/s, on 2 cores shared with "
        "other jobs). Load balancing: Switch-style auxiliary loss "
        f"E * sum_e f_e P_e from the router logits (forward hooks on each gate), "
        f"coefficient {s.aux_coef}.",
        "",
        "![loss curve](demo-moe-loss.png)",
        "",
        "## Measured",
        "",
        f"- Held-out perplexity ({info['eval_tokens']:,} tokens, 256-token windows, "
        f"transformers float32): **{info['ppl']:.2f}**; bigram model on the same tokenizer and "
        f"training tokens (interpolated with the unigram, alpha {info['bigram_alpha']:g} tuned on "
        f"a slice of the training source): **{info['bigram_ppl']:.2f}**.",
        f"- Our engine on the GGUF, first {r['tokens']:,} held-out tokens: perplexity "
        f"{info['engine_ppl']:.2f}.",
        f"- Expert load on those tokens: every expert of every MoE layer is the FIRST choice of "
        f"at least {100 * info['min_first']:.1f}% of the tokens, and among the top-{s.top_k} of "
        f"at least {100 * info['min_any']:.1f}%.",
        "- Specialisation: mutual information between each token's first-choice expert and its "
        "class (letters, digits, punctuation, whitespace, code symbols), against the same with "
        "the classes shuffled (mean of 20), and against the untrained model (same seed): a "
        "router sees the token's own embedding, so even random routing carries some class "
        f"information. Class entropy on these tokens: {info['class_entropy']:.2f} bits.",
        "",
        "| layer | MI (bits) | shuffled | untrained | most over-represented class per expert |",
        "|---|---|---|---|---|",
    ]
    for lr in r["layers"]:
        lines.append(f"| {lr['layer']} | {lr['mi_bits']:.3f} | {lr['mi_shuffled_bits']:.4f} | "
                     f"{lr['mi_init_bits']:.3f} | {', '.join(lr['top_class_by_expert'])} |")
    above = [lr["layer"] for lr in r["layers"] if lr["mi_bits"] > lr["mi_init_bits"]]
    lines += [
        "",
        f"Every layer is far above the shuffled baseline; against the untrained routers, the "
        f"trained ones carry more class information in layer(s) {', '.join(map(str, above)) or 'none'}"
        f" of {len(r['layers'])}: specialisation by these five coarse classes is modest (the "
        "balance loss keeps any one class, such as the frequent letter tokens, from owning an "
        "expert; what the experts split finer than these classes is not measured here).",
    ]
    a = r["llama_cpp"]
    lines += [
        "",
        f"- llama.cpp (llama-cpp-python {info['llama_cpp']}) on the same file, teacher-forced on "
        f"{a['tokens']} held-out tokens: top-1 agreement {100 * a['top1_agreement']:.1f}%, max "
        f"logit difference {a['max_logit_rel_err']:.1e} of the largest logit; the same top-{s.top_k} "
        f"experts on {100 * a['same_expert_set']:.1f}% of the tokens (first choice "
        f"{100 * a['same_first_expert']:.1f}%), router probabilities within "
        f"{a['max_router_prob_diff']:.1e} (read from llama.cpp's `ffn_moe_probs`/`ffn_moe_topk`).",
        "",
        "Greedy continuations (our engine, temperature 0; a model this small falls into loops "
        "within a few words under greedy decoding: the phrases are English, the text is not):",
        "",
    ]
    for prompt, cont in info["samples"]:
        lines.append(f"- `{prompt}` → `{(prompt + cont)!r}`")
    lines += [
        "",
        "Full per-expert shares: `demo-moe-routing.json`.",
        "",
        "## Reproduce",
        "",
        "    .venv/bin/python packaging/demo_moe/train.py",
        "",
        f"Library versions: torch {info['torch']}, transformers {info['transformers']}, "
        f"tokenizers {info['tokenizers']}, llama.cpp converter from llama-cpp-python "
        f"{info['llama_cpp']}.",
        "",
    ]
    path.write_text("\n".join(lines))


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "engine" / "assets")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "demo_moe",
                    help="scratch dir: tokenizer, HF checkpoint, token streams")
    ap.add_argument("--probe", type=float, default=None, metavar="SECONDS",
                    help="train for this long, print tokens/s and stop (nothing exported)")
    ap.add_argument("--steps", type=int, default=None, help="override the step count (testing)")
    # One thread: on a shared, loaded machine two OpenMP threads spin-wait on each other and
    # run several times slower than one.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse-tokens", action="store_true",
                    help="reuse the tokenizer and token streams in --work (probes only)")
    ap.add_argument("--resume", action="store_true",
                    help="skip training and redo the export and measurements from the "
                         "checkpoint a finished run left in --work")
    args = ap.parse_args(argv)

    import tokenizers
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    # --steps is for trying the pipeline: a short run, and a short final evaluation
    s = Setup() if args.steps is None else Setup(steps=args.steps, heldout_tokens=8192)
    work = args.work
    hf_dir = work / "demo-moe"  # the converter names the model (general.name) after this dir
    hf_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    log("gathering text")
    train_c, held_c = corpus.training_corpus(s.seed), corpus.held_out_corpus()
    log(f"training: {train_c.name}, {len(train_c.docs)} files, {train_c.n_bytes / 1e6:.1f} MB; "
        f"held-out: {held_c.name}, {held_c.n_bytes / 1e6:.2f} MB")
    cached = work / "tokens.npz"
    if (args.reuse_tokens or args.resume) and cached.is_file():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
        with np.load(cached) as z:
            stream, heldout = z["train"], z["heldout"]
    else:
        tok = train_tokenizer(train_c.docs, s, hf_dir)
        stream = encode_stream(tok, train_c.docs)
        heldout = encode_stream(tok, held_c.docs)
        np.savez(cached, train=stream, heldout=heldout)
    log(f"tokenizer: {tok.get_vocab_size()} tokens; {len(stream):,} training tokens, "
        f"{len(heldout):,} held-out tokens")
    # the last 1% of the training stream tunes the bigram's smoothing; the model never sees it
    cut = int(len(stream) * 0.99)
    stream, tune = stream[:cut], stream[cut:]
    n_eval = min(s.heldout_tokens, len(heldout) - 1) // s.ctx * s.ctx
    big_nll, alpha = bigram_nll(stream, heldout[:n_eval + 1], tok.get_vocab_size(), tune)
    log(f"bigram baseline: held-out loss {big_nll:.3f} (ppl {math.exp(big_nll):.2f}, alpha {alpha})")

    if args.resume:
        from transformers import DeepseekV2ForCausalLM
        model = DeepseekV2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    else:
        model = build_model(s, tok.get_vocab_size(), tok.token_to_id(BOS), tok.token_to_id(EOS))
    n_params = sum(p.numel() for p in model.parameters())
    experts_params = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    embed = model.model.embed_tokens.weight.numel()
    active = n_params - experts_params * (1 - s.top_k / s.experts) - embed
    log(f"model: {n_params:,} parameters ({int(active):,} active per token, embeddings excluded)")

    if args.resume:
        hist = json.loads((work / "history.json").read_text())
    else:
        hist = train(model, stream, heldout, s, args.probe)
    if args.probe is not None:
        log(f"probe: {hist['tokens']:,} tokens in {hist['seconds']:.0f} s = "
            f"{hist['tokens'] / hist['seconds']:.0f} tokens/s; last loss {hist['loss'][-1]}")
        return 0

    log("held-out evaluation")
    nll = eval_nll(model, heldout, s.ctx, s.heldout_tokens)
    log(f"held-out ppl {math.exp(nll):.2f} vs bigram {math.exp(big_nll):.2f}")

    model.save_pretrained(hf_dir)
    (work / "history.json").write_text(json.dumps(hist))
    np.save(work / "heldout.npy", heldout)

    log("converting with llama.cpp's convert_hf_to_gguf.py")
    from tests.fixtures.llama_cpp_src import VERSION as LLAMA_CPP_VERSION
    from tests.fixtures.make_tiny_models import convert

    convert(hf_dir, str(work / "demo-moe-{ot}.gguf"), PRE, ("f16",))
    args.out.mkdir(parents=True, exist_ok=True)
    gguf_out = args.out / "demo-moe.gguf"
    shutil.copyfile(work / "demo-moe-f16.gguf", gguf_out)

    log("measuring the GGUF with our engine")
    routing, engine_nll = measure_gguf(gguf_out, heldout, s.experts)
    routing["model"] = "demo-moe.gguf"
    routing["top_k"] = s.top_k
    ids = routing.pop("token_ids")
    from engine.gguf.reader import open_gguf
    from engine.tokenizer import load_tokenizer
    texts = routing_stats.token_texts(load_tokenizer(open_gguf(gguf_out)), ids)
    for lr, mi0 in zip(routing["layers"], init_mi(s, tok.get_vocab_size(), tok.token_to_id(BOS),
                                                  tok.token_to_id(EOS), ids, texts)):
        lr["mi_init_bits"] = mi0
    samples = greedy_samples(gguf_out, PROMPTS)
    log("comparing with llama.cpp")
    agreement = llama_cpp_agreement(gguf_out, heldout)
    routing["llama_cpp"] = agreement
    (args.out / "demo-moe-routing.json").write_text(json.dumps(routing, indent=1))
    plot_loss(hist, big_nll, args.out / "demo-moe-loss.png")

    info = dict(
        gguf_type="F16 weights (norms and router in F32)", params=n_params,
        active_params=int(active), file_bytes=gguf_out.stat().st_size, vocab=tok.get_vocab_size(),
        train_name=train_c.name, train_licence=train_c.licence, train_docs=len(train_c.docs),
        train_bytes=train_c.n_bytes, train_tokens=len(stream) + len(tune), held_name=held_c.name,
        held_licence=held_c.licence, held_tokens=len(heldout), trained_tokens=hist["tokens"],
        threads=args.threads, train_seconds=hist["seconds"], eval_tokens=n_eval,
        ppl=math.exp(nll), bigram_ppl=math.exp(big_nll), bigram_alpha=alpha,
        engine_ppl=math.exp(engine_nll), routing=routing,
        min_first=min(min(lr["first_share"]) for lr in routing["layers"]),
        min_any=min(min(lr["any_share"]) for lr in routing["layers"]),
        class_entropy=float(-(lambda p: (p[p > 0] * np.log2(p[p > 0])).sum())(
            np.array(routing["class_counts"]) / sum(routing["class_counts"]))),
        samples=samples, torch=torch.__version__, transformers=transformers.__version__,
        tokenizers=tokenizers.__version__, llama_cpp=LLAMA_CPP_VERSION)
    write_card(args.out / "demo-moe.md", s, info)
    summary = {k: v for k, v in info.items() if k not in ("routing",)}
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    log(f"done in {(time.perf_counter() - t_all) / 60:.1f} min: {gguf_out} "
        f"({gguf_out.stat().st_size / 2**20:.1f} MiB), ppl {math.exp(nll):.2f} vs bigram "
        f"{math.exp(big_nll):.2f}, min expert load {100 * info['min_any']:.1f}% (any of top-k) / "
        f"{100 * info['min_first']:.1f}% (first)")
    for prompt, cont in samples:
        log(f"  {prompt!r} -> {cont!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
