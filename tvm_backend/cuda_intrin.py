"""The CUDA ``__dp4a`` instruction as a TVM tensor intrinsic (the GPU GEMM schedule's inner step).

``__dp4a(a, b, c)`` computes ``c + Σ_{k<4} a[k]·b[k]`` for four signed bytes
packed in each 32-bit operand (sm_61 and later), so one instruction does a
4-deep slice of an int8 GEMM's reduction: ``acc[r, j] += Σ_k lhs[r, k]·rhs[j, k]``
for ``k`` in one aligned group of four. Both operands are read from shared
memory as ``int8x4`` (one 32-bit word), the accumulator lives in a register.
Registered here (a few lines of TVMScript) rather than imported from
``tvm.s_tir.tensor_intrin``, whose import parses every target's intrinsics
(15–30 s).
"""
from __future__ import annotations

import functools

DP4A = "intvit_dp4a_s8s8s32"
GROUP = 4


@functools.lru_cache(maxsize=None)
def register_dp4a() -> str:
    """Register (once) the ``__dp4a`` intrinsic; returns its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             b: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             c: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0], a[0:4], b[0:4])
            T.writes(c[0])
            for k in range(4):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    c[0] = c[0] + T.cast(a[vk], "int32") * T.cast(b[vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             b: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
             c: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0], a[0:4], b[0:4])
            T.writes(c[0])
            c[0] = T.call_pure_extern("__dp4a", a.vload([0], "int8x4"), b.vload([0], "int8x4"), c[0],
                                      dtype="int32")

    TensorIntrin.register(DP4A, desc, impl, override=True)
    return DP4A
