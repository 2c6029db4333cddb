"""CPU schedules for the fused PrimFuncs of an intvit module.

Three schedules, chosen per PrimFunc by the blocks it contains:

* **GEMM with VNNI** (a ``gemm.packed_gemm_te`` kernel on an AVX-512 VNNI
  target): an ``MR × (NR·16)`` register tile; per 4-wide (2-wide) step of K,
  MR broadcasts of the activations, NR 64-byte panel loads and MR·NR
  ``vpdpbusd`` (``vpdpwssd``) into zmm accumulators (``x86.DOT_INSTRUCTIONS``). The
  bias + requant epilogue runs on the tile while it is in registers. Tiles
  are spread over threads; a linear layer's tiles each prefetch a share of
  the next weight panel block and the next tile's skip rows (``prefetch``).
* **GEMM with AMX** (``schedule_module(..., amx=True)``: a u8 × s8
  ``packed_gemm_te`` kernel built under ``gemm.amx_layout()``):
  ``amx.apply_amx_gemm_schedule``, 32 × 32 blocks of 2 × 2 int32 tiles over
  the whole K, the epilogue per task. The int16 (``vpdpwssd``) kernels and
  kernels not padded for AMX keep the VNNI schedule.
* **GEMM on another dot instruction** (``schedule_module(..., dots=...)``,
  ``x86.gemm_isa``): the same tiling with the instruction set's intrinsic:
  VNNI on ymm (AVX-VNNI), or ``vpmaddwd`` + ``vpaddd`` for a kernel in the
  16-bit form (``gemm.word_gemm``, CPUs without VNNI); on ymm two
  instructions per 16-lane panel and a smaller tile (``gemm.SMALL_TILE``);
  on AArch64 ``sdot`` on signed int8 (``arm.SDOT``), four per panel, the
  same small tile.
* **GEMM without either** (``int_bmm_te`` kernels, or a GEMM no dot
  instruction takes): the same tiling with 16-lane int32 multiply-adds.
* **Row-wise** (everything else: LayerNorm, Shiftmax, ShiftGELU, requant,
  residual adds, layout changes): the output's leading axes — the rows —
  are fused into one parallel loop and every producer block is computed
  inside it, so a row is reduced, normalised and written while it is in cache.

Each schedule only reorders, tiles and parallelises the loops of the TE
definitions; the arithmetic is untouched, which the bit-exactness tests check.
"""
from __future__ import annotations

import math

from .amx import amx_shape, apply_amx_gemm_schedule, with_tile_request
from .byte_table import BYTE_TABLE_BLOCK, BYTE_TABLE_OUT_BLOCK, tensorize_byte_table
from .kernels import MATERIALIZE
from .prefetch import PanelWalk, with_panel_prefetch
from .gemm import ACC_BLOCK, OUT_BLOCK, PACK_BLOCK, SHIFTED_INPUT_BLOCK, TILE_ROWS, TILE_VECTORS, linear_tile
from .gpu_gemm import LHS_BLOCK, RHS_BLOCK
from .schedule_blocks import (SCHEDULED_ATTR, _fused_parallel, _numel, block_names,  # noqa: F401 (re-exported)
                              fold_output_rows, is_reduction, parallel_rows)
from .x86 import DOT_INSTRUCTIONS, LANES, VPDPBUSD, dot_group, register_dot_intrinsic

TILED_ROWS = 8                  # rows per parallel task of a tiled (int64) GEMM; divides TILE_M


def schedule_gemm(func, vnni: bool, amx: bool = False, dots: dict | None = None, prefetch: bool = True):
    """Tile and parallelise a ``gemm`` kernel; tensorize with AMX (``amx``), VNNI, or the instruction set's
    ``dots`` (``apply_gemm_schedule``) where the kernel and target allow. A hand-scheduled VNNI linear kernel
    prefetches its next weight block and skip rows (``prefetch``; off only to measure it,
    ``bench/prefetch_kernels.py``)."""
    from tvm import s_tir
    sch = s_tir.Schedule(func)
    amx = amx and amx_shape(sch) is not None
    walk = apply_gemm_schedule(sch, vnni, amx=amx, dots=dots)
    out = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
    if walk is not None and prefetch:
        out = with_panel_prefetch(out, walk, ACC_BLOCK)
    return with_tile_request(out) if amx else out


