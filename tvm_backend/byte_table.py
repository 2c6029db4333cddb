"""A 256-entry int8 table looked up 32 bytes at a time: the GELU table after fc1 on AMX machines.

**What it computes.** ``out[i] = T[v[i] + 128]`` for int8 ``v`` and an int8
table ``T`` of 256 entries (``ops.lookup`` with ``lo = −128``): the fc1
kernel's GELU (``ops.gelu_table``), applied to the requantized int8 output
of each 32 × 32 block while it is in L1.

**Why not a gather.** As a fused epilogue the lookup vectorizes as
``vpgatherdd``; measured on DeiT-S's fc1 at batch 8 (AMX, 2 threads) the
kernel took 2.1 ms with it against 0.8 ms with the plain requant, so the
gather cost more than the whole GEMM. AVX-512 VBMI's ``vpermi2b`` looks up
32 bytes in a 64-byte table in one instruction (index bits 0–5; on a
``ymm``, bit 5 picks the first or the second 32-byte half). With
``u = v + 128``, bits 0–5 of ``u`` are those of ``v`` (adding 128 flips bit
7 only), and bits 6–7 of ``u`` — which quarter of ``T`` — follow from ``v``'s
sign and bit 6:

    quarter q = 0, 1, 2, 3   ⇔   v in [−128, −65], [−64, −1], [0, 63], [64, 127]
    out = select(v < −64, P0, select(v < 0, P1, select(v < 64, P2, P3)))
    P_q = vpermi2b(T[64q : 64q+32], v, T[64q+32 : 64q+64])

four ``vpermi2b`` and three masked blends per 32 bytes, no memory access
but the table's 256 bytes. Every CPU with AMX-INT8 (Sapphire Rapids and
later) has VBMI; this module is used by the AMX schedule only
(``amx.AMX_FEATURES`` lists ``avx512vbmi``).

**The TE form** (``byte_table_te``) writes the lookup as a sum over the 256
entries of which exactly one is non-zero,

    out[i] = Σ_{t<256} (v[i] + 128 == t ? T[t] : 0),

because TVM's tensorize compares read regions and a data-dependent read
``T[v[i] + 128]`` has none it can match; the sum reads ``T[0:256]``. The
AMX schedule always replaces the whole sum by the instruction sequence
above (``tensorize_byte_table``); ``schedules`` refuses a kernel that
holds this block on any other path, rather than run 256 selects per byte.
"""
from __future__ import annotations

import functools

import numpy as np

BYTE_TABLE_BLOCK = "byte_table"
BYTE_TABLE_OUT_BLOCK = "byte_table_out"     # the copy of a block's real rows into the output (gemm)
ENTRIES = 256
LOOKUP_LANES = 32                 # bytes per lookup step (one ymm)
QUARTER = 64                      # table bytes one vpermi2b pair covers
_VPERMI2B = "llvm.x86.avx512.vpermi2var.qi.256"


def byte_table_applies(values: np.ndarray, lo: int, low: int, high: int) -> bool:
    """Whether a lookup ``values[x − lo]`` after a requant to ``[low, high]`` is a 256-entry int8 byte table
    over the whole int8 range (the only form ``byte_table_te`` takes)."""
    return (values.dtype == np.int8 and values.shape == (ENTRIES,) and int(lo) == -128
            and (int(low), int(high)) == (-128, 127))


def byte_table_te(v, table, index=None, shape=None):
    """``out[i] = table[v[index(i)] + 128]`` (int8 ``v``, int8 ``table[256]``; ``index`` default identity,
    ``shape`` default ``v``'s) in the sum form the schedule tensorizes."""
    from tvm import te
    from tvm import tirx as tir
    t = te.reduce_axis((0, ENTRIES), name="entry")
    index = index or (lambda *i: i)
    return te.compute(shape or v.shape, lambda *i: te.sum(
        tir.Select(v(*index(*i)).astype(str(t.dom.extent.ty.dtype)) + tir.const(128, str(t.dom.extent.ty.dtype)) == t, table[t],
                   tir.const(0, "int8")), axis=t),
        name=BYTE_TABLE_BLOCK)


