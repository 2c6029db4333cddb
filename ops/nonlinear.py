"""Shift-based exponentials: ShiftExp, Shiftmax and ShiftGELU (I-ViT §3.3–3.4).

All three work on integer logits ``x`` with a real scale ``S`` that is known
offline. ``S`` enters only through the integer constant

    x0 = floor(-1 / S)          (``shiftexp_x0``; x0 <= -1)

which is the integer closest below "−1.0" in units of ``S``.

ShiftExp (I-ViT Alg. 1, Eq. 9–12), for ``x <= 0``:

    x̂ = x + (x >> 1) − (x >> 4)           # x·log2(e) ≈ x·1.0111b
    x̂ = max(x̂, n·x0)                       # clip: 2**-n is the smallest value kept
    q = floor(x̂ / x0)                       # integer part of −x̂·S (q in [0, n])
    r = x̂ − q·x0                            # remainder, r in (x0, 0]
    exp = floor((r − 2·x0) · 2**(n−q) / 2)  # = floor((r/2 − x0)·2**(n−q)), exact

``exp ≈ 2**n · (1/S) · e**(x·S)``; its maximum, at ``x = 0``, is ``−x0·2**n``.

Shiftmax (Alg. 1, Eq. 13), along the last axis, output bits ``b``:

    exp = ShiftExp(x − max(x), x0, n = 15)
    out = floor(exp · floor((2**62 − 1) / Σ exp) / 2**(63 − b))  # scale 2**−(b−1)

Normalisation: I-ViT divides ``2**31 − 1`` by the sum (clamped to 31 bits)
and shifts by ``32 − b``. That factor has only ``log2(factor)`` bits: a row
whose sum is 0.6·2**31 gets ``factor = 1`` and loses 40% of its probability
mass; ShiftGELU with ``n = 23`` gets ``factor ≈ 3``. intvit keeps the same
one-division-per-row structure with a 62-bit numerator: ``factor >= 2**30``
whenever ``sum < 2**32``, so the division costs < 2**-30 relative error, and
``exp·factor <= sum·factor <= 2**62 − 1`` still fits int64 and bounds every
output (and every row sum) below ``2**(b−1)``.

ShiftGELU (Eq. 14–15): ``GELU(x) ≈ x · σ(1.702·x)``, with the sigmoid as a
ratio of two ShiftExps at scale ``1.702·S`` (the 1.702 is folded into ``x0``)
and the reference point ``m = max(x, 0)`` taken per element:

    σ = e**(x−m) / (e**(x−m) + e**(−m))
    e1 = ShiftExp(x − m, x0, n = 23);  e2 = ShiftExp(−m, x0, n = 23)
    sig = floor(e1 · floor((2**62 − 1) / (e1 + e2)) / 2**(63 − b))
    out = x · sig                                               # scale S·2**−(b−1)

I-ViT's reference takes ``m`` = the row max. Any ``m`` gives the same σ
mathematically, but ShiftExp clips its argument at ``n·x0`` (``2**-23``), and
with the row max both ``e1`` and ``e2`` clip as soon as ``m·S`` exceeds
``23 / (1.702·1.4375) ≈ 9.4``: every element more than 9.4 below the row max
then gets ``σ = 0.5`` (GELU(−3) becomes −1.5). A negative row max also makes
``−m > 0`` and overflows 31 bits. ``m = max(x, 0)`` per element keeps both
arguments ``<= 0`` with one of them exactly 0, so neither failure can happen,
and it needs no row reduction.

Every ShiftExp value fits int32 when the constants pass
``check_shiftexp_constants`` (value ranges: ``ops/README.md``).
"""
from __future__ import annotations

import math

import torch

from .arith import INT32_MAX, as_int64, floor_div, saturate, shift_right_floor
from .checks import check_magnitude, check_out_bits

NORM_NUMERATOR = 2**62 - 1

SHIFTMAX_N = 15
SHIFTGELU_N = 23
GELU_SIGMOID_COEF = 1.702


