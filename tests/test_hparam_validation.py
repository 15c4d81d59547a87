"""A file whose hyperparameters contradict its tensors ends in our one-line error, not a traceback.

Every tiny model (tests/fixtures/tiny_models.py) is rewritten with one numeric metadata value
replaced (the scalar is patched in place at its byte offset, found with gguf-py's GGUFReader;
nothing else in the file moves). Loading it, building its tokenizer and running 3 tokens must
then either work (finite logits [3, n_vocab]) or raise an `LLMLensError`; any other exception
fails. Deterministic cases pin the messages of the failures users met; the CLI and the chat
window are checked on mutated files too.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import GGUFError, LLMLensError, ModelTooLargeError
from engine.models.base import load_model
from engine.tokenizer import load_tokenizer
from tests.fixtures.tiny_models import ARCHS, tiny_model

ROOT = Path(__file__).resolve().parents[1]

# What the user's fuzzing set each key to (ints wrap to the key's own type: -1 for int32).
INT_VALUES = (0, 1, 3, 7, 65536, 10**6, 2**31 - 1, 2**32 - 1)
FLOAT_VALUES = (0.0, -1.0, math.nan, math.inf, -math.inf, 1e-30, 1e30, 0.5, 65536.0)
_NUMERIC = {
    gguf.GGUFValueType.UINT8: np.uint8, gguf.GGUFValueType.INT8: np.int8,
    gguf.GGUFValueType.UINT16: np.uint16, gguf.GGUFValueType.INT16: np.int16,
    gguf.GGUFValueType.UINT32: np.uint32, gguf.GGUFValueType.INT32: np.int32,
    gguf.GGUFValueType.UINT64: np.uint64, gguf.GGUFValueType.INT64: np.int64,
    gguf.GGUFValueType.FLOAT32: np.float32, gguf.GGUFValueType.FLOAT64: np.float64,
}


# --------------------------------------------------------------------------- rewriting files

class Original:
    """One tiny GGUF held in memory, with the byte offset and type of each numeric scalar."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.fields: dict[str, tuple[int, type]] = {}
        reader = gguf.GGUFReader(path)
        for f in reader.fields.values():
            vtype = gguf.GGUFValueType(f.types[0]) if f.types else None
            if vtype not in _NUMERIC or f.name.startswith("GGUF."):
                continue  # strings, bools, arrays; GGUF.* are the header's own counts
            value_part = f.data[0]
            offset = f.offset + sum(int(p.nbytes) for p in f.parts[:value_part])
            dtype = _NUMERIC[vtype]
            assert np.frombuffer(self.data, dtype, 1, offset)[0] == f.parts[value_part][0]
            self.fields[f.name] = (offset, dtype)

    def write(self, out: Path, key: str, value: float) -> Path:
        offset, dtype = self.fields[key]
        buf = bytearray(self.data)
        buf[offset:offset + np.dtype(dtype).itemsize] = _encode(value, dtype)
        out.write_bytes(bytes(buf))
        return out


def _encode(value: float, dtype: type) -> bytes:
    if np.issubdtype(dtype, np.floating):
        return np.array(value, dtype=dtype).tobytes()
    # wrap to the field's width (2**32 - 1 in an int32 key is -1), as a careless writer would
    return np.array(int(value) % (1 << 64), dtype=np.uint64).astype(dtype).tobytes()


_ORIGINALS: dict[str, Original] = {}


def original(name: str) -> Original:
    if name not in _ORIGINALS:
        _ORIGINALS[name] = Original(tiny_model(name).gguf["f32"])
    return _ORIGINALS[name]


def values_for(orig: Original, key: str) -> tuple[float, ...]:
    return FLOAT_VALUES if np.issubdtype(orig.fields[key][1], np.floating) else INT_VALUES


def outcome(path: Path) -> str:
    """"ok" after a load, a tokenizer and a 3-token forward pass that all work, else our
    error's message. Anything but an LLMLensError propagates and fails the test."""
    try:
        model = load_model(path, exact=True)
    except LLMLensError as exc:
        return str(exc)
    try:
        load_tokenizer(model.gguf)
        ids = torch.tensor([0, 1, 2])
        logits = model.forward(ids, model.new_cache(3), 0)  # [3, n_vocab]
    except LLMLensError as exc:
        return str(exc)
    finally:
        model.gguf.close()
    assert tuple(logits.shape) == (3, model.n_vocab)
    assert torch.isfinite(logits).all(), "a file that loads must give finite logits"
    return "ok"


def assert_one_line(message: str, path: Path) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{path.name}: "), message


# --------------------------------------------------------------------------- every model, every key

@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mutated")


def test_unmutated_models_load(scratch):
    """The rewriting itself changes nothing: a value written back as it was loads fine."""
    for name in ARCHS:
        orig = original(name)
        key = next(iter(orig.fields))
        offset, dtype = orig.fields[key]
        value = np.frombuffer(orig.data, dtype, 1, offset)[0].item()
        assert outcome(orig.write(scratch / f"{name}-same.gguf", key, value)) == "ok", name


