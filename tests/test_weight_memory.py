"""Packed weights in huge-page memory (engine/weight_memory.py).

- the arena hands out aligned, disjoint, writable uint8 tensors; large ones get a map of their
  own starting on a 2 MiB boundary; a tensor stays valid after the arena is gone;
- a model's packed weights come from maps advised MADV_HUGEPAGE (the kernel's own record,
  /proc/self/smaps VmFlags "hg"), and LLMLENS_HUGE_PAGES=0 makes no arena (torch memory);
- the logits are the same either way (the same bytes, only where they live changes).
"""

from __future__ import annotations

import gc
import mmap
import sys

import numpy as np
import pytest
import torch

from engine import kernels
from engine.models.base import load_model
from engine.quant_linear import QuantLinear
from engine.weight_memory import HUGE_PAGE, WeightArena, huge_pages_enabled
from tests.fixtures.tiny_models import tiny_model_factory  # noqa: F401 (fixture)

linux_thp = pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE") or sys.platform != "linux",
                               reason="transparent huge pages are a Linux feature")


def _quant_linears(root: object) -> list[QuantLinear]:
    """Every QuantLinear reachable from `root` through attributes, lists, tuples and dicts."""
    found, seen, stack = [], set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (torch.Tensor, np.ndarray, str, bytes, int, float)):
            continue
        seen.add(id(obj))
        if isinstance(obj, QuantLinear):
            found.append(obj)
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("engine"):
            stack.extend(vars(obj).values())
    return found


def _vm_flags(address: int) -> set[str]:
    """The VmFlags of the mapping of this process that contains `address`."""
    current = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = lo <= address < hi
            elif current and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


@linux_thp
def test_arena_tensors_are_aligned_disjoint_and_outlive_the_arena():
    arena = WeightArena(chunk_bytes=8 << 20)
    sizes = [1, 100, 4096, 3 << 20, 70, 5 << 20]  # the 5 MiB one is large: a map of its own
    ts = [arena.empty(n) for n in sizes]
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel()) for t in ts)
    assert all(a_end <= b for (_, a_end), (b, _) in zip(spans, spans[1:]))
    for t, n in zip(ts, sizes):
        assert t.dtype == torch.uint8 and t.numel() == n and t.data_ptr() % 64 == 0
        t.fill_(n % 251)
    assert ts[0].data_ptr() % HUGE_PAGE == 0  # a fresh chunk starts on a huge page
    assert ts[-1].data_ptr() % HUGE_PAGE == 0  # so does a large tensor's own map
    assert arena.empty(0).numel() == 0
    del arena
    gc.collect()
    for t, n in zip(ts, sizes):  # the maps live as long as the tensors
        assert int(t.min()) == int(t.max()) == n % 251


@linux_thp
@pytest.mark.skipif(kernels.load() is None, reason="packed weights need the kernels")
def test_model_weights_are_advised_huge_and_give_the_same_logits(tiny_model_factory,
                                                                 monkeypatch):
    tm = tiny_model_factory("llama")
    ids = torch.tensor([int(i) for i in tm.load_ref()["ids"][:12]])
    logits = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("LLMLENS_HUGE_PAGES", mode)
        assert huge_pages_enabled() == (mode == "1")
        model = load_model(tm.gguf["q8_0"], n_ctx=64)
        packed = [q.packed for q in _quant_linears(model) if q.packed.numel()]
        assert packed, "the q8_0 model has packed weights"
        if mode == "1":
            assert all("hg" in _vm_flags(p.data_ptr()) for p in packed)
        else:
            # torch's memory (the heap may hold spans numpy advised for its own big arrays,
            # so the flag alone says nothing here): no arena was made for this file
            assert getattr(model.gguf, "_weight_arena", None) is None
        with torch.inference_mode():
            logits[mode] = model.forward(ids, model.new_cache(), 0).numpy()
        del model, packed
        gc.collect()
    np.testing.assert_array_equal(logits["1"], logits["0"])
