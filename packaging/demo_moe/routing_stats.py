"""Routing statistics of a MoE GGUF measured with our engine: expert load and specialisation.

Used by `train.py` (to write the model card and `demo-moe-routing.json`) and by
`tests/test_demo_moe.py` (to check the shipped file), so both measure the same way:

- load: per MoE layer, the share of tokens whose FIRST choice is each expert, and the share
  of tokens that have the expert anywhere in their top-k (sums to k, not 1);
- agreement with llama.cpp: `llama_cpp_run` reads llama.cpp's own router output;
- specialisation: the mutual information I(first-choice expert; token class) in bits, where
  the class of a token is that of its text (letters, digits, punctuation, whitespace, code
  symbols), against the same quantity with the classes shuffled (the MI a router that ignores
  the class would get on this many tokens, finite-sample bias included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOKEN_CLASSES = ("letters", "digits", "punctuation", "whitespace", "code")
# Characters that are operators or brackets in Python; the rest of ASCII punctuation is prose.
CODE_SYMBOLS = frozenset("()[]{}<>=+-*/%&|^~@\\#")


def token_class(text: str) -> int:
    """Index into TOKEN_CLASSES of a token's text, by its first non-space character."""
    core = text.strip()
    if not core:
        return TOKEN_CLASSES.index("whitespace")
    ch = core[0]
    if ch.isalpha() or ch == "_":
        return TOKEN_CLASSES.index("letters")
    if ch.isdigit():
        return TOKEN_CLASSES.index("digits")
    if ch in CODE_SYMBOLS:
        return TOKEN_CLASSES.index("code")
    return TOKEN_CLASSES.index("punctuation")


def token_texts(tok, ids: Sequence[int]) -> list[str]:
    """What each token prints (byte-level BPE pieces decoded, "Ġ" is a space), for token_class."""
    return [tok.token_bytes(int(i)).decode("utf-8", "replace") for i in ids]


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in bits of two integer label arrays of equal length (plug-in estimate)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    joint = np.zeros((int(a.max()) + 1, int(b.max()) + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (pa @ pb)[nz])).sum())


@dataclass(frozen=True)
class LayerRouting:
    layer: int
    first_share: list[float]    # [E] share of tokens whose first choice is expert e
    any_share: list[float]      # [E] share of tokens with e anywhere in the top-k
    mi_bits: float              # I(first choice; token class)
    mi_shuffled_bits: float     # mean over shuffles of the classes
    mi_shuffled_max_bits: float
    top_class_by_expert: list[str]  # the class each expert sees most often, relative to base rate


def layer_routing(layer: int, topk_ids: np.ndarray, classes: np.ndarray, n_expert: int,
                  n_shuffles: int = 20, seed: int = 0) -> LayerRouting:
    """topk_ids [N, k] (best first) and token classes [N] -> the layer's statistics."""
    n = topk_ids.shape[0]
    first = topk_ids[:, 0]                                                  # [N]
    first_share = np.bincount(first, minlength=n_expert) / n                # [E]
    any_share = np.bincount(topk_ids.reshape(-1), minlength=n_expert) / n   # [E], sums to k
    mi = mutual_information(first, classes)
    rng = np.random.default_rng(seed)
    shuffled = [mutual_information(first, rng.permutation(classes)) for _ in range(n_shuffles)]
    # the class most over-represented among each expert's first-choice tokens
    joint = np.zeros((n_expert, len(TOKEN_CLASSES)))
    np.add.at(joint, (first, classes), 1.0)
    base = np.bincount(classes, minlength=len(TOKEN_CLASSES)) / n            # [C]
    lift = (joint / np.maximum(joint.sum(1, keepdims=True), 1)) / np.maximum(base, 1e-9)
    top = [TOKEN_CLASSES[int(c)] if joint[e].sum() else "-" for e, c in enumerate(lift.argmax(1))]
    return LayerRouting(layer, [round(float(x), 5) for x in first_share],
                        [round(float(x), 5) for x in any_share], round(mi, 5),
                        round(float(np.mean(shuffled)), 5), round(float(np.max(shuffled)), 5), top)


