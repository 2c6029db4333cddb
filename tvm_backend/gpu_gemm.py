"""TE definitions of the integer GEMMs in the layout the CUDA schedule wants.

``tiled_gemm_te`` computes ``y = epilogue(a @ bᵀ + bias)`` for an activation
``a`` ``[..., rows, K]`` and a right operand ``b`` ``[..., N, K]`` (``"nk"``:
a linear layer's weight, attention's keys) or ``[..., K, N]`` (``"kn"``: the
values of ``A·V``):

    lhs[r, k] = a[min(r, rows−1), k]      (0 for k ≥ K)          int8 or int16
    rhs[j, k] = b[min(j, N−1), k]         (0 for k ≥ K)
    acc[r, j] = Σ_k lhs[r, k] · rhs[j, k]                          int32
    y[r, j]   = epilogue(acc[r, j] + bias[j])                      r < rows, j < N

With one weight shared by every row (a linear layer: ``b`` a constant
``[Np, Kp]``), ``a``'s leading axes are folded into its rows: ``[B, T, K]``
is one GEMM of ``B·T`` rows (``a[unravel(min(r, B·T−1))]``), padded once to
the tile rather than every ``T`` (197 tokens pad to 256, 8·197 to 1600), and
the output reads ``acc[b·T + t, j]`` back (schedules fold the output block's
loops the same way: ``gemm.fold_rows_map``).

Both operands are padded to whole ``TILE_M × TILE_N × TILE_K`` tiles (the
clamped rows/columns are computed and never stored; the zero K tail adds
nothing), so the schedule needs no predicates inside the tile, which the
``dp4a`` tensorization requires. With two int8 operands the reduction is
exactly the ``__dp4a`` form (``cuda_intrin.DP4A``): signed bytes, no offset
shift or Σw compensation (unlike the x86 ``vpdpbusd`` path). The int32
accumulator cannot overflow: ``|Σ| ≤ K·2**14`` for int8 × int8 (K < 2**17),
and for A·V ``|Σ_t p_t·v_t| ≤ 128·Σ_t p_t < 2**22`` because a Shiftmax row
sums to less than ``2**(b−1)`` (``ops.shiftmax``), the CPU ``vpdpwssd`` bound.
"""
from __future__ import annotations

import numpy as np

from contextvars import ContextVar

from .gemm import ACC_BLOCK, OUT_BLOCK, ceil_to, flat_row_index, import_flag, unravel_row

TILE_M, TILE_N, TILE_K = 64, 64, 32      # one thread block's output tile and K step (gpu_schedules)
LHS_BLOCK = "gemm_lhs"
RHS_BLOCK = "gemm_rhs"


def pad_weight(w_kn: np.ndarray) -> np.ndarray:
    """A linear layer's ``[K, N]`` weight as the ``[Np, Kp]`` rhs (transposed, zero-padded to whole tiles)."""
    k, n = w_kn.shape
    out = np.zeros((ceil_to(n, TILE_N), ceil_to(k, TILE_K)), w_kn.dtype)
    out[:n, :k] = w_kn.T
    return out


def _padded(t, rows_p: int, k_p: int, layout: str, name: str):
    """``[..., rows_p, k_p]``: ``t`` (``[..., R, K]`` for ``"nk"``, ``[..., K, R]`` for ``"kn"``), rows clamped, K zero-padded."""
    from tvm import te
    from tvm import tirx as tir
    *lead, d0, d1 = (int(d) for d in t.shape)
    r_n, k = (d0, d1) if layout == "nk" else (d1, d0)

    def f(*i):
        r, kk = tir.min(i[-2], r_n - 1), i[-1]
        v = t(*i[:-2], r, tir.min(kk, k - 1)) if layout == "nk" else t(*i[:-2], tir.min(kk, k - 1), r)
        return v if k_p == k else tir.Select(kk < k, v, tir.const(0, t.dtype))
    return te.compute((*lead, rows_p, k_p), f, name=name)


def _folded_rows(a, k_p: int):
    """``[ceil(R, TILE_M), k_p]``: ``a`` (``[..., rows, K]``) with its leading axes folded into ``R = Π lead ·
    rows`` rows, the rows clamped (``a[min(r, R−1)]``) and K zero-padded."""
    from tvm import te
    from tvm import tirx as tir
    *lead, rows, k = (int(d) for d in a.shape)
    dims = (*lead, rows)
    total = int(np.prod(dims))

    def f(r, kk):
        v = a(*unravel_row(tir.min(r, total - 1), dims), tir.min(kk, k - 1))
        return v if k_p == k else tir.Select(kk < k, v, tir.const(0, a.dtype))
    return te.compute((ceil_to(total, TILE_M), k_p), f, name=LHS_BLOCK)