@pytest.mark.parametrize("name", ARCHS)
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_hyperparameter_loads_or_fails_cleanly(name, scratch, data):
    orig = original(name)
    key = data.draw(st.sampled_from(sorted(orig.fields)), label="key")
    value = data.draw(st.sampled_from(values_for(orig, key)), label="value")
    path = orig.write(scratch / f"{name}.gguf", key, value)
    result = outcome(path)
    if result != "ok":
        assert_one_line(result, path)


# --------------------------------------------------------------------------- the cases users hit

NAN, INF = math.nan, math.inf
CASES = [
    ("qwen2moe", "qwen2moe.attention.head_count", 7,
     "qwen2moe.attention.head_count = 7 does not divide qwen2moe.embedding_length = 64"),
    ("qwen2moe", "qwen2moe.attention.head_count", 0,
     "qwen2moe.attention.head_count = 0, expected an integer >= 1"),
    ("qwen2moe", "qwen2moe.attention.head_count_kv", 2**32 - 1,
     "qwen2moe.attention.head_count_kv = 4294967295 does not divide "
     "qwen2moe.attention.head_count = 4"),
    ("qwen2moe", "qwen2moe.expert_count", 0, "qwen2moe.expert_count = 0, expected at least 1"),
    ("qwen2moe", "qwen2moe.expert_count", 7,
     "tensor blk.0.ffn_gate_inp.weight has shape [8, 64], expected [n_expert, n_embd] = [7, 64] "
     "(qwen2moe.expert_count = 7)"),
    ("qwen2moe", "qwen2moe.expert_used_count", 65536,
     "qwen2moe.expert_used_count = 65536, expected 1 to qwen2moe.expert_count = 8"),
    ("qwen2moe", "qwen2moe.expert_feed_forward_length", 3,
     "tensor blk.0.ffn_gate_exps.weight has shape [8, 32, 64], expected "
     "[n_expert, n_ff_exp, n_embd] = [8, 3, 64] (qwen2moe.expert_feed_forward_length = 3)"),
    ("qwen2moe", "qwen2moe.attention.layer_norm_rms_epsilon", NAN,
     "qwen2moe.attention.layer_norm_rms_epsilon = nan, expected a finite number in (0, 1]"),
    ("qwen2moe", "qwen2moe.attention.layer_norm_rms_epsilon", 0.0,
     "qwen2moe.attention.layer_norm_rms_epsilon = 0.0, expected a number in (0, 1]"),
    ("qwen2moe", "qwen2moe.rope.freq_base", INF, "qwen2moe.rope.freq_base = inf"),
    ("qwen2moe", "qwen2moe.embedding_length", 65536,
     "tensor token_embd.weight has shape [600, 64], expected [n_vocab, n_embd] = [600, 65536] "
     "(qwen2moe.embedding_length = 65536)"),
    ("qwen2moe", "qwen2moe.block_count", 3,
     "qwen2moe.block_count = 3 but the file has tensors for 2 blocks (blk.0 .. blk.1)"),
    ("qwen2moe", "qwen2moe.context_length", 0, "qwen2moe.context_length = 0"),
    ("qwen2moe", "qwen2moe.context_length", 2**32 - 1, "qwen2moe.context_length = 4294967295"),
    ("qwen2moe", "qwen2moe.expert_shared_feed_forward_length", 1,
     "tensor blk.0.ffn_gate_shexp.weight has shape [64, 64], expected [n_ff_shexp, n_embd] = "
     "[1, 64] (qwen2moe.expert_shared_feed_forward_length = 1)"),
    ("llama", "llama.embedding_length", 65536, "(llama.embedding_length = 65536)"),
    ("llama", "llama.rope.dimension_count", 7, "llama.rope.dimension_count = 7 is odd"),
    ("llama", "llama.rope.dimension_count", 65536, "llama.rope.dimension_count = 65536 is larger"),
    ("llama", "llama.vocab_size", 7, "llama.vocab_size = 7 but tokenizer.ggml.tokens lists 512"),
    ("llama", "tokenizer.ggml.bos_token_id", 2**32 - 1,
     "tokenizer.ggml.bos_token_id = 4294967295 is outside the vocabulary (ids 0 to 511)"),
    ("llama", "tokenizer.ggml.eos_token_id", 512, "tokenizer.ggml.eos_token_id = 512 is outside"),
    ("mixtral", "llama.expert_count", 0,
     "llama.expert_count = 0 but blk.0.ffn_gate_exps.weight holds 8 experts"),
    ("gemma3", "gemma3.attention.head_count_kv", 2,
     "tensor blk.0.attn_k.weight has shape [32, 64], expected [n_head_kv * head_dim, n_embd] = "
     "[64, 64] (gemma3.attention.head_count_kv = 2, gemma3.attention.key_length = 32)"),
    ("gemma3", "gemma3.rope.freq_base_swa", -1.0, "gemma3.rope.freq_base_swa = -1.0"),
    ("deepseek2", "deepseek2.attention.kv_lora_rank", 7,
     "tensor blk.0.attn_kv_a_mqa.weight has shape [48, 64], expected [kv_lora + n_rot, n_embd] = "
     "[23, 64] (deepseek2.attention.kv_lora_rank = 7, deepseek2.rope.dimension_count = 16)"),
    ("deepseek2", "deepseek2.attention.q_lora_rank", 0,
     "tensor blk.0.attn_q.weight is missing"),
    ("deepseek2", "deepseek2.leading_dense_block_count", 65536,
     "deepseek2.leading_dense_block_count = 65536 is more than deepseek2.block_count = 3"),
    ("deepseek2", "deepseek2.expert_count", 0,
     "deepseek2.expert_count = 0 but blk.1.ffn_gate_exps.weight holds 8 experts"),
    ("deepseek2", "deepseek2.expert_weights_scale",
     NAN, "deepseek2.expert_weights_scale = nan"),
    ("deepseek2", "deepseek2.rope.scaling.yarn_beta_fast", 0.0,
     "deepseek2.rope.scaling.yarn_beta_fast = 0.0"),
]


