"""The float ONNX compiled by TVM for this CPU: the ``tvm_fp32`` baseline of ``--target llvm``.

TVM 0.27 has no CPU schedules for float models (its default lowering is
single-threaded scalar loops, about 5 s per DeiT-S image), so this gives the
float graph the same schedule effort intvit's integer graph gets from
``tvm_backend.schedules``:

1. ``tvm.relax.frontend.onnx.from_onnx`` with the weights as constants
   (``tvm_float.import_float_onnx``);
2. ``relax.transform.FastMathTransform``: TVM's own vectorisable
   approximations of ``exp`` and ``erf`` (softmax, exact GELU) in place of
   scalar libm calls — what a float CPU runtime uses too;
3. ``patchify_convolutions``: the patch-embedding convolution (stride = kernel,
   no padding) becomes patchify + ``matmul``, as in intvit's own graph
   (``quantize.onnx_export``'s ``patchify``), so it is a GEMM, not a
   7-deep convolution loop nest;
4. ``pack_constant_weights``: every ``matmul`` by a constant weight reads it
   packed offline into 16-column panels, ``[N/16, K, 16]`` — intvit's int8
   weight layout (``gemm.pack_linear_weight``) with one-element groups — so
   a register tile streams its weights contiguously;
5. legalize, fuse, and per fused function: ``schedule_float_gemm`` for a
   function built around a ``matmul`` (the register tile of intvit's GEMMs,
   ``MR`` rows × ``NR`` 16-lane float32 vectors from ``gemm.linear_tile``,
   one fused parallel loop over tiles, the bias/GELU/residual epilogue
   computed on the tile while it is in registers), else intvit's
   ``schedule_rowwise`` (LayerNorm, softmax, layout changes: parallel over
   rows, reductions computed inside the row loop).

Only loops and weight layouts change (plus zero padding of output widths): the
results equal ONNX Runtime's float ones up to float32 rounding and the
fast-math approximations (the tests check 1e-4).
"""
from __future__ import annotations

MATMUL_BLOCK = "matmul"         # the block ``LegalizeOps`` makes of ``relax.matmul``, and ``packed_matmul_te``'s


def patchify_convolutions(mod):
    """Rewrite every ``conv2d`` whose stride equals its kernel (no padding, dilation 1, one group, NCHW/OIHW) as

        y[b, o, p, q] = Σ_{c,u,v} x[b, c, p·kh + u, q·kw + v] · w[o, c, u, v]
                      = (patches(x) @ reshape(w, [O, C·kh·kw])ᵀ)[b, p·(W/kw) + q, o]

    with ``patches`` a reshape/transpose/reshape and the result transposed back
    to NCHW (so the rest of the graph is unchanged). Other convolutions are left alone.
    """
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    pattern = is_op("relax.nn.conv2d")(wildcard(), is_const())

    def rewrite(expr, matches):
        call = matches[pattern]
        attrs, (data, weight) = call.attrs, call.args
        b, c, h, w = (int(d) for d in data.ty.shape)
        o, ci, kh, kw = (int(d) for d in weight.ty.shape)
        if not ([int(s) for s in attrs.strides] == [kh, kw] and all(int(p) == 0 for p in attrs.padding)
                and all(int(d) == 1 for d in attrs.dilation) and int(attrs.groups) == 1 and ci == c
                and (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) == ("NCHW", "OIHW", "NCHW")
                and h % kh == 0 and w % kw == 0):
            return expr
        gh, gw, k = h // kh, w // kw, c * kh * kw
        op = relax.op
        patches = op.reshape(op.permute_dims(op.reshape(data, [b, c, gh, kh, gw, kw]), [0, 2, 4, 1, 3, 5]),
                             [b, gh * gw, k])
        y = op.matmul(patches, op.permute_dims(op.reshape(weight, [o, k]), [1, 0]))   # weight folded later
        return op.reshape(op.permute_dims(y, [0, 2, 1]), [b, o, gh, gw])

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod


def _int64_shape(shape) -> list:
    """TVM's legalized kernels index with int64; FuseTIR refuses to mix in int32-shaped TE buffers."""
    from tvm import tirx
    return [tirx.const(int(d), "int64") for d in shape]


