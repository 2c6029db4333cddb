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

from .gemm import ACC_BLOCK, OUT_BLOCK, ceil_to, flat_row_index, unravel_row

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
