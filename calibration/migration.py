"""Per-channel scale migration from a LayerNorm into the linear layer it feeds (SmoothQuant-style).

A LayerNorm output ``y_c = γ_c·ŷ_c + β_c`` that feeds a linear layer ``x·Wᵀ``
may be divided per channel by ``s_c`` if the layer's weight columns are
multiplied by it: ``(y / s)·(W·diag(s))ᵀ = y·Wᵀ``. The float function does
not change; what changes is how the two 8-bit grids split the work. Real
pretrained ViTs have a few LayerNorm channels far larger than the rest
(DINOv2's reach tens of times the median), which a per-tensor activation
grid can only hold by making every other channel coarse; migration moves
that range into the weights, which are quantized per output channel.

SmoothQuant (Xiao et al., 2023, Eq. 4) sets

    s_c = max|X_c|^α / max|W_{:,c}|^(1−α)

intvit picks α per layer from ``ALPHAS`` (and "no migration") by the error the
quantized layer makes on calibration activations: the GEMM output
``Q_a(X / s)·Q_w(W·diag(s))ᵀ`` against ``X·Wᵀ``, with ``Q_a`` the point's
own 8-bit grid (asymmetric when it has a zero point) and ``Q_w`` the int8
per-channel weights, so the search optimises the layer's output, not its
input. ``s`` is clamped to ``2**±MAX_LOG2``.

The division goes into the LayerNorm's ``γ`` and ``β`` — in the integer model
those are I-LayerNorm's per-channel requant multiplier and offset — and the
multiplication into the weights before they are quantized: no new op, the
same kernels, the same op count. Pairs: ``blocks.i.norm1 → qkv``,
``blocks.i.norm2 → fc1`` and, for a classifier, ``norm → head`` (through
the pooling, which is per channel); a backbone's final norm is its output and
keeps its channels.
"""
from __future__ import annotations

import copy

import torch

from .. import ops
from ..models.spec import ViTSpec, layernorm_at, select_by_patterns
from .activations import collect_activations, layernorm_gemm_inputs
from .data import validate_batch

ALPHAS = (0.25, 0.4, 0.5, 0.6, 0.75, 0.9)
MAX_LOG2 = 8                 # migration factors stay within 2**-8 .. 2**8


def migration_pairs(spec: ViTSpec) -> dict[str, tuple]:
    """``{norm point: (Norm, Linear, parts)}`` for every LayerNorm whose output only a linear layer reads
    (``activations.layernorm_gemm_inputs``: ``parts`` pooled copies of the channels for the head)."""
    return {point: (layernorm_at(spec, point), lin, parts)
            for point, (lin, parts) in layernorm_gemm_inputs(spec).items()}


def fake_quant_rows(x: torch.Tensor, asymmetric: bool, lo: float | None = None,
                    hi: float | None = None) -> torch.Tensor:
    """``x`` on a per-tensor 8-bit grid over ``[lo, hi]`` (default: its own min and max), dequantized;
    a symmetric grid spans ``max(|lo|, |hi|)``."""
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    if asymmetric:
        scale, zero = ops.asymmetric_grid(lo, hi, 8)
    else:
        scale, zero = ops.symmetric_scale(max(-lo, hi), 8), 0
    return (ops.quantize_float(x, scale, 8, zero) - zero).double() * scale


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    s_w = ops.weight_scale(w)
    return ops.quantize_weight(w, s_w).double() * s_w[:, None]


def _tile(s: torch.Tensor, parts: int) -> torch.Tensor:
    return s.repeat(parts)


def output_error(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, asymmetric: bool,
                 ref: torch.Tensor | None = None) -> float:
    """Relative squared error of the quantized GEMM with migration ``s``: ``‖Q(x/s)·Q(W·s)ᵀ − x·Wᵀ‖² / ‖x·Wᵀ‖²``.

    ``x`` holds the norm's output rows (``[R, D]``); ``w`` the linear's weight (``[N, parts·D]``) for
    ``parts`` pooled copies of the channels, whose rows of ``x`` are taken as the same distribution.
    ``ref`` is ``x·Wᵀ`` if already known. The product of the two quantized operands is taken in float32
    (an error estimate, not a result).
    """
    parts = w.shape[1] // x.shape[1]
    if ref is None:
        ref = x.repeat(1, parts) @ w.T
    xs = fake_quant_rows(x / s, asymmetric).repeat(1, parts).float()
    ws = fake_quant_weight(w * _tile(s, parts)).float()
    return float(((xs @ ws.T).double() - ref).square().sum() / ref.square().sum().clamp(min=1e-30))


