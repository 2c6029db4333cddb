"""CUDA schedules for the fused PrimFuncs of an intvit module.

Three schedules, chosen per PrimFunc by its blocks (as ``schedules`` does for
the CPU):

* **GEMM on tensor cores** (``imma``): a ``gpu_gemm.tiled_gemm_te`` kernel
  with two int8 operands (the linear layers, ``Q·Kᵀ``) on sm_80 and newer:
  ``ldmatrix`` + ``mma.sync.m16n8k32`` s8 × s8 → s32, epilogue on the
  block's int32 tile in shared memory.
* **GEMM on ``dp4a``** (the other ``tiled_gemm_te`` kernels, and every one
  below sm_80): one thread block per
  ``TILE_M × TILE_N`` output tile (and batch item/head), 16 × 16 threads each
  owning a ``THREAD_M × THREAD_N`` accumulator tile in registers. Per
  ``TILE_K`` step, the block stages the operand tiles in shared memory (the
  row clamping and K padding happen in that copy), then every thread runs
  ``TILE_K/4 · THREAD_M · THREAD_N`` ``__dp4a`` (``cuda_intrin``) when both
  operands are int8, int32 multiply-adds otherwise (A·V's 16-bit
  probabilities). The bias + requant (+ GELU table) epilogue runs on the
  register tile.
* **Row-wise** (everything else): one thread block per output row; the row's
  elementwise producers are inlined, its reductions (row max/sum, LayerNorm's
  sums) are cross-thread reductions into shared memory, and per-row scalars
  (the mean, the 32 isqrt stages, Shiftmax's factor) are computed by every
  thread in registers. Anything not aligned with the output's rows becomes
  its own flat elementwise launch.

Like the CPU schedules these only reorder, tile, bind and stage loops; the
arithmetic of the TE definitions is untouched.
"""
from __future__ import annotations

from .cuda_intrin import GROUP, register_dp4a
from .gemm import ACC_BLOCK, OUT_BLOCK
from .gpu_gemm import LHS_BLOCK, RHS_BLOCK, TILE_K, TILE_M, TILE_N
from .schedule_blocks import SCHEDULED_ATTR, block_names, fold_output_rows, is_reduction, _numel, _spatial_prefix

THREADS_Y, THREADS_X = 16, 16                                   # GEMM thread block
THREAD_M, THREAD_N = TILE_M // THREADS_Y, TILE_N // THREADS_X   # each thread's register tile
FLAT_THREADS = 256                                              # elementwise launches


def _operand_dtype(sch, block, index: int) -> str:
    return str(sch.get(block).reads[index].source.dtype)


