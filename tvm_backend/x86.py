"""CPU host detection (x86-64 and AArch64) and the x86 dot-product tensor intrinsics of the CPU GEMM schedules.

``vpdpbusd`` computes, for 16 int32 lanes ``i``, ``C[i] += Σ_{k<4} A[k]·B[i, k]``
with ``A`` *unsigned* 8-bit (one 4-byte group broadcast to every lane) and
``B`` signed 8-bit: 64 multiply-adds per instruction. That is why int8
activations enter the GEMM as ``x + 128`` (see ``ops.unsigned_shift_compensation``)
and weights are packed as ``[N/16, K/4, 16, 4]`` panels. ``vpdpwssd`` is the
signed 16-bit form (``k < 2``, 32 multiply-adds): attention's 16-bit
probabilities times the values.

On CPUs without VNNI (AVX2 only, or AVX-512 without VNNI) the int8 GEMMs
take the 16-bit form instead (``gemm.word_gemm``): ``vpmaddwd`` computes
``Σ_{k<2} A[k]·B[i, k]`` on signed 16-bit operands into int32 lanes, and a
``vpaddd`` accumulates (``PMADDWD_512``: 16 lanes per zmm; ``PMADDWD_256``:
8 lanes per ymm, two per 16-lane panel). int8 values widened to int16 make
every product and pair sum exact, and ``vpmaddwd``'s one overflow case
(``-32768·-32768`` twice) wraps exactly as ``vpdpwssd`` does, so the result
is bit-identical to the VNNI kernels on the same panels. (``vpmaddubsw``,
the 8-bit form, saturates its 16-bit pair sums for u8 × s8 and is not used.)
CPUs with AVX-VNNI but no AVX-512 (Intel's client cores since Alder Lake,
Sierra Forest) run the VNNI form on ymm (``VPDPBUSD_256``,
``VPDPWSSD_256``: the VEX encoding of the same instructions). ``gemm_isa``
says which instructions each instruction-set name uses.

TVM 0.27 ships a ``dot_16x4_vnni`` intrinsic, but it passes ``<16 x i32>``
operands to ``llvm.x86.avx512.vpdpbusd.512``, which the wheel's LLVM 22
declares with ``<64 x i8>`` operands (verifier error). We register our own
with byte/word-vector operands. We also avoid importing
``tvm.s_tir.tensor_intrin`` (15–30 s of TVMScript parsing at import).
"""
from __future__ import annotations

import dataclasses
import functools

from .arm import SDOT, TRIPLE, is_aarch64
from .dots import DotInstruction, dot_group, register_dot_intrinsic  # noqa: F401 (re-exported)

LANES = 16          # int32 output lanes of a panel (one zmm; two ymm)


