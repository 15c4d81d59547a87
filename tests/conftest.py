"""Shared pytest fixtures. Keep it small: helpers live in tests/ggufs.py and tests/fixtures/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# DeepSeek's MLA cache in float32: the reference tests compare exact products against
# transformers (float16 latents, the default, are checked in tests/test_kv_reuse.py).
os.environ.setdefault("LLMLENS_MLA_CACHE", "f32")
# Likewise the dense KV cache (float16 by default where the fused decode attention runs; the
# kernel itself reads float32 too, so the reference tests still go through it):
# tests/test_layer_ops.py checks float16 against float32.
os.environ.setdefault("LLMLENS_KV_CACHE", "f32")


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The embedded Gemma 3 270M Q4_K_M file (assembled into the user cache on first use)."""
    from engine.default_model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def llama_cpp_source() -> Path:
    """llama.cpp's source tree from the llama-cpp-python sdist (tests/fixtures/llama_cpp_src.py),
    downloaded and extracted into the test cache on first use. A failure to fetch it is an error,
    not a skip: the reference tests must run everywhere."""
    from tests.fixtures.llama_cpp_src import llama_cpp_source_dir

    return llama_cpp_source_dir()


from tests.fixtures.tiny_models import tiny_model_factory  # noqa: E402,F401  (shared fixture)