# How the register tiles of a tuned GEMM are grouped (``apply_gemm_schedule``'s ``blocking``):
# "columns" walks a block of row tiles under each weight panel (the panel stays in L1),
# "rows" a block of panels under each row tile (the activation rows stay in L1).
BLOCK_ORDERS = ("columns", "rows")
MAX_PANELS_PER_BLOCK, MAX_ROW_TILES_PER_BLOCK, MAX_K_UNROLL = 4, 8, 8


def apply_gemm_schedule(sch, vnni: bool, blocking: str | None = None, amx: bool = False,
                        dots: dict | None = None):
    """Schedule the ``gemm`` kernel in ``sch`` (a ``s_tir.Schedule``) in place.

    With ``amx`` (and no ``blocking``), a u8 × s8 kernel in the AMX layout
    (``amx.amx_shape``) gets ``amx.apply_amx_gemm_schedule`` instead. ``dots``
    (``x86.GemmIsa.dots``: staged activation dtype → tensor intrinsic) picks
    the instruction of a linear kernel; default: VNNI's on a ``vnni`` target,
    none otherwise (plain vectorized multiply-adds). The register tile is the
    one the kernel was built for (its ``gemm.TILE_ROWS``/``TILE_VECTORS``
    annotations).

    Without ``blocking`` this is the hand schedule: register tiles ``MR × NR·16``
    (``gemm.linear_tile``) in one parallel loop over (panel, row tile). With
    ``blocking`` in ``BLOCK_ORDERS`` the register tiles are grouped into
    cache blocks and K steps unrolled, by factors drawn with
    ``sample_perfect_tile``: the design space ``tvm_backend.tuning`` searches.
    Either way only loops move; the arithmetic is the TE definition's.

    Returns the ``prefetch.PanelWalk`` of a hand-scheduled u8 × s8 linear
    kernel with one weight (the caller adds the prefetches,
    ``prefetch.with_panel_prefetch``), else None.
    """
    if amx and blocking is None and amx_shape(sch) is not None:
        apply_amx_gemm_schedule(sch)
        return None
    dots = dots if dots is not None else (DOT_INSTRUCTIONS if vnni else {})
    linear = SHIFTED_INPUT_BLOCK in block_names(sch)
    lookup = BYTE_TABLE_BLOCK in block_names(sch)
    if lookup and not (dots.get("uint8") is VPDPBUSD and linear):
        raise ValueError("this GEMM ends in a byte-table lookup (byte_table), which runs on the AMX or VNNI "
                         "schedule only (a target with AVX-512 VNNI and VBMI); import it without "
                         "gemm.vbmi_lookup() for this target")
    acc, out = sch.get_sblock(ACC_BLOCK), sch.get_sblock(OUT_BLOCK)
    *lead, i, j, k = sch.get_loops(acc)
    n = int(sch.get(out).iter_vars[-1].dom.extent)
    mr, nr = linear_tile(n, lookup)
    built_for = sch.get(acc).annotations
    mr, nr = int(built_for.get(TILE_ROWS, mr)), int(built_for.get(TILE_VECTORS, nr))
    if lookup and int(sch.get(i).extent) % mr:
        raise ValueError("this GEMM ends in a byte-table lookup and its rows are not padded to the VNNI tile "
                         "(it was imported in the AMX layout, gemm.amx_layout): schedule it with amx=True")
    io, ii = sch.split(i, [None, mr])
    jo, ji, jv = sch.split(j, [None, nr, LANES])
    walk = None
    if linear:
        shifted = sch.get_sblock(SHIFTED_INPUT_BLOCK)
        staged = str(sch.get(shifted).writes[0].source.dtype)
        dot = dots.get(staged)
        parallel_rows(sch, shifted)
        ko, kv = sch.split(k, [None, dot_group(staged)])
        inner_k = [kv]
    else:
        ko, inner_k, dot = k, [], None
    tensorized = dot is not None
    if blocking is None:
        outer, tile_loop, k_loops = [jo, io], io, [ko]
    else:
        jb, jt = sch.split(jo, sch.sample_perfect_tile(jo, n=2, max_innermost_factor=MAX_PANELS_PER_BLOCK))
        ib, it = sch.split(io, sch.sample_perfect_tile(io, n=2, max_innermost_factor=MAX_ROW_TILES_PER_BLOCK))
        k_loops = list(sch.split(ko, sch.sample_perfect_tile(ko, n=2, max_innermost_factor=MAX_K_UNROLL)))
        outer = [jb, ib, jt, it] if blocking == "columns" else [ib, jb, it, jt]
        tile_loop = outer[-1]
    if blocking is None and dot is VPDPBUSD:
        walk = _panel_walk(sch, acc, out, sch.get(io).extent, sch.get(jo).extent, mr, nr)
    if tensorized:
        sch.reorder(*outer, *k_loops, ii, ji, jv, *inner_k)
    else:
        sch.reorder(*outer, *k_loops, *inner_k, ii, ji, jv)
    sch.reverse_compute_at(out, tile_loop)
    if lookup:              # the tile's MR rows of 32 requantized bytes, looked up while in L1, then copied out
        table, copy = sch.get_sblock(BYTE_TABLE_BLOCK), sch.get_sblock(BYTE_TABLE_OUT_BLOCK)
        sch.reverse_compute_at(table, tile_loop)
        sch.reverse_compute_at(copy, tile_loop)
        sch.vectorize(sch.get_loops(copy)[-1])
    sch.parallel(sch.fuse(*lead, *outer[:2]))
    if lookup:
        tensorize_byte_table(sch, sch.get_sblock(BYTE_TABLE_BLOCK))
    if tensorized:
        init = sch.decompose_reduction(acc, k_loops[0])
        sch.tensorize(jv, register_dot_intrinsic(dot))
    else:
        sch.vectorize(jv)                     # before decompose_reduction (compact dataflow)
        init = sch.decompose_reduction(acc, k_loops[0])
        if linear:
            sch.unroll(inner_k[0])
    if blocking is not None:
        sch.unroll(k_loops[1])
    sch.unroll(ii)
    sch.unroll(ji)
    # The accumulator tile stays in "global" scope: TVM 0.27 puts a global
    # allocation under 1 KB on the stack (LLVM then keeps it in registers), but
    # heap-allocates any "local" one per tile (see gemm.linear_tile).
    sch.vectorize(sch.get_loops(init)[-1])
    return walk


