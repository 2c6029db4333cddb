"""TE kernels for the ``intvit`` ONNX domain ops, following ``intvit.ops`` step by step.

Each function takes ``te.Tensor`` arguments (the op's data input and its
constant inputs, as the ONNX node has them) and returns one ``te.Tensor``;
the importer emits each as its own PrimFunc (``BlockBuilder.emit_te``), so
every I-ViT operator is one kernel in the compiled module. Two import-time
rewrites of the constants (``importer._kernel_args``): a constant whose
elements are all equal arrives as a Python int (a compile-time constant), and
a dyadic pair's ``2**e`` arrives as the shift ``e``.

TIR semantics used: ``>>`` on signed integers is an arithmetic shift (floor),
``tir.floordiv`` is floor division, ``tir.Select`` / ``max`` / ``min`` are exact on
int64. The exact integer square root runs as 32 per-row stages (one result
bit each), as ``ops.isqrt``.
"""
from __future__ import annotations

from tvm import te
from tvm import tirx as tir

from ..ops.layernorm import ISQRT_STEPS
from ..ops.nonlinear import NORM_NUMERATOR

I64 = "int64"
MATERIALIZE = "intvit.materialize"   # block annotation: keep this stage's row in a buffer (schedules.py)


def _c(v):
    return tir.const(int(v), I64)


def _bcast(t, idx):
    """Index ``t`` with numpy-style broadcasting against an output index ``idx``.

    A Python int (a constant the importer folded, see ``importer``) becomes a
    compile-time constant, so LLVM can strength-reduce divisions by it.
    """
    if isinstance(t, int):
        return _c(t)
    shape = list(t.shape)
    offset = len(idx) - len(shape)
    return _wide(t, [0 if int(dim) == 1 else idx[offset + i] for i, dim in enumerate(shape)])


def _wide(t: te.Tensor, idx):
    """``t[idx]`` as int64: data may be stored narrower (``importer`` keeps 8-bit activations in int8)."""
    v = t(*idx)
    return v if t.dtype == I64 else v.astype(I64)


def _scalar(t):
    return _c(t) if isinstance(t, int) else t()


def _ew(shape, fn, name):
    return te.compute(shape, lambda *i: fn(i), name=name)


def floordiv_te(x, d):
    return _ew(x.shape, lambda i: tir.floordiv(_bcast(x, i), _bcast(d, i)), "floordiv")


def _saturated(v, idx, lo, hi):
    """``ops.saturate`` of one element ``v`` at output index ``idx``: ``min(max(v, lo), hi)``."""
    return tir.max(tir.min(v, _bcast(hi, idx)), _bcast(lo, idx))


def saturate_te(x, lo, hi, out_dtype=I64):
    """``ops.saturate``; ``out_dtype`` may be any type holding ``[lo, hi]`` (the importer stores the 16-bit
    residual stream as int16)."""
    return _ew(x.shape, lambda i: _saturated(_bcast(x, i), i, lo, hi).astype(out_dtype), "saturate")


def rescale_value(z, idx, m, e, half):
    """``ops.rescale`` of one element ``z`` at output index ``idx``: ``(z·m + 2**(e−1)) >> e``.

    The ONNX node carries ``2**e``; the importer hands the kernel ``e`` so the
    floor division is an arithmetic shift (``ops.shift_right_floor``).
    """
    return (z * _bcast(m, idx) + _bcast(half, idx)) >> _bcast(e, idx)


def requant_value(z, idx, m, e, half, offset, lo, hi):
    """``ops.requantize`` of one element: ``saturate((z·m + offset + 2**(e−1)) >> e)``."""
    return _saturated((z * _bcast(m, idx) + _bcast(offset, idx) + _bcast(half, idx)) >> _bcast(e, idx), idx, lo, hi)


def rescale_te(z, *consts):
    return _ew(z.shape, lambda i: rescale_value(_bcast(z, i), i, *consts), "rescale")


