"""Fake quantization with straight-through estimators (for QAT in ``mode="fake"``).

``fake_quant(x, s, bits) = s · clamp(round(x / s), −2**(bits−1), 2**(bits−1)−1)``
in the forward pass; the backward pass passes the gradient through the
rounding unchanged inside the clipping range and zeroes it outside (the STE
of Bengio et al. 2013 as used by I-ViT's QAT).
"""
from __future__ import annotations

import torch

from .qparams import weight_scale


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.clamp(_ste_round(x / scale), lo, hi)
    return q * scale


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 weight fake quantization (±127)."""
    s = weight_scale(w).to(w.dtype)[:, None]
    return torch.clamp(_ste_round(w / s), -127, 127) * s
