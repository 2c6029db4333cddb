"""Integer arithmetic primitives every intvit kernel is written in.

All functions take and return integer tensors (``torch.int64`` unless stated)
and never touch floating point. The rounding rules are fixed here, once:

* ``shift_right_floor(x, k)`` — arithmetic right shift, ``floor(x / 2**k)``
  (rounds toward −∞ for negative ``x``; this is what ``>>`` does on signed
  two's-complement integers and what ``ops`` means by "shift").
* ``shift_right_round(x, k)`` — ``floor((x + 2**(k-1)) / 2**k)``: round to
  nearest, **ties toward +∞** ("round half up"). This is the one rounding used
  by every dyadic requantization. I-ViT's PyTorch reference rounds a float64
  product half-to-even instead; the two differ only on exact ties.
* ``floor_div(a, b)`` — ``floor(a / b)`` for ``b > 0`` (ONNX ``Div`` truncates
  toward zero, so the exporter must reproduce *this*, not ``Div``).
* ``round_mean(x, dim)`` — ``floor((Σx + floor(n/2)) / n)``: the mean, ties toward +∞.
* ``saturate(x, bits)`` — clamp to the signed range ``[-2**(bits-1), 2**(bits-1)-1]``.
"""
from __future__ import annotations

import torch

INT32_MAX = 2**31 - 1


def as_int64(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as int64, refusing floating-point input (no silent truncation)."""
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"integer op got a {x.dtype} tensor; pass an integer tensor")
    return x.to(torch.int64)


def signed_range(bits: int) -> tuple[int, int]:
    """``(-2**(bits-1), 2**(bits-1) - 1)``: the range of a signed ``bits``-bit integer."""
    if not 2 <= bits <= 64:
        raise ValueError(f"bit width must be in [2, 64], got {bits}")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def saturate(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Clamp ``x`` to the signed ``bits``-bit range (saturating, not wrapping)."""
    lo, hi = signed_range(bits)
    return torch.clamp(x, lo, hi)


def shift_right_floor(x: torch.Tensor, k) -> torch.Tensor:
    """``floor(x / 2**k)`` for ``k >= 0``: the arithmetic right shift."""
    return torch.bitwise_right_shift(as_int64(x), k)


def shift_right_round(x: torch.Tensor, k) -> torch.Tensor:
    """``floor((x + 2**(k-1)) / 2**k)`` for ``k >= 1``: round to nearest, ties toward +∞."""
    x = as_int64(x)
    k = torch.as_tensor(k, dtype=torch.int64)
    half = torch.bitwise_left_shift(torch.ones_like(k), k - 1)
    return torch.bitwise_right_shift(x + half, k)


def round_mean(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Integer mean rounded half up: ``floor((Σx + floor(n/2)) / n)`` over ``dim`` (keepdim)."""
    n = x.shape[dim]
    return floor_div(as_int64(x).sum(dim=dim, keepdim=True) + n // 2, n)


def floor_div(a: torch.Tensor, b) -> torch.Tensor:
    """``floor(a / b)`` for integer ``a`` and positive integer ``b``."""
    b = torch.as_tensor(b, dtype=torch.int64)
    if bool((b <= 0).any()):
        raise ValueError("floor_div divisor must be positive")
    return torch.div(as_int64(a), b, rounding_mode="floor")