def shiftexp_x0(scale: float) -> int:
    """``x0 = floor(-1 / S)``: the ShiftExp constant for input scale ``S > 0``."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"ShiftExp needs a positive finite input scale, got {scale!r}")
    return math.floor(-1.0 / scale)


def check_shiftexp_constants(x0: int, n: int) -> None:
    """Refuse constants whose ShiftExp values (at most ``−x0·2**n``) could leave int32."""
    if x0 > -1:
        raise ValueError(f"x0 must be <= -1, got {x0}")
    if not 0 <= n <= 30:
        raise ValueError(f"n must be in [0, 30], got {n}")
    if (-x0) << n > INT32_MAX:
        raise ValueError(
            f"ShiftExp constants overflow int32: -x0·2**n = {-x0}·2**{n}; "
            "the input scale is too fine for this n (x0 = floor(-1/S))")


def shift_exp(x: torch.Tensor, x0: int, n: int) -> torch.Tensor:
    """ShiftExp of ``x <= 0`` (I-ViT Alg. 1): ``≈ 2**n · (1/S) · e**(x·S)``, int64."""
    x = as_int64(x)
    x = x + shift_right_floor(x, 1) - shift_right_floor(x, 4)
    x = torch.clamp(x, min=n * x0)
    q = floor_div(-x, -x0)               # x <= 0 and x0 < 0, so both operands are >= 0
    r = x - q * x0
    return shift_right_floor(torch.bitwise_left_shift(r - 2 * x0, n - q), 1)


def _normalise(num: torch.Tensor, total: torch.Tensor, out_bits: int) -> torch.Tensor:
    """``floor(num · floor((2**62−1) / total) / 2**(63−b))`` for ``0 <= num <= total``."""
    factor = floor_div(torch.full_like(total, NORM_NUMERATOR), total)
    return shift_right_floor(num * factor, 63 - out_bits)


def shiftmax(x: torch.Tensor, x0: int, out_bits: int = 16, n: int = SHIFTMAX_N) -> torch.Tensor:
    """Integer softmax over the last axis; output at scale ``2**-(out_bits-1)``.

    ``x``: 16-bit logits (``|x| <= 2**16``, so ``x − max`` is in ``[−(2**17), 0]``
    and ShiftExp's int32 steps cannot wrap); ``out_bits`` in ``[2, 31]``.
    """
    check_out_bits(out_bits, "shiftmax")
    x = as_int64(x)
    check_magnitude(x, 2**16, "shiftmax", "logits")
    x = x - x.amax(dim=-1, keepdim=True)
    e = shift_exp(x, x0, n)
    return _normalise(e, e.sum(dim=-1, keepdim=True), out_bits)


def shift_gelu(x: torch.Tensor, x0: int, out_bits: int = 8, n: int = SHIFTGELU_N) -> torch.Tensor:
    """Integer GELU ``x·σ(1.702x)``; ``x0 = shiftexp_x0(1.702·S)``; output scale ``S·2**-(out_bits-1)``.

    ``x``: int8 (``|x| <= 128``); ``out_bits`` in ``[2, 31]``.
    """
    check_out_bits(out_bits, "shift_gelu")
    x = as_int64(x)
    check_magnitude(x, 128, "shift_gelu", "input")
    m = torch.clamp(x, min=0)
    e1 = shift_exp(x - m, x0, n)
    e2 = shift_exp(-m, x0, n)
    return x * _normalise(e1, e1 + e2, out_bits)


# ---------------------------------------------------------------------------- GELU by table
GELU_MODES = ("table", "shift")


def _gelu(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * v * (1.0 + torch.special.erf(v / math.sqrt(2.0)))


#: The MLP activations a table can hold, as float functions (evaluated in float64 for the table): the
#: exact erf GELU, its tanh form (HF ``gelu_new``/``gelu_pytorch_tanh``, ``nn.GELU(approximate='tanh')``),
#: CLIP's QuickGELU ``x·σ(1.702x)``, ReLU and SiLU ``x·σ(x)``.
ACTIVATIONS = {
    "gelu": _gelu,
    "gelu_tanh": lambda v: 0.5 * v * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3))),
    "quick_gelu": lambda v: v * torch.sigmoid(GELU_SIGMOID_COEF * v),
    "relu": lambda v: torch.clamp(v, min=0.0),
    "silu": lambda v: v * torch.sigmoid(v),
}


def check_activation(act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; intvit's tables hold {', '.join(ACTIVATIONS)}")


def gelu_table(scale_in: float, scale_out: float, out_bits: int = 8, zero_out: int = 0,
               in_bits: int = 8, zero_in: int = 0, act: str = "gelu") -> torch.Tensor:
    """The activation ``act`` (GELU unless named) of every ``in_bits``-bit input, requantized: int64
    ``[2**in_bits]``.

    ``T[x − lo] = saturate(round(f((x − z_in)·S_in) / S_out) + z_out, out_bits)`` for
    ``x`` in ``[lo, hi] = signed_range(in_bits)``, with ``f = ACTIVATIONS[act]``, by default the exact
    ``GELU(v) = v·Φ(v) = v/2 · (1 + erf(v/√2))``, and ``round`` half to even.

    ShiftGELU approximates GELU by ``x·σ(1.702x)`` with shift-based
    exponentials; on an 8-bit input that approximation is the largest single
    error of a real pretrained ViT (``quantize.attribution``), while the input
    takes only 256 values. So intvit computes those 256 outputs once, in
    float64, when the model is frozen (as it computes every scale), stores the
    table in the model, and at run time GELU is a table lookup (``lookup``):
    integer-only, and the same stored table in every backend. Both sides may
    have zero points (``requant.asymmetric_grid``): the table absorbs them.
    Any other elementwise activation on the same input is a table as well.
    """
    check_activation(act)
    check_out_bits(out_bits, "gelu_table")
    check_out_bits(in_bits, "gelu_table", highest=16)
    if not (scale_in > 0 and scale_out > 0 and math.isfinite(scale_in) and math.isfinite(scale_out)):
        raise ValueError(f"GELU table needs positive finite scales, got {scale_in!r} -> {scale_out!r}")
    lo, hi = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    v = (torch.arange(lo, hi + 1, dtype=torch.float64) - int(zero_in)) * scale_in
    q = torch.round(ACTIVATIONS[act](v) / scale_out).to(torch.int64) + int(zero_out)
    return saturate(q, out_bits)


def lookup(x: torch.Tensor, table: torch.Tensor, lo: int) -> torch.Tensor:
    """``table[x − lo]`` elementwise (int64): an integer function given by its values on ``[lo, lo + len − 1]``."""
    x = as_int64(x)
    idx = x - int(lo)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= table.shape[0]):
        raise ValueError(f"lookup input outside the table's range [{lo}, {lo + table.shape[0] - 1}]")
    return as_int64(table)[idx]
