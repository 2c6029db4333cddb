"""TE definitions of the integer GEMMs in the layouts the CPU schedules want.

**Linear layers** (``packed_gemm_te``): ``y = epilogue(x @ W + b)`` with
``x`` int8 ``[..., rows, K]`` and a constant int8 weight, computed as
(``ops.int_linear_unsigned``)

    acc[r, n] = Σ_k (x[r, k] + 128) · Wp[n/16, k/4, n%16, k%4]        (u8 × s8 → s32)
    y[r, n]   = epilogue(acc[r, n] + (b[n] − 128·Σ_k W[k, n]))        (int64)

so the reduction is exactly the VNNI ``vpdpbusd`` form (``x86.VPDPBUSD``).
The weight is packed offline into ``[N/16, K/4, 16, 4]`` panels (zero-padded
to the tile), and the rows are padded up to a multiple of the register tile
height by clamping the row index (``x[min(r, rows−1)]``; the extra rows are
computed and never stored), because a predicated split breaks tensorize.
The epilogue is the dyadic ``Requant``/``Rescale`` that follows the GEMM in
the graph, fused into the same kernel so the int32 tile is requantized in
registers.

**Attention** uses the same kernel with panels packed in-graph
(``pack_panels_te``): ``Q·Kᵀ`` packs the int8 keys for ``vpdpbusd`` (with a
per-key compensation, ``panel_compensation_te``); ``A·V`` packs the values as
int16 for ``vpdpwssd`` and feeds the 16-bit probabilities unshifted, or, in
the AMX layout, packs them as int8 and splits each probability into its two
bytes (``split_probs_gemm_te``).

**Any other activation GEMM** (``int_bmm_te``): ``C[..., i, j] = Σ_k
a[..., i, k]·b[..., k, j]`` in int32, row and column indices clamped to the
tile, no repacking.

**The 16-bit form** (``word_gemm()``, for CPUs without VNNI): inside this
context the int8 linear layers and attention's ``Q·Kᵀ`` are built like
``A·V``, in the ``VPDPWSSD`` form: ``x`` widened to int16 (no +128 shift,
no compensation), the weight or keys packed as int16 ``[N/16, K/2, 16, 2]``
panels, so the schedule multiplies them with ``vpmaddwd``
(``x86.gemm_isa``). Inside ``gemm_vectors("ymm")`` (CPUs without AVX-512:
16 ymm registers) and ``gemm_vectors("neon")`` (AArch64: 32 × 128-bit
registers) every register tile is ``SMALL_TILE``.

**The signed form** (``int8_gemm(arm.SDOT)``, for AArch64's ``sdot``): the
int8 GEMMs take ``x`` as signed int8 against int8 panels, no shift and no
compensation (``sdot`` multiplies signed by signed).

**The AMX layout** (``amx_layout()``, for ``amx.apply_amx_gemm_schedule``):
inside this context the u8 × s8 (``VPDPBUSD``) kernels are built for AMX
tiles: the panels are padded to K % 64 == 0 and N % 32 == 0 (the same
``[Np/16, Kp/4, 16, 4]`` layout, more zero padding), the staged rows to a
multiple of 32, and a linear layer's leading axes are folded into its rows
(``[B, T, K]`` is one ``[B·T, K]`` GEMM: 32-row blocks then pad ``B·T``, not
every ``T``). The arithmetic is unchanged; the int16 (``VPDPWSSD``) kernels
keep their layout.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from ..ops.gemm import UNSIGNED_SHIFT
from .byte_table import LOOKUP_LANES
from .x86 import LANES, VPDPBUSD, VPDPWSSD, DotInstruction

ACC_BLOCK = "int_gemm_acc"      # the reduction block every GEMM schedule looks for
OUT_BLOCK = "int_gemm_out"      # its output (crop + epilogue) block
SHIFTED_INPUT_BLOCK = "shifted_input"
BYTE_SPLIT = "intvit.byte_split"        # annotation of split_probs_gemm_te's accumulator: a leading byte axis
SPLIT_CROP_BLOCK = "int_gemm_crop"      # split_probs_gemm_te: the real rows of its padded output
TILE_ROWS = "intvit.tile_rows"          # annotations of a GEMM's accumulator: the register tile it was built
TILE_VECTORS = "intvit.tile_vectors"    # for, MR rows × NR 16-lane panels (read by the schedule)
PACK_BLOCK = "pack_panels"      # in-graph panel packing of an activation (schedules.schedule_rowwise)
AMX_ROWS, AMX_COLS, AMX_K = 32, 32, 64      # amx.ROW_BLOCK, amx.COL_BLOCK, amx.K_BLOCK (checked at its import)

_AMX_LAYOUT: ContextVar[bool] = ContextVar("intvit_amx_layout", default=False)


@contextmanager
def import_flag(flag: ContextVar, enabled: bool):
    """Within this context ``flag`` (a layout choice the importer's GEMM emitters read) is ``enabled``."""
    token = flag.set(enabled)
    try:
        yield
    finally:
        flag.reset(token)


def amx_layout(enabled: bool = True):
    """Within this context, u8 × s8 kernels and their packings take the AMX layout (see the module docstring).

    Wraps the import of a graph (``importer.to_relax``) whose kernels the AMX
    schedule will run: the importer's calls of ``pack_linear_weight``,
    ``pack_panels_te`` and ``packed_gemm_te`` read it.
    """
    return import_flag(_AMX_LAYOUT, enabled)


def amx_layout_active() -> bool:
    """Whether the current import runs inside ``amx_layout()``."""
    return _AMX_LAYOUT.get()


_VBMI_LOOKUP: ContextVar[bool] = ContextVar("intvit_vbmi_lookup", default=False)


def vbmi_lookup(enabled: bool = True):
    """Within this context a 256-entry int8 table after a u8 × s8 linear layer (the GELU after fc1) is looked
    up with ``vpermi2b`` (``byte_table``) in the VNNI form too, not gathered: wraps the import of a graph
    for a target with AVX-512 VBMI whose GEMMs get the VNNI schedule. The AMX layout always does it."""
    return import_flag(_VBMI_LOOKUP, enabled)


def byte_lookup_active() -> bool:
    """Whether the current import looks GELU byte tables up with ``vpermi2b`` (``vbmi_lookup`` or
    ``amx_layout``)."""
    return _VBMI_LOOKUP.get() or _AMX_LAYOUT.get()


_INT8_DOT: ContextVar[DotInstruction] = ContextVar("intvit_int8_dot", default=VPDPBUSD)
_VECTORS: ContextVar[str] = ContextVar("intvit_gemm_vectors", default="zmm")
# 6 rows × one 16-lane panel: on ymm 12 accumulators, 2 for the panel, 1 broadcast (of 16 registers); on
# NEON 24 accumulators, 4 for the panel, 1 broadcast (of 32 128-bit registers)
SMALL_TILE = (6, 1)
VECTOR_WIDTHS = ("zmm", "ymm", "neon")


def int8_gemm(dot: DotInstruction = VPDPBUSD):
    """Within this context the int8 GEMMs (linear layers, ``Q·Kᵀ``) are imported in ``dot``'s operand form:
    ``VPDPBUSD`` (x86: activations + 128 as uint8, compensation in the bias; the default), ``VPDPWSSD`` (the
    16-bit form, ``word_gemm``) or ``arm.SDOT`` (signed int8 activations as they are, no compensation);
    wraps the import of a graph (``build.compile_onnx`` with ``x86.gemm_isa``'s ``int8_dot``)."""
    return import_flag(_INT8_DOT, dot)


def int8_gemm_dot() -> DotInstruction:
    """The operand form of the int8 GEMMs imported now (``int8_gemm``)."""
    return _INT8_DOT.get()


def word_gemm(enabled: bool = True):
    """Within this context the int8 GEMMs (linear layers, ``Q·Kᵀ``) take the 16-bit form (module docstring):
    wraps the import of a graph for a CPU without VNNI (``build.compile_onnx`` with ``isa="avx2"``)."""
    return int8_gemm(VPDPWSSD if enabled else VPDPBUSD)


def gemm_vectors(width: str = "zmm"):
    """Within this context the GEMMs' register tiles are sized for ``width`` registers: ``"zmm"`` (32 × 512
    bits, ``linear_tile``), ``"ymm"`` (16 × 256 bits) or ``"neon"`` (32 × 128 bits), both ``SMALL_TILE``:
    wraps the import of a graph for a CPU without AVX-512 (``x86.gemm_isa``)."""
    if width not in VECTOR_WIDTHS:
        raise ValueError(f"gemm_vectors width {width!r}: choose one of {', '.join(map(repr, VECTOR_WIDTHS))}")
    return import_flag(_VECTORS, width)


def import_tile(n: int, lookup: bool = False) -> tuple[int, int]:
    """The register tile ``(MR, NR)`` of a kernel of ``n`` columns imported now: ``SMALL_TILE`` inside
    ``gemm_vectors("ymm")`` or ``gemm_vectors("neon")``, else ``linear_tile``."""
    return SMALL_TILE if _VECTORS.get() != "zmm" and not lookup else linear_tile(n, lookup)


def _amx(amx: bool | None, u8: bool) -> bool:
    return u8 and (amx_layout_active() if amx is None else amx)


def ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


def linear_tile(n: int, lookup: bool = False) -> tuple[int, int]:
    """Register tile ``(rows MR, 16-lane column vectors NR)`` for an output width ``n``.

    MR·NR int32x16 accumulators plus NR weight vectors and one broadcast must
    fit the 32 zmm registers, and the tile must stay under TVM's 1 KB stack
    allocation limit (a larger one is heap-allocated per tile): MR·NR ≤ 15.
    Prefer the NR that pads ``n`` least. A kernel ending in a byte-table
    lookup (``lookup``) takes NR = 2: each tile row is then one 32-byte
    ``vpermi2b`` step (``byte_table.LOOKUP_LANES``).
    """
    nr = min((2,) if lookup else (3, 2, 1), key=lambda r: (ceil_to(n, LANES * r), -r))
    return {3: 5, 2: 7, 1: 15}[nr], nr


def pack_linear_weight(w_kn: np.ndarray, nr: int, group: int = VPDPBUSD.group,
                       amx: bool | None = None) -> np.ndarray:
    """``[K, N]`` → ``[Np/16, Kp/g, 16, g]``, zero-padded: ``Wp[j/16, k/g, j%16, k%g] = W[k, j]``.

    ``Np`` pads N to the register tile (``nr`` 16-lane vectors) and ``Kp`` K to
    the group, or, with ``amx`` (default: inside ``amx_layout()``, for the
    4-byte group), N to 32 and K to 64.
    """
    k, n = w_kn.shape
    if _amx(amx, group == VPDPBUSD.group):
        kp, np_ = ceil_to(k, AMX_K), ceil_to(n, AMX_COLS)
    else:
        kp, np_ = ceil_to(k, group), ceil_to(n, LANES * nr)
    padded = np.zeros((kp, np_), w_kn.dtype)
    padded[:k, :n] = w_kn
    return np.ascontiguousarray(padded.T.reshape(np_ // LANES, LANES, kp // group, group).transpose(0, 2, 1, 3))


def folded_bias(w_kn: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``b − 128·Σ_k W[k, n]`` as int64 ``[N]`` (``ops.unsigned_shift_compensation`` plus the bias)."""
    comp = -UNSIGNED_SHIFT * w_kn.astype(np.int64).sum(axis=0)
    return comp if bias is None else comp + np.broadcast_to(bias.astype(np.int64), comp.shape)


def pack_panels_te(b, layout: str, dot: DotInstruction = VPDPBUSD):
    """``pack_linear_weight`` for an activation, in-graph: ``b`` is ``[..., N, K]`` (``layout="nk"``,
    attention's keys for ``Q·Kᵀ``) or ``[..., K, N]`` (``"kn"``, the values for ``A·V``)."""
    from tvm import te
    from tvm import tirx as tir
    *lead, d0, d1 = (int(d) for d in b.shape)
    n, k = (d0, d1) if layout == "nk" else (d1, d0)
    _, nr = import_tile(n)
    g = dot.group
    if _amx(None, dot is VPDPBUSD):
        np_, kp = ceil_to(n, AMX_COLS), ceil_to(k, AMX_K)
    else:
        np_, kp = ceil_to(n, LANES * nr), ceil_to(k, g)

    def f(*i):
        j, kk = i[-4] * LANES + i[-2], i[-3] * g + i[-1]
        jc, kc = tir.min(j, n - 1), tir.min(kk, k - 1)
        v = b(*i[:-4], jc, kc) if layout == "nk" else b(*i[:-4], kc, jc)
        return tir.Select(tir.all(j < n, kk < k), v.astype(dot.b_dtype), tir.const(0, dot.b_dtype))
    return te.compute((*lead, np_ // LANES, kp // g, LANES, g), f, name=PACK_BLOCK)


def panel_compensation_te(b):
    """``folded_bias`` for an activation ``[..., N, K]``: ``−128·Σ_k b[..., j, k]`` (int64 ``[..., Np]``, 0 past N)."""
    from tvm import te
    from tvm import tirx as tir
    *lead, n, k = (int(d) for d in b.shape)
    _, nr = import_tile(n)
    np_ = ceil_to(n, LANES * nr)
    red = te.reduce_axis((0, k), name="k")
    total = te.compute((*lead, np_), lambda *i: te.sum(
        b(*i[:-1], tir.min(i[-1], n - 1), red).astype("int64"), axis=red), name="panel_sum")
    return te.compute((*lead, np_), lambda *i: tir.Select(
        i[-1] < n, total(*i) * -UNSIGNED_SHIFT, tir.const(0, "int64")), name="panel_compensation")


def tile_attrs(mr: int, nr: int | None) -> dict:
    """The accumulator's annotations naming its register tile (``TILE_ROWS``, and ``TILE_VECTORS`` when
    ``nr`` is given; the schedule takes ``linear_tile``'s NR otherwise)."""
    return {TILE_ROWS: mr} if nr is None else {TILE_ROWS: mr, TILE_VECTORS: nr}


def packed_gemm_te(x, wp, bias, mr: int, n: int, dot: DotInstruction = VPDPBUSD, epilogue=None,
                   out_dtype="int64", amx: bool | None = None, byte_table=None, nr: int | None = None):
    """``epilogue(x @ W + bias)`` on packed panels ``wp``.

    ``dot`` fixes the operand form: ``VPDPBUSD`` feeds ``x + 128`` as uint8
    (``bias`` must carry the compensation, ``folded_bias`` /
    ``panel_compensation_te``); ``VPDPWSSD`` feeds ``x`` as int16 (values must
    fit). ``wp``/``bias`` are shared (``[Np/16, Kp/g, 16, g]`` / ``[N]``) or
    batched like ``x`` (``[..., Np/16, Kp/g, 16, g]`` / ``[..., Np]``); ``bias``
    may be None. ``epilogue(z, idx) -> PrimExpr`` maps the int64
    accumulator-plus-bias at output index ``idx`` to the output value.

    Rows are padded to a multiple of ``mr`` (the register tile's rows; ``nr``,
    its 16-lane panels, when not ``linear_tile``'s), or with ``amx`` (default: inside
    ``amx_layout()``, for ``VPDPBUSD`` panels padded for AMX) to 32, with a
    shared weight's leading axes folded into the rows (``_amx_linear_te``).

    ``byte_table`` (an int8 ``[256]`` tensor; a u8 × s8 kernel with one
    weight and a multiple of 32 columns, built with ``mr`` from
    ``linear_tile(n, lookup=True)`` outside the AMX layout) looks the int8
    epilogue output up in it (``byte_table.byte_table_te``): the output is
    ``byte_table[epilogue(...) + 128]``. The epilogue and the lookup then run
    on the padded rows too, so that every register tile is whole for the
    lookup's tensor intrinsic, and a copy writes the real rows.
    """
    from tvm import te
    from tvm import tirx as tir

    *lead, rows, k = (int(d) for d in x.shape)
    g = dot.group
    kp, np_ = int(wp.shape[-3]) * g, int(wp.shape[-4]) * LANES
    w_lead = len(wp.shape) - 4                 # 0: one weight for all rows; len(lead): one per batch item
    amx = _amx(amx, dot is VPDPBUSD) and kp % AMX_K == 0 and np_ % AMX_COLS == 0
    if byte_table is not None and (dot is not VPDPBUSD or w_lead or n % LOOKUP_LANES):
        raise ValueError("a byte-table epilogue needs a u8 x s8 kernel with one weight and a multiple of "
                         f"{LOOKUP_LANES} columns (one vpermi2b lookup each)")
    if amx and not w_lead and (lead or byte_table is not None):
        return _amx_linear_te(x, wp, bias, n, epilogue, out_dtype, byte_table)
    rows_p = ceil_to(rows, AMX_ROWS if amx else mr)
    shift = UNSIGNED_SHIFT if dot is VPDPBUSD else 0

    def operand(*i):
        r, kk = tir.min(i[-2], rows - 1), i[-1]
        v = (x(*i[:-2], r, tir.min(kk, k - 1)).astype("int32") + shift).astype(dot.a_dtype)
        return v if kp == k else tir.Select(kk < k, v, tir.const(0, dot.a_dtype))
    au = te.compute((*lead, rows_p, kp), operand, name=SHIFTED_INPUT_BLOCK)
    red = te.reduce_axis((0, kp), name="k")
    acc = te.compute((*lead, rows_p, np_), lambda *i: te.sum(
        au(*i[:-1], red).astype("int32")
        * wp(*i[:w_lead], i[-1] // LANES, red // g, i[-1] % LANES, red % g).astype("int32"),
        axis=red), name=ACC_BLOCK, attrs=tile_attrs(mr, nr))

    def out(*i):
        z = acc(*i).astype("int64")
        if bias is not None:
            z = z + bias(*i[:len(bias.shape) - 1], i[-1])
        idx = i if byte_table is None else (*i[:-2], tir.min(i[-2], rows - 1), i[-1])
        return (z if epilogue is None else epilogue(z, idx)).astype(out_dtype)
    if byte_table is None:
        return te.compute((*lead, rows, n), out, name=OUT_BLOCK)
    return _looked_up(te.compute((*lead, rows_p, n), out, name=OUT_BLOCK), byte_table, (*lead, rows, n),
                      lambda i: i)


def _looked_up(requantized, byte_table, shape, row_of):
    """``byte_table[requantized + 128]`` (``byte_table.byte_table_te``) on every row of ``requantized``
    (padded), then the copy of the real output ``shape``: ``out[i] = looked_up[row_of(i)]``."""
    from tvm import te

    from .byte_table import BYTE_TABLE_OUT_BLOCK, byte_table_te
    looked_up = byte_table_te(requantized, byte_table)
    return te.compute(shape, lambda *i: looked_up(*row_of(i)), name=BYTE_TABLE_OUT_BLOCK)


def unravel_row(r, dims):
    """The index ``(i0, ..., i_{d-1})`` of flat row ``r`` in row-major ``dims`` (``r = Σ i_a·Π_{b>a} dims_b``)."""
    from tvm import tirx as tir
    idx = []
    for d in reversed(dims):
        idx.append(tir.floormod(r, d))
        r = tir.floordiv(r, d)
    return idx[::-1]


def flat_row_index(idx, dims):
    """The flat row of index ``idx`` in row-major ``dims``: the inverse of ``unravel_row``."""
    flat = idx[0]
    for d, v in zip(dims[1:], idx[1:]):
        flat = flat * d + v
    return flat


def fold_rows_map(dims: list[int]):
    """The index map ``(i0, ..., i_{d-2}, n) -> (flat row, n)`` over an output of shape ``dims``: a schedule
    applies it to an output block whose GEMM folded the leading axes into its rows, so that the block
    iterates over the same flat rows as the accumulator (``sch.transform_block_layout``)."""
    from tvm.tirx import IndexMap
    return IndexMap.from_func(lambda *i: (flat_row_index(i[:-1], dims[:-1]), i[-1]), ndim=len(dims),
                              index_dtype="int32")


def _amx_linear_te(x, wp, bias, n: int, epilogue, out_dtype, byte_table=None):
    """``packed_gemm_te`` (VPDPBUSD, one weight) with ``x``'s leading axes folded into the rows: one GEMM of
    ``R = prod(lead)·rows`` rows padded to 32 (``x[min(r, R−1)]``), read back per output index."""
    from tvm import te
    from tvm import tirx as tir

    *lead, rows, k = (int(d) for d in x.shape)
    dims = (*lead, rows)
    total = int(np.prod(dims))
    kp, np_ = int(wp.shape[-3]) * VPDPBUSD.group, int(wp.shape[-4]) * LANES

    def unravel(r):
        return unravel_row(r, dims)

    def operand(r, kk):
        v = (x(*unravel(tir.min(r, total - 1)), tir.min(kk, k - 1)).astype("int32") + UNSIGNED_SHIFT).astype("uint8")
        return v if kp == k else tir.Select(kk < k, v, tir.const(0, "uint8"))
    au = te.compute((ceil_to(total, AMX_ROWS), kp), operand, name=SHIFTED_INPUT_BLOCK)
    red = te.reduce_axis((0, kp), name="k")
    acc = te.compute((ceil_to(total, AMX_ROWS), np_), lambda r, j: te.sum(
        au[r, red].astype("int32") * wp[j // LANES, red // 4, j % LANES, red % 4].astype("int32"), axis=red),
        name=ACC_BLOCK)

    def flat_row(i):
        return flat_row_index(i[:-1], dims)

    def out(*i):
        z = acc[flat_row(i), i[-1]].astype("int64")
        if bias is not None:
            z = z + bias(*i[:len(bias.shape) - 1], i[-1])
        return (z if epilogue is None else epilogue(z, i)).astype(out_dtype)
    if byte_table is None:
        return te.compute((*lead, rows, n), out, name=OUT_BLOCK)
    # With a byte table the epilogue and the lookup run on every staged row (the padding rows repeat the
    # last row), so that each 32 x 32 block is whole for the lookup's tensor intrinsic; a copy per block
    # then writes the real rows.
    if bias is not None and len(bias.shape) > 1:
        raise ValueError("a byte-table epilogue takes a shared bias only")

    def padded(r, j):
        z = acc[r, j].astype("int64") + (0 if bias is None else bias[j])
        return (z if epilogue is None else epilogue(z, (*unravel(tir.min(r, total - 1)), j))).astype(out_dtype)
    requantized = te.compute((ceil_to(total, AMX_ROWS), n), padded, name=OUT_BLOCK)
    return _looked_up(requantized, byte_table, (*lead, rows, n), lambda i: (flat_row(i), i[-1]))


def split_probs_gemm_te(p, vp, n: int, epilogue=None, out_dtype="int64"):
    """Attention's ``A·V`` on AMX: ``epilogue(Σ_k p[..., r, k]·v[..., k, j])`` for probabilities ``p`` in
    ``[0, 2**16)`` (int16-stored) and int8 values packed per batch item and head in the AMX layout
    (``pack_panels_te(values, "kn", VPDPBUSD)`` under ``amx_layout()``).

    AMX multiplies bytes only, so each probability is split into its two unsigned bytes,
    ``p = 256·hi + lo`` with ``hi = p >> 8`` and ``lo = p & 255``, and

        Σ_k p_k·v_k = 256·Σ_k hi_k·v_k + Σ_k lo_k·v_k              (exact)

    two u8 × s8 GEMMs on the same panels, one accumulator block with a leading
    byte axis ``s`` (``acc[0]``: high bytes, ``acc[1]``: low; each ``<= K·255·128``,
    inside int32 for ``K <= 65 793``, ``ops.gemm.MAX_INT32_REDUCTION``), combined
    in int64 by the epilogue. No +128 shift: both operands are unsigned already.
    The accumulator block carries the ``BYTE_SPLIT`` annotation, which the AMX
    schedule reads.
    """
    from tvm import te
    from tvm import tirx as tir

    *lead, rows, k = (int(d) for d in p.shape)
    kp, np_ = int(vp.shape[-3]) * VPDPBUSD.group, int(vp.shape[-4]) * LANES
    if kp % AMX_K or np_ != n or n % AMX_COLS or len(vp.shape) - 4 != len(lead):
        raise ValueError("split_probs_gemm_te takes values packed per batch item and head in the AMX layout, "
                         f"{AMX_COLS}·m columns wide")

    def byte(s, *i):        # in 16-bit lanes: 32 per vector
        v = p(*i[:-2], tir.min(i[-2], rows - 1), tir.min(i[-1], k - 1)).astype("uint16")
        v = tir.Select(s == 0, v >> tir.const(8, "uint16"), v & tir.const(255, "uint16"))
        return tir.Select(i[-1] < k, v.astype("uint8"), tir.const(0, "uint8"))
    staged = te.compute((2, *lead, ceil_to(rows, AMX_ROWS), kp), byte, name=SHIFTED_INPUT_BLOCK)
    red = te.reduce_axis((0, kp), name="k")
    acc = te.compute((2, *lead, ceil_to(rows, AMX_ROWS), np_), lambda s, *i: te.sum(
        staged(s, *i[:-1], red).astype("int32")
        * vp(*i[:-2], i[-1] // LANES, red // 4, i[-1] % LANES, red % 4).astype("int32"), axis=red),
        name=ACC_BLOCK, attrs={BYTE_SPLIT: 1})

    def padded(*i):         # on every staged row, so that the schedule works on whole 32 × 32 blocks
        z = acc(0, *i).astype("int64") * 256 + acc(1, *i).astype("int64")
        return (z if epilogue is None else epilogue(z, (*i[:-2], tir.min(i[-2], rows - 1), i[-1]))).astype(out_dtype)
    out = te.compute((*lead, ceil_to(rows, AMX_ROWS), np_), padded, name=OUT_BLOCK)
    return te.compute((*lead, rows, n), lambda *i: out(*i), name=SPLIT_CROP_BLOCK)


def int_bmm_te(a, b, mr: int, nr: int):
    """``a @ b`` over the last two axes, int32 accumulate, for integer ``a``/``b`` of equal rank."""
    from tvm import te
    from tvm import tirx as tir

    *lead, rows, k = (int(d) for d in a.shape)
    n = int(b.shape[-1])
    rows_p, cols_p = ceil_to(rows, mr), ceil_to(n, LANES * nr)
    red = te.reduce_axis((0, k), name="k")
    acc = te.compute((*lead, rows_p, cols_p), lambda *i: te.sum(
        a(*i[:-2], tir.min(i[-2], rows - 1), red).astype("int32")
        * b(*i[:-2], red, tir.min(i[-1], n - 1)).astype("int32"), axis=red), name=ACC_BLOCK,
        attrs=tile_attrs(mr, nr))
    return te.compute((*lead, rows, n), lambda *i: acc(*i), name=OUT_BLOCK)
