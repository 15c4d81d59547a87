"""LLM Lens engine: GGUF reading, tokenizer, models and generation in pure PyTorch on the CPU.

The public API, in the order a program uses it::

    from engine import open_gguf, load_tokenizer, load_model, generate, SamplingParams

    gf = open_gguf("model.gguf")              # metadata + tensor directory, no weights read
    tok = load_tokenizer(gf)
    model = load_model(gf, n_ctx=4096)
    for event in generate(model, tok, tok.encode("Hello"), SamplingParams(temperature=0)):
        ...                                   # PromptDone, Token, ..., Done

Names are imported lazily so that `import engine` (and `llmlens info`) never pays for torch.
This package never imports Qt.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "open_gguf": "engine.gguf.reader",
    "GGUFFile": "engine.gguf.reader",
    "TensorInfo": "engine.gguf.reader",
    "summarize": "engine.gguf.summary",
    "dequantize": "engine.gguf.dequant",
    "load_tokenizer": "engine.tokenizer",
    "render_chat": "engine.chat_template",
    "load_model": "engine.models.base",
    "supported_architectures": "engine.models.base",
    "Model": "engine.models.base",
    "KVCache": "engine.kv_cache",
    "make_sampler": "engine.sampling",
    "Event": "engine.generate",
    "generate": "engine.generate",
    "SamplingParams": "engine.sampling",
    "PromptDone": "engine.generate",
    "Token": "engine.generate",
    "Done": "engine.generate",
    "Timings": "engine.generate",
    "Recorder": "engine.trace",
    "default_model_path": "engine.default_model",
    "LLMLensError": "engine.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