def search_factors(x: torch.Tensor, w: torch.Tensor, asymmetric: bool) -> tuple[float | None, torch.Tensor, float]:
    """``(α, s, error)`` of the best migration of one pair; ``α = None`` (``s = 1``) when none helps."""
    d = x.shape[1]
    parts = w.shape[1] // d
    act = x.abs().amax(dim=0).clamp(min=1e-8)
    wmax = w.abs().reshape(w.shape[0], parts, d).amax(dim=(0, 1)).clamp(min=1e-8)
    ref = x.repeat(1, parts) @ w.T
    ones = torch.ones(d, dtype=torch.float64)
    best = (None, ones, output_error(x, w, ones, asymmetric, ref))
    for alpha in ALPHAS:
        s = (act.pow(alpha) / wmax.pow(1.0 - alpha)).clamp(2.0**-MAX_LOG2, 2.0**MAX_LOG2)
        err = output_error(x, w, s, asymmetric, ref)
        if err < best[2]:
            best = (alpha, s, err)
    return best


def resolve_migration(spec: ViTSpec, patterns) -> list[str]:
    """The LayerNorm points matching the glob ``patterns`` among ``migration_pairs``; a pattern matching none
    is an error naming the ones that can migrate (the default ``("*",)`` on a model without any gives none)."""
    return select_by_patterns(patterns, list(migration_pairs(spec)), "migration",
                              "LayerNorm that feeds only a linear layer",
                              "per block norm1 → qkv and norm2 → fc1, and the final norm → a classifier head; "
                              "a backbone's final norm is its output and keeps its channels")


def migrate(spec: ViTSpec, batches, points=None, asymmetric_points=(), progress=None) -> tuple[ViTSpec, dict]:
    """A copy of ``spec`` with the LayerNorm → linear pairs ``points`` (default: all) migrated by their
    searched factors.

    ``batches`` are calibration image batches; ``asymmetric_points`` the norm points that will have a zero
    point (their grid in the search). Returns ``(migrated spec, report)`` with, per pair, the chosen α (None:
    not migrated), the largest and smallest factor, and the GEMM output error before and after.
    """
    for b in batches:
        validate_batch(b, spec.input_shape()[1:])
    points = list(migration_pairs(spec)) if points is None else list(points)
    outputs = collect_activations(spec, batches, points)
    spec = copy.deepcopy(spec)
    pairs = migration_pairs(spec)
    report = {}
    for name in points:
        norm, lin, parts = pairs[name]
        x, w = outputs[name], lin.weight.detach().double()
        alpha, s, after = search_factors(x, w, name in asymmetric_points)
        before = after if alpha is None else output_error(x, w, torch.ones_like(s), name in asymmetric_points)
        report[name] = {"alpha": alpha, "error_before": before, "error_after": after,
                        "max_factor": float(s.max()), "min_factor": float(s.min())}
        if alpha is not None:
            apply_factors(norm, lin, s, parts)
        if progress:
            progress(f"migration {name}: alpha {alpha}, GEMM output error {before:.2e} -> {after:.2e}")
    return spec, report


def apply_factors(norm, lin, s: torch.Tensor, parts: int = 1) -> None:
    """Divide the LayerNorm's channels by ``s`` and multiply the linear's input columns by it (in place)."""
    dtype = norm.weight.dtype
    norm.weight = (norm.weight.detach().double() / s).to(dtype)
    norm.bias = (norm.bias.detach().double() / s).to(dtype)
    lin.weight = (lin.weight.detach().double() * _tile(s, parts)).to(lin.weight.dtype)
