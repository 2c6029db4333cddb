"""Dyadic requantization: integer rescaling by ``m / 2**e``.

A tensor ``z`` with scale ``s_in`` is re-expressed at scale ``s_out`` by the
real ratio ``r = s_in / s_out``. I-ViT (Li & Gu, 2023, Eq. 4) replaces ``r`` by
the dyadic number ``m / 2**e`` so that inference needs only an integer
multiply and a shift::

    out = saturate( round((z * m + offset) / 2**e), bits )

with ``round`` = round-half-up (``ops.arith.shift_right_round``).

``m`` and ``e`` come from ``frexp(r) = f * 2**k`` with ``0.5 <= |f| < 1``:
``m = round_half_away(f * 2**31)`` (a signed 31-bit magnitude, so ``|m| < 2**31``
fits int32) and ``e = 31 - k``. When rounding makes ``|m| == 2**31`` the pair
is renormalised to ``(m / 2, e - 1)``. Shifts are kept in ``[1, 62]``:
ratios below ``2**-31`` lose mantissa bits (``e`` capped at 62), ratios of
``2**30`` or more are refused.

``offset`` is an optional integer added *after* the multiply, i.e. at scale
``s_out / 2**e``; it carries a bias that is not representable at the input
scale (the LayerNorm β, see ``quantize``). Ratios may be per channel: ``m``,
``e`` and ``offset`` broadcast against ``z``.

Overflow: with ``|z| <= 2**31`` (an int32 accumulator), ``|m| < 2**31``,
``|offset| <= 2**60`` and ``e <= 62``, ``|z*m + offset + 2**(e-1)| < 2**63``:
no int64 overflow. ``check_requant_bounds`` enforces the offset bound.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .arith import as_int64, saturate, shift_right_round, signed_range
from .checks import check_finite_input, check_product_fits

MULTIPLIER_BITS = 31
MAX_SHIFT = 62
MAX_OFFSET = 2**60


def dyadic_multiplier(ratio, max_shift=MAX_SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(m, e)`` (int64 tensors) with ``m / 2**e ≈ ratio`` elementwise.

    ``ratio`` is a float (or array of floats), possibly negative or zero.
    Zero maps to ``(0, 1)``. ``max_shift`` (scalar or per element, <= 62)
    caps ``e``; a ratio that would need more shift keeps fewer mantissa bits
    (``m = round(r · 2**max_shift)``).
    """
    r = np.asarray(torch.as_tensor(ratio, dtype=torch.float64).cpu().numpy(), dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError("requantization ratio is not finite (a zero or NaN scale upstream?)")
    f, k = np.frexp(r)
    m = np.sign(f) * np.floor(np.abs(f) * 2.0**MULTIPLIER_BITS + 0.5)
    full = np.abs(m) == 2.0**MULTIPLIER_BITS
    m = np.where(full, m / 2, m)
    k = np.where(full, k + 1, k)
    e = MULTIPLIER_BITS - k
    if np.any((e < 1) & (m != 0)):
        worst = float(np.max(np.abs(r)))
        raise ValueError(f"requantization ratio {worst:g} is too large (must be < 2**30)")
    # Tiny ratios (or a tight cap): keep e <= cap and drop mantissa bits instead.
    cap = np.minimum(np.asarray(torch.as_tensor(max_shift).cpu().numpy(), dtype=np.int64), MAX_SHIFT)
    if np.any(cap < 1):
        raise ValueError("max_shift must be at least 1")
    tiny = e > cap
    m = np.where(tiny, np.sign(r) * np.floor(np.abs(r) * np.exp2(cap.astype(np.float64)) + 0.5), m)
    e = np.where(tiny, cap, e)
    e = np.where(m == 0, 1, e)
    return torch.from_numpy(m.astype(np.int64)), torch.from_numpy(e.astype(np.int64))


def check_dyadic(m: torch.Tensor, e: torch.Tensor, what: str = "a requant") -> None:
    """Refuse a multiplier and shift ``dyadic_multiplier`` cannot give: ``|m| < 2**MULTIPLIER_BITS``,
    ``1 <= e <= MAX_SHIFT`` (a wider ``m`` or shift leaves the int64 product's range, and backends disagree on
    shifts past the width)."""
    if m.numel() and int(m.abs().max()) >= 2**MULTIPLIER_BITS:
        raise ValueError(f"{what}: multiplier reaches {int(m.abs().max())}, outside ±2**{MULTIPLIER_BITS}")
    if e.numel() and not (1 <= int(e.min()) and int(e.max()) <= MAX_SHIFT):
        raise ValueError(f"{what}: shift in [{int(e.min())}, {int(e.max())}], outside [1, {MAX_SHIFT}]")


def dyadic_value(m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The real number ``m / 2**e`` as float64 (for reporting and tests only)."""
    return m.to(torch.float64) * torch.pow(2.0, -e.to(torch.float64))


def offset_for(value_at_out_scale, e: torch.Tensor) -> torch.Tensor:
    """Integer offset that adds ``value_at_out_scale`` output units: ``round(v * 2**e)``."""
    v = torch.as_tensor(value_at_out_scale, dtype=torch.float64)
    off = torch.floor(v * torch.pow(2.0, e.to(torch.float64)) + 0.5).to(torch.int64)
    check_requant_bounds(off)
    return off


def max_shift_for_offset(value_at_out_scale) -> torch.Tensor:
    """Largest shift ``e`` (<= 62) with ``|round(v · 2**e)| <= 2**60`` for each offset value ``v``."""
    v = np.abs(np.asarray(torch.as_tensor(value_at_out_scale, dtype=torch.float64).cpu().numpy()))
    room = np.floor(np.log2(2.0**60 / np.maximum(v + 0.5, 1e-300)))
    return torch.from_numpy(np.asarray(np.clip(room, 1, MAX_SHIFT), dtype=np.int64))


def check_requant_bounds(offset: torch.Tensor) -> None:
    """Refuse offsets that could overflow int64 inside ``rescale``."""
    if offset.numel() and int(offset.abs().max()) > MAX_OFFSET:
        raise ValueError("requantization offset exceeds 2**60; the output scale is too small")


def rescale(z: torch.Tensor, m: torch.Tensor, e: torch.Tensor,
            offset: torch.Tensor | None = None) -> torch.Tensor:
    """``round((z * m + offset) / 2**e)`` without saturation (int64 result)."""
    check_product_fits(as_int64(z), as_int64(m), offset, as_int64(e), "requant")
    acc = as_int64(z) * as_int64(m)
    if offset is not None:
        acc = acc + as_int64(offset)
    return shift_right_round(acc, as_int64(e))


def requantize(z: torch.Tensor, m: torch.Tensor, e: torch.Tensor, bits: int,
               offset: torch.Tensor | None = None) -> torch.Tensor:
    """Dyadic requantization (I-ViT Eq. 4): ``saturate(rescale(z, m, e, offset), bits)``."""
    return saturate(rescale(z, m, e, offset), bits)


def residual_add(a: torch.Tensor, m_a: torch.Tensor, e_a: torch.Tensor,
                 b: torch.Tensor, m_b: torch.Tensor, e_b: torch.Tensor,
                 bits: int) -> torch.Tensor:
    """Add two integer tensors of different scales into one of scale ``s_out``.

    Each branch is rescaled with its own dyadic ratio (``s_a / s_out`` and
    ``s_b / s_out``), the two are summed, and the sum saturates once::

        out = saturate(rescale(a, m_a, e_a) + rescale(b, m_b, e_b), bits)
    """
    return saturate(rescale(a, m_a, e_a) + rescale(b, m_b, e_b), bits)


def quantize_float(x: torch.Tensor, scale, bits: int, zero: int = 0) -> torch.Tensor:
    """The input quantizer (the one float op before the integer graph), and the grid of every quant point.

    ``saturate(round_half_even(x / scale) + zero, bits)`` as int64; ``torch.round``
    and ONNX ``Round`` both round half to even. ``zero`` is the point's zero
    point (``asymmetric_grid``), 0 for a symmetric point.

    The clamp happens in floating point, before the cast to an integer (as
    the ONNX graph's ``Clip`` then ``Cast``): any finite input saturates —
    ``x/scale`` of 1e30 or ±Inf lands on the range's ends, never wraps. NaN
    has no code and is refused (``checks.check_finite_input``).
    """
    if not x.is_floating_point():
        raise TypeError(f"the input quantizer expects a float tensor, got {x.dtype}")
    check_finite_input(x)
    return _on_grid(x, torch.as_tensor(scale, dtype=x.dtype, device=x.device), bits, int(zero))


def quantize_float_channels(x: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """``quantize_float`` with a grid of its own for each channel of the last axis (``scales``, ``zeros``:
    ``[C]``; analysis only — the integer graph has one grid per quant point)."""
    check_finite_input(x)
    return _on_grid(x, scales.to(x.dtype), bits, zeros.to(torch.int64))


def _on_grid(x: torch.Tensor, s: torch.Tensor, bits: int, zero) -> torch.Tensor:
    lo, hi = signed_range(bits)
    return torch.clamp(torch.round(x / s), lo - zero, hi - zero).to(torch.int64) + zero


def symmetric_scale(amax: float, bits: int) -> float:
    """The scale mapping ``[-amax, amax]`` onto the signed ``bits``-bit range: ``amax / (2**(bits-1) - 1)``
    (``amax`` floored at 1e-8, so an all-zero point still gets a positive scale)."""
    return max(float(amax), 1e-8) / (2 ** (bits - 1) - 1)


def asymmetric_grid(lo: float, hi: float, bits: int = 8) -> tuple[float, int]:
    """``(scale, zero)`` mapping the range ``[lo, hi]`` (``lo <= 0 <= hi``) onto all ``2**bits`` levels.

    ``value = scale · (q − zero)`` with ``q`` in the signed range; the unsigned
    form's zero point ``z_u ∈ [0, 2**bits − 1]`` (the code of 0.0 in a u8
    tensor) is ``zero + 2**(bits−1)``::

        scale = (hi − lo) / (2**bits − 1)
        zero  = round(−lo / scale) − 2**(bits−1)          # lo ↦ −2**(bits−1), 0.0 ↦ zero exactly

    so a one-sided range (post-GELU ``[−0.17, max]``) uses all 256 levels where
    a symmetric grid wastes almost half. A GEMM whose input has a zero point
    folds it offline into its int32 bias (``gemm.zero_point_correction``), so
    the kernel does not change.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"asymmetric range [{lo}, {hi}] is not finite")
    levels = 2**bits - 1
    scale = max(hi - lo, 1e-8) / levels
    lowest = -(1 << (bits - 1))
    zero = int(min(max(round(-lo / scale), 0), levels)) + lowest
    return scale, zero


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel int8 weight scale ``s_w[n] = max_k |W[n, k]| / 127`` (1 for an all-zero row), float64."""
    amax = w.detach().abs().amax(dim=1).double()
    return torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))


def quantize_weight(w: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """``clamp(round_half_even(W / s_w), ±127)`` per output channel: the int8 weights (int64 tensor)."""
    return torch.clamp(torch.round(w.detach().double() / s_w[:, None]), -127, 127).to(torch.int64)


def log2_ceil(x: float) -> int:
    """Smallest ``k`` with ``2**k >= x`` (for bit-width proofs)."""
    return max(0, math.ceil(math.log2(x))) if x > 0 else 0