@functools.lru_cache(maxsize=None)
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (``"sapphirerapids"``, ``"znver4"``, ...)."""
    from tvm.target import codegen
    return str(codegen.llvm_get_system_cpu())


X86_TRIPLE = "x86_64-unknown-linux-gnu"


def is_cpu_name(cpu: str) -> bool:
    """Whether LLVM knows ``cpu`` as an x86-64 CPU."""
    from tvm.target import codegen
    return isinstance(cpu, str) and bool(codegen.llvm_is_valid_cpu(cpu, X86_TRIPLE))


@functools.lru_cache(maxsize=None)
def has_features(mcpu: str, *features: str, triple: str | None = None) -> bool:
    """Whether LLVM's CPU model ``mcpu`` (for ``triple``; default this machine's architecture) has every feature
    (``"avx512vnni"``, ``"dotprod"``, ...)."""
    import tvm
    from tvm.target import codegen
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, **({"mtriple": triple} if triple else {})})
    try:
        return all(bool(codegen.llvm_cpu_has_features(f, target)) for f in features)
    except Exception:       # an mcpu LLVM does not know: assume nothing
        return False


ISA_FEATURES = ("sse4.2", "avx", "avx2", "fma", "avxvnni", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni",
                "avx512vbmi")
AARCH64_FEATURES = ("neon", "dotprod", "i8mm")


def isa_features(mcpu: str, mattr=(), triple: str | None = None) -> list[str]:
    """The extensions LLVM may use when compiling for ``mcpu`` (for ``triple``) with the extra features
    ``mattr`` (``"+avx2"``, ...): what a host must have to run the module (x86's ``ISA_FEATURES``, or
    ``AARCH64_FEATURES`` for an AArch64 triple, or on an AArch64 machine without one)."""
    triple = llvm_triple({"mtriple": triple} if triple else {})
    names = AARCH64_FEATURES if triple == TRIPLE else ISA_FEATURES
    return [f for f in names if has_features(mcpu, f, triple=triple) or f"+{f}" in mattr]


def llvm_triple(target) -> str | None:
    """The triple to ask LLVM about ``target``'s CPU with (a ``tvm.target.Target`` or its dict): its own, the
    AArch64 one where it has none and this machine is AArch64, else None (LLVM's default: x86-64 here)."""
    get = target.get if isinstance(target, dict) else (lambda k, d=None: target.attrs.get(k, d))
    return str(get("mtriple", "") or "") or (TRIPLE if is_aarch64(target) else None)


# /proc/cpuinfo's names of the extensions intvit's kernels choose by → LLVM's: x86's ``flags`` line, then
# AArch64's ``Features`` line
CPUINFO_FEATURES = {"sse4_2": "sse4.2", "avx": "avx", "avx2": "avx2", "fma": "fma", "avx_vnni": "avxvnni",
                    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
                    "avx512_vnni": "avx512vnni", "avx512vbmi": "avx512vbmi", "amx_tile": "amx-tile",
                    "amx_int8": "amx-int8",
                    "asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm"}


def reported_features(cpuinfo: str | None = None) -> tuple[str, ...]:
    """LLVM's names of the extensions Linux reports for this CPU (the first ``flags`` line of
    ``/proc/cpuinfo``, or of ``cpuinfo``; on AArch64 its ``Features`` line), among ``CPUINFO_FEATURES``; ()
    where there is no such file."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return ()
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith(("flags", "Features"))), [])
    return tuple(CPUINFO_FEATURES[f] for f in flags if f in CPUINFO_FEATURES)


@functools.lru_cache(maxsize=None)
def host_extra_features() -> tuple[str, ...]:
    """The extensions this CPU has (``reported_features``) that LLVM's model of it (``host_cpu``) lacks: a CPU
    newer than the LLVM in TVM's wheel, or a VM that hides its model, is then still compiled for what it has
    (``build.resolve_target`` adds them as ``mattr``). LLVM once named this project's AMX Xeon
    ``rocketlake``, which has no AMX."""
    return tuple(f for f in reported_features() if not has_features(host_cpu(), f))


def host_has(*features: str) -> bool:
    """Whether this CPU has every one of ``features``: by LLVM's model of it, or as Linux reports it."""
    return all(has_features(host_cpu(), f) or f in host_extra_features() for f in features)


def vectorize_512(mcpu: str) -> bool:
    """Whether LLVM should auto-vectorize for ``mcpu`` with 512-bit registers instead of its default 256.

    LLVM tunes AVX-512 CPUs to prefer 256-bit vectors (``prefer-256-bit``),
    against the clock drop that 512-bit code cost Skylake-SP. intvit's row
    kernels (Shiftmax, LayerNorm, requant epilogues) are integer vector code
    that then runs 8 int32 lanes where 16 fit; on CPUs with AMX-INT8
    (Sapphire Rapids and later) turning the preference off made DeiT-S batch 8
    1.12–1.14× faster end to end on this project's machine (two interleaved
    A/B runs, identical outputs). Older AVX-512 CPUs keep LLVM's default.
    """
    return bool(mcpu) and has_features(mcpu, "amx-int8", "avx512f")


def target_has(target, *features: str) -> bool:
    """True when ``target`` (a ``tvm.target.Target`` of kind llvm) may emit every one of ``features``
    (LLVM's names), by its ``mattr`` or its ``mcpu``."""
    mcpu = str(target.attrs.get("mcpu", "")) if "mcpu" in target.attrs else ""
    mattr = [str(a) for a in target.attrs.get("mattr", [])] if "mattr" in target.attrs else []
    if all(f"+{f}" in mattr for f in features):
        return True
    return bool(mcpu) and has_features(mcpu, *features, triple=llvm_triple(target))


def target_has_vnni(target) -> bool:
    """True when ``target`` may emit AVX-512 VNNI."""
    return target_has(target, "avx512vnni", "avx512bw")


def target_has_vbmi(target) -> bool:
    """True when ``target`` may emit AVX-512 VBMI (``vpermi2b``: the GELU byte table, ``byte_table``)."""
    return target_has(target, "avx512vbmi", "avx512vl")


VPDPBUSD = DotInstruction("intvit_dot_16x4_u8s8s32", "llvm.x86.avx512.vpdpbusd.512", 4, "uint8", "int8", "int8x64")
VPDPWSSD = DotInstruction("intvit_dot_16x2_s16s16s32", "llvm.x86.avx512.vpdpwssd.512", 2, "int16", "int16",
                          "int16x32")
DOT_INSTRUCTIONS = {d.a_dtype: d for d in (VPDPBUSD, VPDPWSSD)}     # by the activation operand's dtype
VPDPBUSD_256 = DotInstruction("intvit_dot_16x4_u8s8s32_ymm", "llvm.x86.avx512.vpdpbusd.256", 4, "uint8", "int8",
                              "int8x32", lanes=8)
VPDPWSSD_256 = DotInstruction("intvit_dot_16x2_s16s16s32_ymm", "llvm.x86.avx512.vpdpwssd.256", 2, "int16", "int16",
                              "int16x16", lanes=8)
PMADDWD_512 = DotInstruction("intvit_dot_16x2_s16s16s32_pmaddwd512", "llvm.x86.avx512.pmaddw.d.512", 2, "int16",
                             "int16", "int16x32", lanes=16, accumulates=False)
PMADDWD_256 = DotInstruction("intvit_dot_16x2_s16s16s32_pmaddwd256", "llvm.x86.avx2.pmadd.wd", 2, "int16",
                             "int16", "int16x16", lanes=8, accumulates=False)


@dataclasses.dataclass(frozen=True)
class GemmIsa:
    """How the int8 GEMMs run on one CPU instruction set (``gemm_isa``).

    ``int8_dot``: the operand form the int8 GEMMs are imported in
    (``gemm.int8_gemm``): ``VPDPBUSD`` (activations shifted to uint8, x86
    VNNI and AMX), ``VPDPWSSD`` (the 16-bit form, ``gemm.word_gemm``) or
    ``arm.SDOT`` (signed int8 as they are); ``vectors``: the register file
    their tiles are sized for (``"zmm"``: 32 × 512 bits, ``"ymm"``: 16 × 256
    bits, ``"neon"``: 32 × 128 bits; ``gemm.gemm_vectors``); ``dots``: the
    tensor intrinsic for each staged activation dtype (a kernel whose dtype
    is missing runs as plain vectorized multiply-adds).
    """
    name: str
    int8_dot: DotInstruction
    vectors: str
    dots: dict


def gemm_isa(isa: str | None, target) -> GemmIsa:
    """The ``GemmIsa`` of a CPU instruction set name (``build.ISAS``; ``"amx"`` here covers the GEMMs AMX does
    not take) on ``target``:

    * ``"amx"``/``"vnni"``: ``vpdpbusd``/``vpdpwssd`` on zmm (AVX-512 VNNI);
    * ``"avxvnni"``: the same instructions on ymm, VEX-encoded (AVX-VNNI: Alder Lake and later Intel client
      cores, Sierra Forest; no AVX-512);
    * ``"avx2"``: the 16-bit form with ``vpmaddwd``, zmm where the target has AVX-512BW, else ymm;
    * ``"dotprod"``: AArch64's ``sdot`` on signed int8 (``arm.SDOT``), NEON registers;
    * ``"generic"`` or None: no tensor intrinsic (on AArch64 in the ``sdot`` operand form).
    """
    if isa in ("amx", "vnni"):
        return GemmIsa(isa, VPDPBUSD, "zmm", dict(DOT_INSTRUCTIONS))
    if isa == "avxvnni":
        return GemmIsa(isa, VPDPBUSD, "ymm", {"uint8": VPDPBUSD_256, "int16": VPDPWSSD_256})
    if isa == "avx2":
        zmm = target_has(target, "avx512bw", "avx512f")
        return GemmIsa(isa, VPDPWSSD, "zmm" if zmm else "ymm", {"int16": PMADDWD_512 if zmm else PMADDWD_256})
    if isa == "dotprod":
        return GemmIsa(isa, SDOT, "neon", {"int8": SDOT})
    if is_aarch64(target):
        return GemmIsa(isa or "generic", SDOT, "neon", {})
    return GemmIsa(isa or "generic", VPDPBUSD, "zmm", {})


ALL_DOTS = (VPDPBUSD, VPDPWSSD, VPDPBUSD_256, VPDPWSSD_256, PMADDWD_512, PMADDWD_256)


def target_has_avxvnni(target) -> bool:
    """True when ``target`` may emit AVX-VNNI (``vpdpbusd`` on ymm without AVX-512)."""
    return target_has(target, "avxvnni")


def target_has_dotprod(target) -> bool:
    """True when ``target`` (an AArch64 llvm target) may emit ``sdot`` (``arm.SDOT``)."""
    return is_aarch64(target) and target_has(target, "dotprod")


def target_has_avx2(target) -> bool:
    """True when ``target`` may emit AVX2 (``vpmaddwd`` on ymm: the 16-bit GEMM form, ``gemm.word_gemm``)."""
    return target_has(target, "avx2")
