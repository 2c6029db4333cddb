"""Run intvit's AMX kernels exactly on a CPU without AMX: a software model of the tile instructions.

The AMX schedule (``amx``) issues six instructions through LLVM intrinsics:
``ldtilecfg``, ``tilezero``, ``tileloadd64``, ``tdpbusd``, ``tilestored64``,
``tilerelease``, plus the ``arch_prctl`` request for the tile state at each
kernel's entry. Inside ``emulation()`` the same schedule calls functions of
``amx_emulator.c`` instead, with the same operands (tile numbers, addresses,
strides), and that file models the instructions as the Intel SDM defines
them: per-thread tile configuration and registers, ``tdpbusd``'s
``C[m, n] += Σ_k Σ_q u8(A[m, 4k+q]) · s8(B[k, 4n+q])`` in wrapping int32,
and a fault wherever the hardware would raise #UD or #GP (a tile used with no
configuration loaded in its thread, shapes that disagree, a bad
configuration). Everything else in the module (staging, padding, the fused
requant and GELU-table epilogues, the parallel tasks, the tile
configuration loaded per task and released after its last block) is the
code the AMX build runs, compiled for this CPU.

So on any x86-64 Linux CPU with AVX-512 VNNI and VBMI (what an AMX module's
other kernels use) and a C compiler, CI checks the AMX schedule bit-exact
against ``ops``, ONNX Runtime and the VNNI build. What it cannot check is
LLVM's lowering of the real intrinsics (``amx`` tests compile that for
``sapphirerapids`` and read the assembly) and the speed.

Usage (what ``tests/test_tvm_amx.py`` does where the CPU has no AMX)::

    with amx_emulator.emulation():
        module = compile_onnx(proto, "llvm", batch=8, isa="amx")
    logits, int_logits = module(images)     # raises AmxEmulatorFault if a tile instruction faulted

An emulated module runs in the process that compiled it; it is not written
to a file (``runtime.compile_to_file`` refuses).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextvars import ContextVar
from pathlib import Path

SOURCE = Path(__file__).with_name("amx_emulator.c")
PREFIX = "intvit_amx_"          # the C functions: PREFIX + the LLVM intrinsic's name after "llvm.x86."
_EMULATING: ContextVar[bool] = ContextVar("intvit_amx_emulation", default=False)


class AmxEmulatorFault(RuntimeError):
    """An emulated tile instruction did what raises #UD or #GP on an AMX CPU."""


class AmxEmulatorUnavailable(RuntimeError):
    """This machine cannot run the AMX emulator (not x86-64 Linux, or no C compiler)."""


def active() -> bool:
    """Whether the kernels being scheduled now call the emulator instead of the tile instructions."""
    return _EMULATING.get()


@contextlib.contextmanager
def emulation():
    """Schedule AMX kernels against the emulator while inside (and load it into this process)."""
    load()
    token = _EMULATING.set(True)
    try:
        yield
    finally:
        _EMULATING.reset(token)


def unavailable_reason() -> str | None:
    """Why the emulator cannot run here, or None when it can."""
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        return f"the AMX emulator runs on x86-64 Linux, this is {sys.platform} {platform.machine()}"
    if _compiler() is None:
        return "the AMX emulator needs a C compiler (cc or gcc on PATH, or $CC)"
    return None


def _compiler() -> str | None:
    return next((c for c in (os.environ.get("CC"), "cc", "gcc") if c and shutil.which(c)), None)


@functools.lru_cache(maxsize=None)
def load() -> ctypes.CDLL:
    """Compile ``amx_emulator.c`` into a fresh private folder and load it with global symbols, so that
    TVM's JIT and modules loaded later resolve the kernels' calls to it; once per process."""
    reason = unavailable_reason()
    if reason:
        raise AmxEmulatorUnavailable(reason)
    folder = tempfile.mkdtemp(prefix="intvit-amx-emulator-")
    lib_path = os.path.join(folder, "libintvit_amx_emulator.so")
    cmd = [_compiler(), "-O3", "-shared", "-fPIC", str(SOURCE), "-o", lib_path]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AmxEmulatorUnavailable(f"compiling the AMX emulator failed ({' '.join(cmd)}): {done.stderr.strip()}")
    lib = ctypes.CDLL(lib_path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    lib.intvit_amx_faults.restype = ctypes.c_int64
    lib.intvit_amx_fault_message.restype = ctypes.c_char_p
    lib.intvit_amx_set_permission.argtypes = [ctypes.c_int32]
    return lib


def check() -> None:
    """Raise ``AmxEmulatorFault`` (and clear the record) if an emulated tile instruction faulted since the
    last check."""
    lib = load()
    count = lib.intvit_amx_faults()
    if count:
        message = lib.intvit_amx_fault_message().decode()
        lib.intvit_amx_clear_faults()
        raise AmxEmulatorFault(f"{count} emulated AMX instruction(s) faulted; the first: {message}")


@contextlib.contextmanager
def tile_permission(granted: bool):
    """Make the emulated ``arch_prctl`` tile-state request succeed or fail while inside (a host that
    refuses AMX, for the kernels' own check at entry)."""
    lib = load()
    lib.intvit_amx_set_permission(int(granted))
    try:
        yield
    finally:
        lib.intvit_amx_set_permission(1)
