"""Integer LayerNorm (I-LayerNorm, I-ViT §3.5) with an exact integer square root.

For a row ``x`` of ``D`` integers (the 16-bit residual stream):

    mean = floor((Σx + floor(D/2)) / D)        # round half up
    y    = x − mean
    V    = Σ y²                                 # int64
    std  = max(isqrt(V), 1)                     # exact floor(√V); guards V = 0
    F    = floor((2**31 − 1) / std)
    z    = floor(y · F / 2)                     # |z| <= 2**30

``z`` approximates the normalised row: ``y/σ = y·√D/std`` with ``σ = std/√D``,
so ``z = (y/σ) · 2**30/√D`` — ``z`` has scale ``√D / 2**30`` (I-ViT Eq. 16–17).

The affine part ``γ·ŷ + β`` is not done here: ``quantize`` folds ``γ`` into a
per-channel dyadic requantization of ``z`` and ``β`` into its integer offset
(``ops.requant``). ``eps`` is dropped, as in I-ViT; ``std >= 1`` plays its role.

``|y_i| <= std`` because ``y_i² <= V``; hence ``|y·F| <= 2**31 − 1`` and ``z``
fits in 31 bits for any input. ``V <= D·(2**16)**2 < 2**62`` for ``D < 2**30``.

The I-ViT reference computes ``std`` with 10 Newton steps from ``2**16``; that
overestimates ``√V`` when ``V < 2**17`` (e.g. gives 256 for ``V = 1``).
``isqrt`` below is the exact digit-by-digit method: 32 fixed steps of
compare-and-subtract, so it lowers to straight-line integer code.
"""
from __future__ import annotations

import math

import torch

from .arith import INT32_MAX, as_int64, floor_div, round_mean, shift_right_floor
from .checks import check_magnitude

ISQRT_STEPS = 32


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """Exact ``floor(√v)`` for int64 ``0 <= v < 2**63``, elementwise.

    Digit-by-digit (one result bit per step, highest first)::

        res = 0; bit = 4**31
        repeat 32 times:
            if v >= res + bit: v -= res + bit; res = res/2 + bit
            else:              res = res/2
            bit /= 4
    """
    v = as_int64(v)
    if bool((v < 0).any()):
        raise ValueError("isqrt of a negative number")
    res = torch.zeros_like(v)
    bit = 1 << 62
    for _ in range(ISQRT_STEPS):
        trial = res + bit
        take = v >= trial
        v = torch.where(take, v - trial, v)
        res = torch.where(take, shift_right_floor(res, 1) + bit, shift_right_floor(res, 1))
        bit >>= 2
    return res


def int_layernorm(x: torch.Tensor) -> torch.Tensor:
    """Normalise the last axis of an integer tensor; returns ``z`` at scale ``√D / 2**30``.

    ``|x| <= 2**30 / ⌈√D⌉`` keeps ``V = Σy²`` under ``2**62`` (int64); the
    residual stream is int16, far inside it.
    """
    x = as_int64(x)
    check_magnitude(x, layernorm_input_bound(x.shape[-1]), "int_layernorm", "input")
    y = x - round_mean(x, dim=-1)
    var = (y * y).sum(dim=-1, keepdim=True)
    std = torch.clamp(isqrt(var), min=1)
    factor = floor_div(torch.full_like(std, INT32_MAX), std)
    return shift_right_floor(y * factor, 1)


def layernorm_input_bound(d: int) -> int:
    """``2**30 // ⌈√D⌉``: the largest ``|x|`` ``int_layernorm`` takes for rows of ``D`` values."""
    root = math.isqrt(d)
    return 2**30 // (root if root * root == d else root + 1)


def layernorm_output_scale(d: int) -> float:
    """The real scale of ``int_layernorm``'s output: ``√D / 2**30``."""
    return float(d) ** 0.5 / 2.0**30