def requant_te(z, *consts):
    return _ew(z.shape, lambda i: requant_value(_bcast(z, i), i, *consts), "requant")


def _shift_exp(x, x0, nx0, n):
    """``ops.shift_exp`` on one element ``x <= 0`` (int64, or int32 when ``|x| < 2**30``).

    With compile-time constants (Python ints) the tail runs in 32 bits, which
    LLVM vectorizes (a 64-bit division by a constant it cannot):
    ``ops.check_shiftexp_constants`` guarantees ``−x0·2**n <= 2**31 − 1``, so
    after the clamp ``x ∈ [n·x0, 0]`` fits int32, ``q = floor(x / x0) ∈ [0, n]``,
    ``r − 2·x0 ∈ (−x0, −2·x0]`` and ``(r − 2·x0)·2**(n−q) <= 2·(2**31 − 1)``
    fits uint32; halving it gives the int32 result.
    """
    x = x + (x >> 1) - (x >> 4)
    if not all(isinstance(c, int) for c in (x0, nx0, n)):
        x = tir.max(x, _scalar(nx0))
        q = tir.floordiv(-x, -_scalar(x0))
        r = x - q * _scalar(x0)
        return ((r - 2 * _scalar(x0)) << (_scalar(n) - q)) >> 1
    xc = tir.max(x, tir.const(nx0, str(x.ty.dtype))).astype("int32")
    # −xc ≥ 0 and −x0 > 0: the floor quotient is the unsigned one, one multiply-high by a constant (a signed
    # floor division costs LLVM two and a sign correction)
    q = tir.truncdiv((-xc).astype("uint32"), tir.const(-x0, "uint32")).astype("int32")
    r = xc - q * tir.const(x0, "int32")
    v = (r - tir.const(2 * x0, "int32")).astype("uint32") << (tir.const(n, "int32") - q).astype("uint32")
    return (v >> tir.const(1, "uint32")).astype(I64)


def _row_reduce(shape, fn, name, init_max=False):
    """``max`` or ``sum`` of ``fn(*row, k)`` over the last axis of ``shape``, kept as ``[..., 1]``."""
    *lead, cols = shape
    k = te.reduce_axis((0, cols), name="k")
    if init_max:
        return te.compute((*lead, 1), lambda *i: te.max(fn(*i[:-1], k), axis=k), name=name)
    return te.compute((*lead, 1), lambda *i: te.sum(fn(*i[:-1], k), axis=k), name=name)


def shiftmax_te(x, x0, nx0, n, outdiv, out_dtype=I64, cols=None):
    """``ops.shiftmax`` along the last axis (``out_dtype`` may be any type holding ``[0, 2**(b−1))``).

    ``cols``: the row length when ``x`` is wider (a ``Q·Kᵀ`` output computed on its padding columns,
    ``import_gemm.GemmEmitter.column_padded``): only ``x[..., :cols]`` is read, the output has ``cols``.
    """
    outdiv = _scalar(outdiv)
    shape = (*x.shape[:-1], x.shape[-1] if cols is None else cols)
    # 16-bit logits (the usual case): x − max ∈ [−2**16, 0] and every ShiftExp step fits int32
    work = "int32" if x.dtype in ("int8", "int16") and isinstance(nx0, int) else I64
    xmax = _row_reduce(shape, lambda *i: x(*i).astype(work), "rowmax", init_max=True)
    # 0 <= e <= 2**n < 2**31: an int32 row buffer (half the bytes; a 197-token row fits the stack)
    e = te.compute(shape, lambda *i: _shift_exp(x(*i).astype(work) - xmax(*i[:-1], 0), x0, nx0, n)
                   .astype("int32"), name="shiftexp", attrs={MATERIALIZE: 1})
    total = _row_reduce(shape, lambda *i: e(*i).astype(I64), "rowsum")
    factor = te.compute(total.shape, lambda *i: tir.floordiv(_c(NORM_NUMERATOR), total(*i)), name="row_factor")
    return te.compute(shape, lambda *i: tir.floordiv(e(*i).astype(I64) * factor(*i[:-1], 0), outdiv)
                      .astype(out_dtype), name="shiftmax")