def routing_summary(moe_layers: Sequence[int], topk_ids: Sequence[np.ndarray],
                    texts: Sequence[str], n_expert: int) -> list[LayerRouting]:
    """One LayerRouting per MoE layer; topk_ids[i] is [N, k] for moe_layers[i], texts[j] what
    token j prints (`token_texts`; special tokens print nothing and count as whitespace)."""
    classes = np.array([token_class(t) for t in texts], dtype=np.int64)  # [N]
    return [layer_routing(layer, np.asarray(ids), classes, n_expert)
            for layer, ids in zip(moe_layers, topk_ids)]


def engine_routing(model, ids: Sequence[int], chunk: int = 256
                   ) -> tuple[list[int], list[np.ndarray], np.ndarray]:
    """Run our engine over `ids` in independent windows of `chunk` tokens (each a fresh cache,
    as the model was trained on windows). Returns moe_layers, per MoE layer topk ids [N, k]
    and the logits [N, V]."""
    import torch

    from engine.moe import collect_routing
    from engine.trace import Recorder

    rec = Recorder(names=("moe_topk_ids", "moe_topk_weights"))
    logits = []
    for start in range(0, len(ids), chunk):
        window = torch.tensor(list(ids[start:start + chunk]))
        cache = model.new_cache(len(window))
        logits.append(model.forward(window, cache, 0, rec).numpy())
    topk, _ = collect_routing(rec, model.moe_layers)
    return list(model.moe_layers), topk, np.concatenate(logits)


def llama_cpp_run(path, windows: list[list[int]], moe_layers: Sequence[int], k: int
                  ) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """llama.cpp's logits [N, V], chosen experts {layer: [N, k]} (its `ffn_moe_topk-<il>`
    tensors, best first) and router probabilities {layer: [N, E]} (`ffn_moe_probs-<il>`),
    each window evaluated from an empty cache.

    Both come from the scheduler's eval callback (`cb_eval`): asked about every graph node, it
    claims those two and reads them once computed. `ggml_tensor` starts with {type (int,
    padded to 8), buffer*, ne[4] int64, nb[4] size_t}: ne/nb are read at offsets 16 and 48.
    """
    import ctypes

    import llama_cpp.llama_cpp as lib
    from llama_cpp import Llama
    from llama_cpp._ggml import libggml

    from tests.fixtures.llama_cpp_ref import no_repack

    libggml.ggml_get_name.restype = ctypes.c_char_p
    libggml.ggml_get_name.argtypes = [ctypes.c_void_p]
    libggml.ggml_get_data.restype = ctypes.c_void_p
    libggml.ggml_get_data.argtypes = [ctypes.c_void_p]
    wanted = {f"ffn_moe_{what}-{il}".encode(): (what, il)
              for il in moe_layers for what in ("topk", "probs")}
    got: dict[tuple[str, int], list[np.ndarray]] = {key: [] for key in wanted.values()}

    @lib.ggml_backend_sched_eval_callback
    def on_tensor(t, ask, _user):
        key = wanted.get(libggml.ggml_get_name(t))
        if ask or key is None:
            return key is not None
        ne = (ctypes.c_int64 * 4).from_address(t + 16)
        nb = (ctypes.c_size_t * 4).from_address(t + 48)
        base = libggml.ggml_get_data(t)
        ctype, dtype = (ctypes.c_int32, np.int32) if key[0] == "topk" else (ctypes.c_float, np.float32)
        rows = [np.frombuffer((ctype * ne[0]).from_address(base + j * nb[1]), dtype=dtype).copy()
                for j in range(ne[1])]  # topk is a strided view of the argsort: rows by nb[1]
        got[key].append(np.stack(rows))                                         # [T, k] | [T, E]
        return True

    default_ctx = lib.llama_context_default_params

    def ctx_params():
        p = default_ctx()
        p.cb_eval = on_tensor
        return p

    n_ctx = max(len(w) for w in windows)
    lib.llama_context_default_params = ctx_params
    try:
        with no_repack():
            llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                        logits_all=True, n_threads=1, n_threads_batch=1, type_k=0, type_v=0,
                        verbose=False)
    finally:
        lib.llama_context_default_params = default_ctx
    logits = []
    try:
        for w in windows:
            llm.reset()
            llm.eval(w)
            logits.append(np.array(llm.scores[:len(w)], dtype=np.float32, copy=True))
    finally:
        llm.close()
    experts = {il: np.concatenate(got["topk", il])[:, :k] for il in moe_layers}
    probs = {il: np.concatenate(got["probs", il]) for il in moe_layers}
    return np.concatenate(logits), experts, probs
