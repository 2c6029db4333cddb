"""AArch64 (ARM64) CPUs: which ones intvit compiles for, what they can run, and the NEON dot product.

``sdot`` (Armv8.2-A's dot-product extension, ``dotprod``: Neoverse N1 /
AWS Graviton2 and later, Ampere Altra, Apple M1 and later, Cortex-A76 and
later) computes, for 4 int32 lanes ``i``, ``C[i] += Σ_{k<4} A[k]·B[i, k]``
with *both* operands signed 8-bit: 16 multiply-adds per 128-bit
instruction. The int8 GEMMs therefore take int8 activations as they are —
no ``+128`` shift and no compensation (x86's ``vpdpbusd`` needs an unsigned
operand) — against the same ``[N/16, K/4, 16, 4]`` weight panels, four
``sdot`` per 16-lane panel (``SDOT``). Every product and every 4-term sum
of int8 values fits int32 exactly, so the result is the GEMM's.

A·V (16-bit probabilities × int8 values) has no 8-bit form that holds a
probability (``p < 2**15`` needs two bytes, and ``sdot`` takes one signed
byte), so it keeps its int16 panels and runs as vectorized widening
multiply-adds.

A module for an ARM CPU is built here with LLVM's AArch64 backend
(``--cpu neoverse-n1``, ``apple-m1``, ...: ``build.resolve_target``) and
linked by a cross compiler (``cross_compiler``), or built natively on the
ARM machine, where ``/proc/cpuinfo``'s ``Features`` line tells what the CPU
has (``x86.reported_features``).
"""
from __future__ import annotations

import shutil

from .dots import DotInstruction

TRIPLE = "aarch64-linux-gnu"

SDOT = DotInstruction("intvit_dot_16x4_s8s8s32_neon", "llvm.aarch64.neon.sdot.v4i32.v16i8", 4, "int8", "int8",
                      "int8x16", lanes=4)


def machine_arch() -> str:
    """This machine's CPU architecture as a module's sidecar names it: ``"aarch64"`` or ``"x86_64"``."""
    import platform
    machine = platform.machine()
    return "aarch64" if machine in ("aarch64", "arm64") else machine


def target_arch(target) -> str:
    """The CPU architecture an llvm target (a ``tvm.target.Target`` or a ``build.resolve_target`` dict)
    compiles for: its triple's, or, without one, this machine's."""
    get = target.get if isinstance(target, dict) else (lambda k, d=None: target.attrs.get(k, d))
    triple = str(get("mtriple", "") or "")
    if not triple:
        return machine_arch()
    arch = triple.split("-")[0]
    return "aarch64" if arch in ("aarch64", "arm64") else arch


def is_aarch64(target) -> bool:
    """Whether ``target`` (a ``tvm.target.Target`` of kind llvm, or its dict) compiles for AArch64."""
    return target_arch(target) == "aarch64"


def is_cpu_name(cpu: str) -> bool:
    """Whether LLVM knows ``cpu`` as an AArch64 CPU (``neoverse-n1``, ``apple-m1``, ``cortex-a76``, ...)."""
    from tvm.target import codegen
    return isinstance(cpu, str) and bool(codegen.llvm_is_valid_cpu(cpu, TRIPLE))


def cross_compiler():
    """The ``fcompile`` that links an AArch64 module on this (non-ARM) machine: ``aarch64-linux-gnu-gcc``
    (Debian/Ubuntu ``gcc-aarch64-linux-gnu``), else one clear error before anything is compiled."""
    from .errors import UnknownTargetError
    cc = shutil.which("aarch64-linux-gnu-gcc")
    if cc is None:
        raise UnknownTargetError(
            "linking a module for an ARM64 CPU on this machine needs the cross compiler aarch64-linux-gnu-gcc, "
            "which is not on PATH: install it (Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu), or run "
            "`intvit compile` on the ARM machine itself")
    from tvm.support import cc as tvm_cc
    return tvm_cc.cross_compiler(cc)


def needs_cross_compiler(target) -> bool:
    """Whether linking a module for ``target`` (an llvm target) needs ``cross_compiler``: it is AArch64 and this
    machine is not."""
    return is_aarch64(target) and machine_arch() != "aarch64"