def shift_gelu_te(x, x0, nx0, n, outdiv):
    """``ops.shift_gelu`` elementwise (reference point ``m = max(x, 0)``)."""
    outdiv = _scalar(outdiv)

    def f(*i):
        v = _wide(x, i)
        m = tir.max(v, _c(0))
        e1 = _shift_exp(v - m, x0, nx0, n)
        e2 = _shift_exp(-m, x0, nx0, n)
        return v * tir.floordiv(e1 * tir.floordiv(_c(NORM_NUMERATOR), e1 + e2), outdiv)
    return te.compute(x.shape, f, name="shiftgelu")


def _isqrt_step(v, res, b, step):
    """One digit of ``ops.isqrt``: if v >= res + b: v -= res + b; res = res/2 + b else res = res/2."""
    take = lambda *i: v(*i) >= res(*i) + b  # noqa: E731
    v_next = te.compute(v.shape, lambda *i: tir.Select(take(*i), v(*i) - (res(*i) + b), v(*i)),
                        name=f"isqrt_v{step}")
    r_next = te.compute(v.shape, lambda *i: tir.Select(take(*i), (res(*i) >> 1) + b, res(*i) >> 1),
                        name=f"isqrt_r{step}")
    return v_next, r_next


def int_layernorm_te(x, epilogue=None, out_dtype=I64):
    """``ops.int_layernorm`` along the last axis; output at scale √D / 2**30. ``epilogue(v, idx)`` (the
    requant that follows it in the graph, fused by the importer) maps each output before it is stored as
    ``out_dtype``."""
    *lead, d = x.shape
    total = _row_reduce(x.shape, lambda *i: _wide(x, i), "rowsum")
    mean = te.compute(total.shape, lambda *i: tir.floordiv(total(*i) + d // 2, d), name="mean")
    y = te.compute(x.shape, lambda *i: _wide(x, i) - mean(*i[:-1], 0), name="centred")
    v = _row_reduce(y.shape, lambda *i: y(*i) * y(*i), "variance")
    res = te.compute(v.shape, lambda *i: _c(0), name="isqrt_init")
    bit = 1 << 62
    for step in range(ISQRT_STEPS):                     # ops.isqrt: one result bit per stage
        v, res = _isqrt_step(v, res, _c(bit), step)
        bit >>= 2
    def out(*i):
        v = tir.floordiv(y(*i) * tir.floordiv(_c(2**31 - 1), tir.max(res(*i[:-1], 0), _c(1))), _c(2))
        return (v if epilogue is None else epilogue(v, i)).astype(out_dtype)
    return te.compute(x.shape, out, name="ilayernorm")


EPILOGUE_VALUES = {"Requant": requant_value, "Rescale": rescale_value}   # fusable into a GEMM's output stage


def residual_value(branch, h, idx, skip_consts, lo, hi):
    """``ops.residual_add`` of one element, in a GEMM's epilogue: the rescaled ``branch`` (the GEMM's own
    value) plus the skip stream ``h[idx]`` rescaled by ``skip_consts``, saturated to ``[lo, hi]``."""
    return _saturated(branch + rescale_value(_wide(h, idx), idx, *skip_consts), idx, lo, hi)

def lookup_te(x, table, lo):
    """``table[x − lo]`` (``ops.lookup``); the importer fuses a lookup after a GEMM into its epilogue instead."""
    return _ew(x.shape, lambda i: _wide(table, [x(*i).astype("int32") - lo]), "lookup")


DOMAIN_KERNELS = {
    "FloorDiv": floordiv_te,
    "Saturate": saturate_te,
    "Rescale": rescale_te,
    "Requant": requant_te,
    "Shiftmax": shiftmax_te,
    "ShiftGELU": shift_gelu_te,
    "IntLayerNorm": int_layernorm_te,
    "Lookup": lookup_te,
}
