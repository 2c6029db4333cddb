"""Fake quantization with straight-through estimators (for QAT in ``mode="fake"``).

The forward value is the integer model's own grid, taken from the functions
that define it — ``ops.quantize_float`` for activations and
``ops.quantize_weight`` for weights — times the scale, so fake-quant and
integer mode can never round differently. The backward pass passes the
gradient through the rounding unchanged inside the clipping range and zeroes
it outside (the STE of Bengio et al. 2013, as in I-ViT's QAT).
"""
from __future__ import annotations

import torch

from .. import ops
from ..ops import quantize_weight, weight_scale


def _straight_through(x: torch.Tensor, value: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Forward: ``value``; backward: identity where ``inside``, zero elsewhere."""
    passed = x * inside
    return passed + (value - passed).detach()


def fake_quant(x: torch.Tensor, scale: float, bits: int, zero: int = 0) -> torch.Tensor:
    """``scale · (quantize_float(x, scale, bits, zero) − zero)`` with a clipped straight-through gradient."""
    lo, hi = ops.signed_range(bits)
    q = ops.quantize_float(x.detach(), scale, bits, zero).to(x.dtype)
    y = x.detach() / scale + zero
    return _straight_through(x, (q - zero) * scale, ((y >= lo) & (y <= hi)).to(x.dtype))


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel int8 weight grid of ``qparams`` (±127), straight-through gradient."""
    s = weight_scale(w)
    value = (quantize_weight(w, s).double() * s[:, None]).to(w.dtype)
    return _straight_through(w, value, torch.ones_like(w))
