"""Weights behind a call: `Linear` (y = x W^T + b) and `Embedding` (row lookup).

Model code only ever does `lin(x)` and `emb(ids)`, so the storage behind them can change
without touching any model file. Today `Linear` dequantizes its GGUF tensor to float32 once
at load time; a packed-quantized `Linear` with a fused kernel only has to replace
`Linear.from_gguf` (and keep `__call__`, `in_features`, `out_features`, `nbytes`).

`Embedding` never dequantizes the whole table: each lookup decodes just the rows it needs
straight from the memory-mapped file (a 262k x 640 vocabulary is 670 MB as float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.gguf.dequant import dequantize, dequantize_row_ids
from engine.gguf.reader import GGUFFile, TensorInfo


class Linear:
    """A dense float32 linear map; x [T, in] -> [T, out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight.contiguous()  # [out, in]
        self.bias = bias  # [out] or None

    @classmethod
    def from_gguf(cls, gf: GGUFFile, info: TensorInfo, bias: TensorInfo | None = None) -> "Linear":
        """Load `info` (a [out, in] matrix) and an optional [out] bias from an open GGUF file."""
        if len(info.shape) != 2:
            raise ValueError(f"{info.name}: expected a 2-D weight, got shape {info.shape}")
        return cls(dequantize(gf, info), dequantize(gf, bias) if bias is not None else None)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def nbytes(self) -> int:
        n = self.weight.numel() * self.weight.element_size()
        return n + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Embedding:
    """Token embedding table [n_vocab, dim], looked up row by row from the GGUF file."""

    def __init__(self, gf: GGUFFile, info: TensorInfo):
        if len(info.shape) != 2:
            raise ValueError(f"{info.name}: expected a 2-D table, got shape {info.shape}")
        self.gf = gf
        self.info = info

    @property
    def n_vocab(self) -> int:
        return self.info.shape[0]

    @property
    def dim(self) -> int:
        return self.info.shape[1]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] int64 -> [T, dim] float32 (decodes only those rows)."""
        return dequantize_row_ids(self.gf, self.info, ids)
