"""One dot-product instruction as a TVM tensor intrinsic: the form every CPU GEMM schedule tensorizes with.

An instruction ``DotInstruction`` computes, for 16 int32 lanes ``i`` of a
panel, ``C[i] += Σ_{k<group} A[k]·B[i, k]``: ``A`` one ``group``-element
activation operand broadcast to every lane, ``B`` a ``[16, group]`` weight
panel, one 32-bit group per lane (``dot_group``). The x86 instructions are in
``x86`` (``vpdpbusd``, ``vpdpwssd``, ``vpmaddwd``), AArch64's ``sdot`` in
``arm``; ``register_dot_intrinsic`` turns any of them into a tensor
intrinsic.
"""
from __future__ import annotations

import dataclasses
import functools


@dataclasses.dataclass(frozen=True)
class DotInstruction:
    """One dot-product instruction (x86 or AArch64) as a 16-lane tensor intrinsic.

    ``C[i] += Σ_{k<group} A[k]·B[i, k]`` for ``i < 16``: ``A`` is one
    ``group``-element operand broadcast to every int32 lane, ``B`` a
    ``[16, group]`` panel. ``lanes``: the int32 lanes of one instruction (16
    lanes take ``16 // lanes`` of them); ``accumulates``: whether it adds into
    ``C`` itself (VNNI, ``sdot``) or its products are added by a ``vpaddd``.
    """
    name: str
    llvm: str
    group: int
    a_dtype: str
    b_dtype: str
    operand_vector: str      # how LLVM 22 declares the byte/word operands
    lanes: int = 16
    accumulates: bool = True


def dot_group(dtype: str) -> int:
    """The elements of one dot-product group for an operand of ``dtype``: each instruction sums one 32-bit
    group per int32 lane (4 bytes, or 2 int16)."""
    import tvm
    return 32 // tvm.DataType(dtype).bits


@functools.lru_cache(maxsize=None)
def register_dot_intrinsic(dot: DotInstruction) -> str:
    """Register (once) ``dot`` as a TVM tensor intrinsic; returns its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    g, a_dt, b_dt, vec, llvm = dot.group, dot.a_dtype, dot.b_dtype, dot.operand_vector, dot.llvm
    a_group = f"{a_dt}x{g}"

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((g,), a_dt, offset_factor=1), b: T.Buffer((16, g), b_dt, offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:g], b[0:16, 0:g])
            T.writes(c[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, g):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    lanes, halves = dot.lanes, 16 // dot.lanes
    acc_vec = f"int32x{lanes}"

    def step(c_part, a_part, b_part):
        """One instruction on ``lanes`` int32 lanes: adding into ``c_part`` itself (VNNI), or by a ``vpaddd``."""
        if dot.accumulates:
            return T.call_llvm_pure_intrin(acc_vec, llvm, c_part, a_part, b_part)
        return c_part + T.call_llvm_pure_intrin(acc_vec, llvm, a_part, b_part)

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((g,), a_dt, offset_factor=1), b: T.Buffer((16, g), b_dt, offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:g], b[0:16, 0:g])
            T.writes(c[0:16])
            # one expression per part: named temporaries here would become a heap workspace per call
            for h in T.unroll(halves):
                c[T.ramp(h * lanes, 1, lanes)] = step(
                    c.vload([h * lanes], dtype=acc_vec),
                    T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], a_group), dtype="int32"), lanes), dtype=vec),
                    T.reinterpret(b.vload([h * lanes, 0], dtype=vec), dtype=vec))

    TensorIntrin.register(dot.name, desc, impl, override=True)
    return dot.name
