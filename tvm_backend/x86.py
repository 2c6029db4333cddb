"""x86 host detection and the AVX-512 VNNI tensor intrinsic intvit's int8 GEMM schedule uses.

``vpdpbusd`` (AVX-512 VNNI) computes, for 16 int32 lanes ``i``,
``C[i] += Σ_{k<4} A[k]·B[i, k]`` with ``A`` *unsigned* 8-bit (one 4-byte group
broadcast to every lane) and ``B`` signed 8-bit: 64 multiply-adds per
instruction. That is why activations enter the GEMM as ``x + 128`` (see
``ops.unsigned_shift_compensation``) and weights are packed as
``[N/16, K/4, 16, 4]`` panels.

TVM 0.27 ships a ``dot_16x4_vnni`` intrinsic, but it passes ``<16 x i32>``
operands to ``llvm.x86.avx512.vpdpbusd.512``, which the wheel's LLVM 22
declares with ``<64 x i8>`` operands (verifier error). We register our own
with byte-vector operands. We also avoid importing
``tvm.s_tir.tensor_intrin`` (15–30 s of TVMScript parsing at import).
"""
from __future__ import annotations

import functools

VNNI_INTRIN = "intvit_dot_16x4_u8s8s32_vnni"
LANES, GROUP = 16, 4          # int32 output lanes per instruction, bytes per lane


@functools.lru_cache(maxsize=None)
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (``"sapphirerapids"``, ``"znver4"``, ...)."""
    from tvm.target import codegen
    return str(codegen.llvm_get_system_cpu())


@functools.lru_cache(maxsize=None)
def has_features(mcpu: str, *features: str) -> bool:
    """Whether LLVM's CPU model ``mcpu`` has every feature (``"avx512vnni"``, ...)."""
    import tvm
    from tvm.target import codegen
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    try:
        return all(bool(codegen.llvm_cpu_has_features(f, target)) for f in features)
    except Exception:       # an mcpu LLVM does not know: assume nothing
        return False


def target_has_vnni(target) -> bool:
    """True when ``target`` (a ``tvm.target.Target`` of kind llvm) may emit AVX-512 VNNI."""
    mcpu = str(target.attrs.get("mcpu", "")) if "mcpu" in target.attrs else ""
    mattr = [str(a) for a in target.attrs.get("mattr", [])] if "mattr" in target.attrs else []
    if "+avx512vnni" in mattr and "+avx512bw" in mattr:
        return True
    return bool(mcpu) and has_features(mcpu, "avx512vnni", "avx512bw")


@functools.lru_cache(maxsize=None)
def register_vnni_intrinsic() -> str:
    """Register (once) the ``C[16] += A[4]·B[16, 4]`` u8×s8→s32 VNNI intrinsic; returns its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            # one expression: named temporaries here would become a heap workspace per call
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 16),
                              dtype="int8x64"),
                b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(VNNI_INTRIN, desc, impl, override=True)
    return VNNI_INTRIN
