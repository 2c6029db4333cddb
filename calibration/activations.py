"""Samples of the float model's activations at chosen quant points, as the GEMM that reads them sees them.

The offline searches (``migration``, ``output_ranges``) and bias correction
measure a quantized GEMM on real inputs: ``collect_activations`` runs the
float model over calibration batches and keeps a deterministic sample of
token rows per point, each row laid out as the reading linear's input (the
per-head ``ctx`` is merged back to ``[tokens, D]``).
"""
from __future__ import annotations

import torch

from ..models.spec import Linear, ViTSpec, float_forward
from .data import check_finite_activation

SAMPLE_ROWS = 4096           # activation rows (tokens) a search measures on
GEMM_INPUTS = {"norm1": "qkv", "ctx": "proj", "norm2": "fc1", "gelu": "fc2"}   # block point -> linear reading it


def gemm_input_layers(spec: ViTSpec) -> dict[str, tuple[Linear, int]]:
    """``{point: (linear, parts)}`` for every 8-bit activation point a linear layer reads; ``parts`` is how many
    pooled copies of the channels the linear's input holds (1 inside a block; the head reads the pooled
    final norm)."""
    out = {}
    for i, blk in enumerate(spec.blocks):
        for point, layer in GEMM_INPUTS.items():
            out[f"blocks.{i}.{point}"] = (getattr(blk, layer), 1)
    if spec.final_norm is not None and spec.head is not None:
        out["norm"] = (spec.head, len(spec.pool))
    return out


def layernorm_gemm_inputs(spec: ViTSpec) -> dict[str, tuple[Linear, int]]:
    """The part of ``gemm_input_layers`` that LayerNorms write: ``blocks.i.norm1`` (read by qkv),
    ``blocks.i.norm2`` (fc1) and, for a classifier, ``norm`` (the head, through the pooling)."""
    return {point: v for point, v in gemm_input_layers(spec).items()
            if point.rsplit(".", 1)[-1] in ("norm1", "norm2", "norm")}


@torch.no_grad()
def collect_activations(spec: ViTSpec, batches, points, rows: int = SAMPLE_ROWS) -> dict[str, torch.Tensor]:
    """A deterministic sample of up to ``rows`` token rows (float64 ``[R, D]``) of each point in ``points``."""
    seen: dict[str, list] = {p: [] for p in points}
    total = sum(b.shape[0] for b in batches)

    def hook(name, x):
        check_finite_activation(name, x)
        if name in seen:
            rows_of = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1) if name.endswith(".ctx") else x
            flat = rows_of.reshape(-1, rows_of.shape[-1])      # ctx: [B, H, T, dh] -> [B·T, D], as proj reads it
            per_batch = max(1, rows * x.shape[0] // total)
            seen[name].append(flat[:: max(1, flat.shape[0] // per_batch)].double())
        return x                                               # the forward itself is unchanged

    for b in batches:
        float_forward(spec, b, hook)
    return {name: torch.cat(parts)[:rows] for name, parts in seen.items()}