def tiled_gemm_te(a, b, bias=None, layout: str = "nk", epilogue=None, out_dtype="int64", n: int | None = None,
                  acc_dtype: str = "int32"):
    """``epilogue(a @ bᵀ + bias)`` (``layout="nk"``) or ``epilogue(a @ b + bias)`` (``"kn"``).

    ``b`` is either shared by every row block (a constant, already
    ``pad_weight``-ed: ``[Np, Kp]``, give the true width ``n``) or batched like
    ``a``. ``bias`` is int64 ``[N]`` or None; ``epilogue(z, idx) -> PrimExpr``
    maps the int64 ``acc + bias`` at output index ``idx`` to the output value. ``acc_dtype="int64"``
    is for 16-bit activations × int8 weights (``quantize.layout``: ``|acc| <= K·2**22``).
    """
    from tvm import te

    *lead, rows, k = (int(d) for d in a.shape)
    prepadded = n is not None
    if prepadded:
        np_, kp = (int(d) for d in b.shape)
    else:
        n = int(b.shape[-2] if layout == "nk" else b.shape[-1])
        np_, kp = ceil_to(n, TILE_N), ceil_to(k, TILE_K)
    fold = prepadded and bool(lead)      # one weight for every row: the leading axes become rows
    if fold:
        lhs = _folded_rows(a, kp)
        acc_lead, dims = [], (*lead, rows)
    else:
        lhs = _padded(a, ceil_to(rows, TILE_M), kp, "nk", LHS_BLOCK)
        acc_lead = lead
    rhs = b if prepadded else _padded(b, np_, kp, layout, RHS_BLOCK)
    b_lead = len(rhs.shape) - 2
    red = te.reduce_axis((0, kp), name="k")
    acc = te.compute((*acc_lead, int(lhs.shape[-2]), np_), lambda *i: te.sum(
        lhs(*i[:-1], red).astype(acc_dtype) * rhs(*i[:b_lead], i[-1], red).astype(acc_dtype), axis=red),
        name=ACC_BLOCK)

    def out(*i):
        z = (acc(flat_row_index(i[:-1], dims), i[-1]) if fold else acc(*i)).astype("int64")
        if bias is not None:
            z = z + bias(i[-1])
        return (z if epilogue is None else epilogue(z, i)).astype(out_dtype)
    return te.compute((*lead, rows, n), out, name=OUT_BLOCK)


_IMMA_LAYOUT: ContextVar[bool] = ContextVar("intvit_imma_layout", default=False)
PROBS_LIMIT = 1 << 15                 # split_probs_tiled_te: probabilities in [0, 2**15), two signed bytes


def imma_layout(enabled: bool = True):
    """Within this context the importer emits ``A·V`` as ``split_probs_tiled_te`` (int8 × int8, for the
    tensor-core schedule; ``build.compile_onnx`` sets it for CUDA archs with IMMA)."""
    return import_flag(_IMMA_LAYOUT, enabled)


def imma_layout_active() -> bool:
    return _IMMA_LAYOUT.get()


def split_probs_tiled_te(p, v, epilogue=None, out_dtype="int64"):
    """Attention's ``A·V`` as one int8 × int8 GEMM, for tensor cores: ``epilogue(Σ_k p[..., r, k]·v[..., k, j])``
    for probabilities ``p`` in ``[0, 2**15)`` (int16-stored) and int8 values ``v`` ``[..., K, N]``.

    Each probability is split into two signed bytes, ``p = 256·hi + lo`` with
    ``hi = p >> 8`` in ``[0, 127]`` and ``lo = (p & 255)`` in ``[0, 255]``, stored
    as ``lo − 128``. The GEMM has two rows per output row (``2r``: the high
    bytes, ``2r + 1``: the low ones, so both land in the same 64-row tile) and
    three K chunks of ``Kp`` (``K`` padded to ``TILE_K``), so that the ``+128`` of
    the low bytes comes out of the same products::

        lhs[2r,   (k, k', k'')] = (hi_k, 0, 0)          rhs[j, (k, k', k'')] = (v_kj, v_kj, v_kj)
        lhs[2r+1, (k, k', k'')] = (lo_k − 128, 64, 64)  (zero past K)

        acc[2r]   = Σ_k hi_k·v_kj
        acc[2r+1] = Σ_k (lo_k − 128)·v_kj + 64·Σ_k v_kj + 64·Σ_k v_kj = Σ_k lo_k·v_kj
        y[r, j]   = epilogue(256·acc[2r] + acc[2r+1])                      (exact)

    Each accumulator is at most ``3·K·128·128`` in magnitude: int32 for K below 43,690.
    """
    from tvm import te
    from tvm import tirx as tir

    *lead, rows, k = (int(d) for d in p.shape)
    n = int(v.shape[-1])
    kp, np_ = ceil_to(k, TILE_K), ceil_to(n, TILE_N)
    rows2 = ceil_to(2 * rows, TILE_M)
    i32, i8 = "int32", "int8"

    def lhs_value(*i):
        r2, kk = i[-2], i[-1]
        chunk, kc = tir.floordiv(kk, kp), tir.floormod(kk, kp)
        pv = p(*i[:-2], tir.min(tir.floordiv(r2, 2), rows - 1), tir.min(kc, k - 1)).astype(i32)
        low = tir.floormod(r2, 2) == 1
        value = tir.Select(chunk == 0, tir.Select(low, (pv & 255) - 128, pv >> 8),
                           tir.Select(low, tir.const(64, i32), tir.const(0, i32)))
        return tir.Select(kc < k, value, tir.const(0, i32)).astype(i8)
    lhs = te.compute((*lead, rows2, 3 * kp), lhs_value, name=LHS_BLOCK)

    def rhs_value(*i):
        j, kc = i[-2], tir.floormod(i[-1], kp)
        value = v(*i[:-2], tir.min(kc, k - 1), tir.min(j, n - 1))
        return tir.Select(tir.all(j < n, kc < k), value, tir.const(0, v.dtype)).astype(i8)
    rhs = te.compute((*lead, np_, 3 * kp), rhs_value, name=RHS_BLOCK)
    red = te.reduce_axis((0, 3 * kp), name="k")
    acc = te.compute((*lead, rows2, np_), lambda *i: te.sum(
        lhs(*i[:-1], red).astype(i32) * rhs(*i[:-2], i[-1], red).astype(i32), axis=red), name=ACC_BLOCK)

    def out(*i):
        z = acc(*i[:-2], 2 * i[-2], i[-1]).astype("int64") * 256 + acc(*i[:-2], 2 * i[-2] + 1, i[-1]).astype("int64")
        return (z if epilogue is None else epilogue(z, i)).astype(out_dtype)
    return te.compute((*lead, rows, n), out, name=OUT_BLOCK)