def schedule_gemm_gpu(func):
    """Tile a ``tiled_gemm_te`` kernel over thread blocks and threads; ``__dp4a`` on int8 operands."""
    from tvm import s_tir
    sch = s_tir.Schedule(func)
    acc, out = sch.get_sblock(ACC_BLOCK), sch.get_sblock(OUT_BLOCK)
    int8 = all(_operand_dtype(sch, acc, i) == "int8" for i in (0, 1))
    *lead, i, j, k = sch.get_loops(acc)
    # a thread's rows/columns are strided by the thread count, so a warp's loads and stores are
    # contiguous (and, with the padded shared rows below, free of bank conflicts)
    i0, i2, i1 = sch.split(i, [None, THREAD_M, THREADS_Y])
    j0, j2, j1 = sch.split(j, [None, THREAD_N, THREADS_X])
    k0, k1, k2 = sch.split(k, [None, TILE_K // GROUP, GROUP])
    sch.reorder(i0, j0, i1, j1, k0, k1, i2, j2, k2)
    sch.bind(sch.fuse(*lead, i0, j0), "blockIdx.x")
    sch.bind(i1, "threadIdx.y")
    sch.bind(j1, "threadIdx.x")
    names = block_names(sch)
    for index, producer in ((0, LHS_BLOCK), (1, RHS_BLOCK)):
        staged = sch.cache_read(acc, index, "shared")
        sch.compute_at(staged, k0)
        # rows of TILE_K + 4 bytes: the 16 rows a half-warp reads in one step fall in 16 distinct banks
        sch.storage_align(staged, 0, axis=-2, factor=TILE_K, offset=GROUP)
        if producer in names:                     # padding/clamping happens in the shared-memory copy
            sch.compute_inline(sch.get_sblock(producer))
        copy = sch.fuse(*sch.get_loops(staged)[-2:])
        _, ty, tx = sch.split(copy, [None, THREADS_Y, THREADS_X])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
    sch.set_scope(acc, 0, "local")
    fold_output_rows(sch, out, len(lead))
    sch.reverse_compute_at(out, j1)
    sch.decompose_reduction(acc, k0)
    if int8:
        sch.tensorize(k2, register_dp4a())
    else:
        sch.unroll(k2)
    for loop in (k1, i2, j2):
        sch.unroll(loop)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def _row_threads(cols: int) -> int:
    """Threads per row: a multiple of the 32-lane warp, at most 256."""
    return min(256, max(32, -(-cols // 32) * 32))


def _flat_launch(sch, block):
    """Bind a block's data-parallel loops as one flat grid of ``FLAT_THREADS``-thread blocks."""
    spatial = _spatial_prefix(sch, block)
    if not spatial:
        spatial = sch.get_loops(block)[:1]
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    bx, tx = sch.split(fused, [None, FLAT_THREADS])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def schedule_rowwise_gpu(func):
    """One thread block per output row (see the module docstring)."""
    from tvm import s_tir
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if not blocks:
        return func
    full = max(_numel(sch, b) for b in blocks)
    for blk in blocks[:-1]:
        if not is_reduction(sch, blk) and 2 * _numel(sch, blk) > full:
            try:
                sch.compute_inline(blk)
            except Exception:              # read in a way inlining cannot express: scheduled below
                pass
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    output = blocks[-1]
    loops = sch.get_loops(output)
    if len(_spatial_prefix(sch, output)) < 2 or len(loops) < 2:
        _flat_launch(sch, output)
        for blk in blocks[:-1]:
            _flat_launch(sch, blk)
        return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
    cols = int(sch.get(loops[-1]).extent)
    threads = _row_threads(cols)
    row = sch.fuse(*loops[:-1])
    sch.bind(row, "blockIdx.x")
    _, tx = sch.split(loops[-1], [None, threads])
    sch.bind(tx, "threadIdx.x")
    for blk in reversed(blocks[:-1]):
        try:
            sch.compute_at(blk, row, preserve_unit_loops=True)
        except Exception:                  # not row-aligned with the output: its own launch
            _flat_launch(sch, blk)
            continue
        inner = [lp for lp in sch.get_loops(blk)[1:] if int(sch.get(lp).extent) > 1]
        if is_reduction(sch, blk) or inner:
            sch.set_scope(blk, 0, "shared")
            if inner:
                _, t = sch.split(sch.fuse(*inner) if len(inner) > 1 else inner[0], [None, threads])
                sch.bind(t, "threadIdx.x")
        else:                              # a per-row scalar: every thread computes it in a register
            sch.set_scope(blk, 0, "local")
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def schedule_module_gpu(mod, arch: str | None = None):
    """Schedule every PrimFunc of a fused module for CUDA: int8 × int8 GEMMs on tensor cores
    (``imma.schedule_gemm_imma``) when ``arch`` has them (sm_80+), the other GEMMs on ``dp4a`` or int32
    multiply-adds (``schedule_gemm_gpu``), everything else row-wise."""
    import tvm
    from .imma import imma_arch, imma_shape, schedule_gemm_imma
    tensor_cores = imma_arch(arch)
    out = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and SCHEDULED_ATTR in func.attrs):
            continue
        sch = tvm.s_tir.Schedule(func)
        if ACC_BLOCK not in block_names(sch):
            out[gv] = schedule_rowwise_gpu(func)
        elif tensor_cores and imma_shape(sch) is not None:
            out[gv] = schedule_gemm_imma(func)
        else:
            out[gv] = schedule_gemm_gpu(func)
    for gv, func in out.items():
        mod[gv] = func
    return mod