@pytest.mark.parametrize("name,key,value,expected", CASES,
                         ids=[f"{c[0]}-{c[1].split('.', 1)[1]}={c[2]}" for c in CASES])
def test_known_failures_name_the_key(name, key, value, expected, scratch):
    orig = original(name)
    path = orig.write(scratch / f"{name}-case.gguf", key, value)
    result = outcome(path)
    assert result != "ok", f"{key} = {value} loaded"
    assert_one_line(result, path)
    assert expected in result


def test_errors_come_before_any_weight_is_built(scratch, monkeypatch):
    """A refused file never reaches a weight: building one would raise here."""
    import engine.models.base as base

    def no_weights(*args, **kwargs):
        raise AssertionError("a weight was looked up before the checks finished")

    monkeypatch.setattr(base.Model, "tensor_info", no_weights)
    path = original("qwen2moe").write(scratch / "early.gguf", "qwen2moe.attention.head_count", 7)
    with pytest.raises(GGUFError, match="does not divide"):
        load_model(path, exact=True)


def test_absurd_kv_cache_is_refused_before_allocation():
    """n_ctx x layers x kv heads x head dims is sized first; 2**40 positions is terabytes."""
    path = tiny_model("llama").gguf["f32"]
    with pytest.raises(ModelTooLargeError, match=r"KV cache of 1099511627776 tokens needs"):
        load_model(path, n_ctx=2**40, exact=True)
    with pytest.raises(ModelTooLargeError, match=r"\(32 \+ 16\) values"):  # MLA: latent + rope
        load_model(tiny_model("deepseek2").gguf["f32"], n_ctx=2**40, exact=True)


# --------------------------------------------------------------------------- CLI and window

@pytest.mark.parametrize("key,value,expected", [
    ("qwen2moe.attention.head_count", 7, "does not divide"),
    ("qwen2moe.attention.layer_norm_rms_epsilon", NAN, "layer_norm_rms_epsilon = nan"),
])
def test_cli_logits_prints_one_line(key, value, expected, scratch):
    path = original("qwen2moe").write(scratch / "cli.gguf", key, value)
    out = scratch / "x.npy"
    proc = subprocess.run([sys.executable, "-m", "app", "logits", str(path), "--ids", "1,2,3",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmlens: error: cli.gguf: "), proc.stderr
    assert expected in lines[0] and not out.exists()


def test_window_shows_the_error_and_goes_on(qtbot, scratch, tmp_path, monkeypatch):
    from app.chat_controller import install_chat
    from ui.main_window import MainWindow

    monkeypatch.setenv("LLMLENS_DATA_DIR", str(tmp_path / "data"))
    bad = original("gemma3").write(scratch / "window.gguf", "gemma3.attention.head_count_kv", 3)
    win = MainWindow()
    qtbot.addWidget(win)
    ctl = install_chat(win, model_path=bad)
    win.show()
    try:
        qtbot.waitUntil(lambda: ctl.load_id is None, timeout=120_000)
        assert ctl.model_info is None
        text = ctl.panel.error.label.text()
        assert not ctl.panel.error.isHidden()
        assert ("window.gguf: gemma3.attention.head_count_kv = 3 does not divide "
                "gemma3.attention.head_count = 4") in text, text
        assert "Traceback" not in text and "\n" not in text
        # the app goes on: the same window loads a good file
        good = tiny_model("gemma3").gguf["f32"]
        ctl.load_model(str(good))
        qtbot.waitUntil(lambda: ctl.load_id is None, timeout=120_000)
        assert ctl.model_info is not None and ctl.model_info["path"] == str(good)
    finally:
        ctl.shutdown()