def packed_matmul_te(x, wp):
    """``y[..., r, j] = Σ_k x[..., r, k] · Wp[j/16, k, j%16, 0]`` for ``j < Np`` (``Wp`` from
    ``gemm.pack_linear_weight(w, nr, group=1)``; columns past the weight's own ``N`` are zero)."""
    from tvm import te, tirx

    from ..tvm_backend.x86 import LANES
    *lead, rows, k = (int(d) for d in x.shape)
    np_ = int(wp.shape[0]) * LANES
    red = te.reduce_axis((tirx.const(0, "int64"), tirx.const(k, "int64")), name="k")
    return te.compute(_int64_shape([*lead, rows, np_]), lambda *i: te.sum(
        x(*i[:-1], red) * wp(i[-1] // LANES, red, i[-1] % LANES, 0), axis=red), name=MATMUL_BLOCK)


def pack_constant_weights(mod):
    """Rewrite ``matmul(x, W)`` with a constant float ``W [K, N]`` as ``packed_matmul_te`` on
    ``pack_linear_weight(W)`` (then a slice back to ``N`` columns when the panels pad it)."""
    import numpy as np
    from tvm import relax, te
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    from ..tvm_backend.gemm import linear_tile, pack_linear_weight
    pattern = is_op("relax.matmul")(wildcard(), is_const())
    builder = relax.BlockBuilder(mod)         # holds the new kernels, typed for call_tir

    def rewrite(expr, matches):
        call = matches[pattern]
        x, weight = call.args
        w = weight.value.numpy()
        if w.ndim != 2 or w.dtype != np.float32 or str(x.ty.dtype) != "float32" or len(x.ty.shape) < 2:
            return expr
        n = w.shape[1]
        wp = pack_linear_weight(w, linear_tile(n)[1], group=1)
        x_ph = te.placeholder(_int64_shape(x.ty.shape), "float32", name="x")
        wp_ph = te.placeholder(_int64_shape(wp.shape), "float32", name="wp")
        out = packed_matmul_te(x_ph, wp_ph)
        gv = builder.add_func(te.create_prim_func([x_ph, wp_ph, out]).without_attr("global_symbol"), "packed_matmul")
        y = relax.call_tir(gv, (x, relax.const(wp)), relax.TensorType([int(d) for d in out.shape], "float32"))
        return y if int(out.shape[-1]) == n else relax.op.strided_slice(y, axes=[-1], begin=[0], end=[n])

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            builder.update_func(gv, rewrite_call(pattern, rewrite, func))
    return builder.get()


def schedule_float_gemm(func):
    """Schedule a fused function around one ``matmul`` block ``C[..., i, j] = Σ_k A[..., i, k]·B[..., k, j]``.

    Producers in front of the matmul (transposes of its operands) are
    inlined. When the output width ``n`` is not a multiple of the register
    tile's ``NR·16`` columns (197 keys in ``Q·Kᵀ``; constant weights are
    already padded by their packing), the iteration domain is padded with
    ``pad_einsum`` — a predicated 16-lane loop would be scalarised — and the
    padded operand copy gets its own parallel loop. The epilogue chain after the matmul is inlined into its
    last block, which is computed per register tile.
    """
    from tvm import s_tir

    from ..tvm_backend.gemm import linear_tile
    from ..tvm_backend.schedules import SCHEDULED_ATTR, block_names, parallel_rows
    from ..tvm_backend.x86 import LANES

    sch = s_tir.Schedule(func)
    names = block_names(sch)
    for name in names[:names.index(MATMUL_BLOCK)]:
        sch.compute_inline(sch.get_sblock(name))
    mm = sch.get_sblock(MATMUL_BLOCK)
    *lead, i, j, k = sch.get_loops(mm)
    n = int(sch.get(j).extent)
    mr, nr = linear_tile(n)
    if n % (nr * LANES):
        sch.pad_einsum(mm, [1] * (len(lead) + 1) + [nr * LANES, 1])
        *lead, i, j, k = sch.get_loops(mm)
    io, ii = sch.split(i, [None, mr])
    jo, ji, jv = sch.split(j, [None, nr, LANES])
    sch.reorder(jo, io, k, ii, ji, jv)
    names = block_names(sch)
    at = names.index(MATMUL_BLOCK)
    before, after = names[:at], names[at + 1:]
    for name in after[:-1]:
        sch.compute_inline(sch.get_sblock(name))
    if after:
        sch.reverse_compute_at(sch.get_sblock(after[-1]), io)
    sch.parallel(sch.fuse(*lead, jo, io))
    for name in before:                       # pad_einsum's padded operand copies
        parallel_rows(sch, sch.get_sblock(name))
    sch.vectorize(jv)                         # before decompose_reduction, as in schedules.apply_gemm_schedule
    init = sch.decompose_reduction(mm, k)
    sch.unroll(ii)
    sch.unroll(ji)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def schedule_float_module(mod):
    """Schedule every PrimFunc of a fused float module: GEMM functions with ``schedule_float_gemm``,
    the rest with intvit's ``schedule_rowwise``."""
    import tvm

    from ..tvm_backend.schedules import block_names, schedule_rowwise
    scheduled = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            gemm = MATMUL_BLOCK in block_names(tvm.s_tir.Schedule(func))
            scheduled[gv] = schedule_float_gemm(func) if gemm else schedule_rowwise(func)
    for gv, func in scheduled.items():
        mod[gv] = func
    return mod


def lower_float_cpu(mod, target):
    """Steps 2–5 of the module docstring on an imported float module, inside ``target``."""
    from tvm import relax
    with target:
        mod = patchify_convolutions(relax.transform.FastMathTransform()(mod))
        mod = pack_constant_weights(relax.transform.FoldConstant()(mod))
        for transform in (relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                          relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()):
            mod = transform(mod)
    return schedule_float_module(mod)


def build_float_cpu(path: str, input_name: str, shape: list[int]):
    """Compile the float ONNX at ``path`` for this CPU at the fixed input ``shape``; returns the executable."""
    import tvm

    from ..tvm_backend.build import make_target, resolve_target
    from .tvm_float import import_float_onnx
    target = make_target(resolve_target("llvm"))
    return tvm.compile(lower_float_cpu(import_float_onnx(path, input_name, shape), target), target=target)