def _panel_walk(sch, acc, out, row_tiles, blocks, mr: int, nr: int):
    """The hand schedule's walk (``prefetch.PanelWalk``) over a linear kernel's one packed weight
    ``[Np/16, Kp/g, 16, g]`` (the accumulator's other operand is the staged input) and over the epilogue's
    inputs shaped like its output (the residual stream), or None when the weight is per batch item."""
    staged = sch.get(sch.get_sblock(SHIFTED_INPUT_BLOCK)).writes[0].source
    weights = [r.source for r in sch.get(acc).reads if not r.source.same_as(staged)]
    if len(weights) != 1 or len(weights[0].shape) != 4:
        return None
    _, k_groups, lanes, group = (int(d) for d in weights[0].shape)
    block_bytes = nr * k_groups * lanes * group
    written = sch.get(out).writes[0].source
    *lead, rows, cols = (int(d) for d in written.shape)
    accumulator = sch.get(acc).writes[0].source
    skips = tuple((r.source.name, r.source.dtype.bits // 8) for r in sch.get(out).reads
                  if not r.source.same_as(accumulator)
                  and [int(d) for d in r.source.shape] == [*lead, rows, cols])
    return PanelWalk(weights[0].name, int(row_tiles), int(blocks), block_bytes, int(blocks) * block_bytes,
                     leads=math.prod(lead), tile_rows=mr, rows=rows, block_cols=nr * LANES, cols=cols, skips=skips)


def schedule_tiled_gemm(func):
    """A ``gpu_gemm.tiled_gemm_te`` kernel on the CPU (the int64 GEMMs of 16-bit layers,
    ``quantize.layout``): operand padding inlined, parallel over 8-row slabs, epilogue per slab."""
    from tvm import s_tir
    sch = s_tir.Schedule(func)
    names = block_names(sch)
    for producer in (LHS_BLOCK, RHS_BLOCK):
        if producer in names:
            sch.compute_inline(sch.get_sblock(producer))
    acc, out = sch.get_sblock(ACC_BLOCK), sch.get_sblock(OUT_BLOCK)
    *lead, i, _, _ = sch.get_loops(acc)
    io, _ = sch.split(i, [None, TILED_ROWS])
    fold_output_rows(sch, out, len(lead))
    sch.reverse_compute_at(out, io)
    sch.parallel(sch.fuse(*lead, io) if lead else io)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def schedule_rowwise(func):
    """Parallelise over the output's rows; inline full-size elementwise producers, compute row-level
    ones (reductions, per-row scalars such as the isqrt stages) inside the row loop.

    Inlining a full-size intermediate recomputes a few integer ops instead of
    storing it: a stored row would be a heap workspace allocated per row (TVM
    puts only buffers under 1 KB on the stack). Stages annotated
    ``kernels.MATERIALIZE`` (Shiftmax's exponentials, read twice) keep their row.
    """
    from tvm import s_tir
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if not blocks:
        return func
    full = max(_numel(sch, b) for b in blocks)       # the function's full-size tensors
    for blk in blocks[:-1]:
        keep = MATERIALIZE in sch.get(blk).annotations
        # full-size (a per-row value is a row length smaller; inlining those, e.g. the
        # 32 isqrt stages that each read the previous one twice, would blow up): inline
        if not keep and not is_reduction(sch, blk) and 2 * _numel(sch, blk) > full:
            try:
                sch.compute_inline(blk)
            except Exception:                  # e.g. read by a reduction in a way inlining cannot express
                pass
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if sch.get(blocks[-1]).name_hint == PACK_BLOCK:
        row_loop = _schedule_pack(sch, blocks[-1])
    else:
        row_loop = parallel_rows(sch, blocks[-1])
    for blk in reversed(blocks[:-1]):
        try:
            if row_loop is None:
                raise ValueError("no row loop")
            sch.compute_at(blk, row_loop, preserve_unit_loops=True)
        except Exception:                      # not row-aligned with the output: its own parallel loop
            parallel_rows(sch, blk)
    _vectorize_layout_copy(sch, blocks[-1])
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


LAYOUT_OPS = ("T_transpose", "T_reshape", "T_strided_slice")    # Relax's data-movement blocks
COPY_RUNS = (64, 32, 16)


def _vectorize_layout_copy(sch, block) -> None:
    """Vectorize a layout kernel's innermost output axis in runs of 64, 32 or 16 elements (the largest that
    divides it). A transpose or slice reads such a run contiguously when the run divides the source's
    innermost extent (a head's 64 channels); TVM's vectorizer then emits one vector load and store per
    run, where LLVM alone assembled the vector byte by byte (``vpinsrb``) from the index arithmetic."""
    if not sch.get(block).name_hint.startswith(LAYOUT_OPS) or is_reduction(sch, block):
        return
    inner = sch.get_loops(block)[-1]
    extent = int(sch.get(inner).extent)
    run = next((r for r in COPY_RUNS if extent % r == 0 and extent > r // 2), None)
    if run is None:
        return
    _, lanes = sch.split(inner, [None, run])
    sch.vectorize(lanes)


def _schedule_pack(sch, block):
    """Panels ``[..., N/16, K/g, 16, g]``: one task per batch item and head, panel columns innermost so a
    16-wide run of the source row is read and a 16·g-element run of the panel written together."""
    *lead, jo, ko, ji, ki = sch.get_loops(block)
    sch.reorder(ko, jo, ji, ki)
    return _fused_parallel(sch, lead)


def schedule_module(mod, vnni: bool, amx: bool = False, dots: dict | None = None):
    """Schedule every PrimFunc of a fused module (``relax.transform.FuseTIR`` output); with ``amx``, the
    u8 × s8 GEMMs in the AMX layout get the AMX schedule; ``dots`` (``x86.GemmIsa.dots``) names the other
    GEMMs' instructions (default: VNNI's where ``vnni``)."""
    import tvm
    out = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and SCHEDULED_ATTR in func.attrs):
            continue
        names = block_names(tvm.s_tir.Schedule(func))
        if LHS_BLOCK in names:
            out[gv] = schedule_tiled_gemm(func)
        else:
            out[gv] = schedule_gemm(func, vnni, amx, dots) if ACC_BLOCK in names else schedule_rowwise(func)
    for gv, func in out.items():
        mod[gv] = func
    return mod


def schedule_amx_gemms(mod):
    """Schedule only the GEMMs of ``mod`` that the AMX schedule takes (``amx.amx_shape``), marking them
    scheduled: what tuning leaves alone (``build.compile_onnx`` with ``tune`` and ``isa="amx"``)."""
    import tvm
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and SCHEDULED_ATTR in func.attrs):
            continue
        sch = tvm.s_tir.Schedule(func)
        if ACC_BLOCK in block_names(sch) and amx_shape(sch) is not None:
            apply_amx_gemm_schedule(sch)
            mod[gv] = with_tile_request(sch.mod["main"].with_attr(SCHEDULED_ATTR, True))
    return mod