@functools.lru_cache(maxsize=None)
def register_byte_table_intrinsics(index_dtype: str = "int32") -> tuple[str, str]:
    """Register (once) the tensor-intrinsic pair for 32 lookups whose entry index is ``index_dtype`` (the
    TE index type: int64 under Relax); returns ``(init name, update name)``.

    As with ``amx.register_amx_intrinsics`` the two are one unit: the update's
    implementation writes the 32 results without reading them, so the init's
    implementation is empty. Apply both (``tensorize_byte_table``).
    """
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    lanes, vec = LOOKUP_LANES, f"int8x{LOOKUP_LANES}"

    @T.prim_func(s_tir=True)
    def init_desc(o: T.Buffer((lanes,), "int8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads()
            T.writes(o[0:lanes])
            for j in T.serial(lanes):
                with T.sblock("init"):
                    vj = T.axis.remap("S", [j])
                    o[vj] = T.int8(0)

    @T.prim_func(s_tir=True)
    def init_impl(o: T.Buffer((lanes,), "int8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads()
            T.writes(o[0:lanes])
            T.evaluate(0)

    @T.prim_func(s_tir=True)
    def desc(o: T.Buffer((lanes,), "int8", offset_factor=1), v: T.Buffer((lanes,), "int8", offset_factor=1),
             table: T.Buffer((ENTRIES,), "int8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(o[0:lanes], v[0:lanes], table[0:ENTRIES])
            T.writes(o[0:lanes])
            for j, t in T.grid(T.Cast(index_dtype, lanes), T.Cast(index_dtype, ENTRIES)):
                with T.sblock("update"):
                    vj, vt = T.axis.remap("SR", [j, t])
                    o[vj] = o[vj] + T.Select(T.Cast(index_dtype, v[vj]) + T.Cast(index_dtype, 128) == vt,
                                             table[vt], T.int8(0))

    def quarter(table, v, q):
        return T.call_llvm_pure_intrin(vec, _VPERMI2B, table.vload([QUARTER * q], vec), v.vload([0], vec),
                                       table.vload([QUARTER * q + lanes], vec))

    def below(v, c):
        return v.vload([0], vec) < T.broadcast(T.int8(c), lanes)

    @T.prim_func(s_tir=True)
    def impl(o: T.Buffer((lanes,), "int8", offset_factor=1), v: T.Buffer((lanes,), "int8", offset_factor=1),
             table: T.Buffer((ENTRIES,), "int8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(o[0:lanes], v[0:lanes], table[0:ENTRIES])
            T.writes(o[0:lanes])
            # one expression: named temporaries here would become a heap workspace per call
            o[T.ramp(T.int32(0), 1, lanes)] = T.Select(
                below(v, -64), quarter(table, v, 0), T.Select(
                    below(v, 0), quarter(table, v, 1), T.Select(
                        below(v, 64), quarter(table, v, 2), quarter(table, v, 3))))

    name = f"intvit_byte_table_{lanes}_{index_dtype}"
    TensorIntrin.register(name + "_init", init_desc, init_impl, override=True)
    TensorIntrin.register(name, desc, impl, override=True)
    return name + "_init", name


def tensorize_byte_table(sch, block) -> None:
    """Replace the ``byte_table_te`` block's sum by ``vpermi2b`` lookups, 32 bytes per step (``sch`` already
    placed it; its innermost spatial loop must have a multiple of 32 iterations)."""
    *_, cols, entries = sch.get_loops(block)
    if int(sch.get(cols).extent) % LOOKUP_LANES:
        raise ValueError(f"a byte-table lookup needs rows of a multiple of {LOOKUP_LANES} bytes, "
                         f"got {sch.get(cols).extent}")
    _, lanes = sch.split(cols, [None, LOOKUP_LANES])
    init_intrin, update_intrin = register_byte_table_intrinsics(str(sch.get(block).iter_vars[-1].dom.extent.ty.dtype))
    init = sch.decompose_reduction(block, lanes)
    sch.tensorize(lanes, update_intrin)
    sch.tensorize(sch.get_loops(init)[-1], init_intrin)
