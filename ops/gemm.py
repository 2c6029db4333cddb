"""Integer GEMMs: int8 × int8 → int32 accumulate, plus patch extraction.

``int_linear(x, w, b) = x @ wᵀ + b`` with ``x`` int8 (``[..., K]``), ``w`` int8
per-output-channel weights (``[N, K]``) and ``b`` int32 at scale ``s_x·s_w``.
The accumulator is exact: ``|Σ x·w| <= K·2**14``; the backends' narrowest
form (VNNI's ``(x + 128)·w``) fits int32 for ``K <= 65 793``
(``check_accumulator_fits`` asserts it). Computed in int64 here
(the reference), in int32 by the backends.

The patch embedding is a convolution whose stride equals its kernel, i.e. a
GEMM on non-overlapping patches: ``patchify`` reorders the image into rows of
``C·P·P`` values in (c, ky, kx) order, matching ``Conv2d.weight.reshape(N, -1)``.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch

from .arith import INT32_MAX, as_int64


FLOAT64_EXACT = 2**53
_FLOAT64_GEMM: ContextVar[bool] = ContextVar("intvit_float64_gemm", default=False)


@contextmanager
def float64_gemm_evaluation():
    """Within this context ``int_matmul`` evaluates exact products through float64 BLAS.

    Where ``K · max|a| · max|b| < 2**53`` every product and every partial sum
    is an integer that float64 represents exactly, in any summation order, so
    the float64 product converted back to int64 is the same integer — tens of
    times faster than torch's int64 matmul on a CPU. The integer model's
    definition does not change; accuracy evaluations (``quantize.evaluate``,
    ``quantize.attribution``) use it, while the integer-only checks run the
    plain int64 path.
    """
    token = _FLOAT64_GEMM.set(True)
    try:
        yield
    finally:
        _FLOAT64_GEMM.reset(token)


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer ``a @ b`` (batched), int64 result (see ``float64_gemm_evaluation``)."""
    a, b = as_int64(a), as_int64(b)
    if _FLOAT64_GEMM.get() and a.numel() and b.numel() \
            and a.shape[-1] * int(a.abs().max()) * int(b.abs().max()) < FLOAT64_EXACT:
        return torch.matmul(a.double(), b.double()).to(torch.int64)
    return torch.matmul(a, b)


def int_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ wᵀ (+ bias)`` exactly, int64 result: int32 range for int8 ``x`` (``check_accumulator_fits``),
    ``|acc| <= K·2**22`` for the int16 ``x`` of a widened layer (``quantize.layout``)."""
    acc = int_matmul(x, as_int64(w).transpose(0, 1))
    if bias is not None:
        acc = acc + as_int64(bias)
    return acc


UNSIGNED_SHIFT = 128


def zero_point_correction(w: torch.Tensor, zero: int) -> torch.Tensor:
    """``−zero·Σ_k w[n, k]`` per output channel (int64 ``[N]``): what makes ``Σ_k x_k·w_nk`` the product of
    ``x − zero`` with ``w``, i.e. ``Σ_k (x_k − zero)·w_nk = Σ_k x_k·w_nk − zero·Σ_k w_nk``.

    An input with a zero point (``requant.asymmetric_grid``) is multiplied as
    it is stored and this constant goes into the int32 bias, once, offline.
    """
    return -int(zero) * as_int64(w).sum(dim=1)


def unsigned_shift_compensation(w: torch.Tensor) -> torch.Tensor:
    """``−128·Σ_k w[n, k]`` per output channel (int64 ``[N]``): ``zero_point_correction(w, 128)``.

    x86 VNNI multiplies *unsigned* 8-bit by signed 8-bit values, so the
    backends feed ``x + 128`` (``[0, 255]``) instead of the int8 ``x`` and add
    this constant: ``Σ_k (x_k + 128)·w_nk − 128·Σ_k w_nk = Σ_k x_k·w_nk``
    exactly. The shifted accumulator stays in int32 for ``K·255·128 < 2**31``,
    i.e. ``K < 65 793``.
    """
    return zero_point_correction(w, UNSIGNED_SHIFT)


def int_linear_unsigned(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``int_linear`` computed the VNNI way: ``(x + 128) @ wᵀ + compensation (+ bias)``; equal to it exactly."""
    acc = int_matmul(as_int64(x) + UNSIGNED_SHIFT, as_int64(w).transpose(0, 1)) + unsigned_shift_compensation(w)
    return acc if bias is None else acc + as_int64(bias)


MAX_INT32_REDUCTION = INT32_MAX // (255 * 128)     # 65 793: the VNNI form's bound, the narrowest any backend uses


def check_accumulator_fits(k: int, what: str = "a GEMM") -> None:
    """Refuse a reduction length whose int32 accumulator could overflow in some backend.

    The narrowest accumulator is the x86 VNNI form (``int_linear_unsigned``):
    ``Σ_k (x_k + 128)·w_k`` with ``x + 128`` in ``[0, 255]`` and ``|w| <= 128``,
    so ``|acc| <= K·255·128 <= 2**31 − 1`` needs ``K <= 65 793``
    (``MAX_INT32_REDUCTION``). An input with a zero point has ``|x − z| <= 255``
    and the same bound.
    """
    if k > MAX_INT32_REDUCTION:
        raise ValueError(f"{what} reduces over K = {k} int8 products; the int32 accumulator the backends use "
                         f"(x86 VNNI: (x+128)·w, up to K·255·128) holds K <= {MAX_INT32_REDUCTION}; "
                         "keep this layer's input at 16 bits (QuantConfig(int16=...)), which accumulates in int64")


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, (H/P)·(W/P), C·P·P]`` non-overlapping patches, row-major.

    A pure reordering (any dtype); the float reference forward uses it too.
    """
    b, c, h, w = images.shape
    if h % patch or w % patch:
        near = lambda v: f"{max(patch, v // patch * patch)} or {(v // patch + 1) * patch}"     # noqa: E731
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}; resize or crop the "
                         f"images to a multiple (height {near(h)}, width {near(w)}), and quantize for that size")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)
