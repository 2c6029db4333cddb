"""CUDA targets: the GPU arch, nvcc at compile time, and the device code embedded in the module.

TVM 0.27's CUDA codegen stores CUDA *source* in the module and compiles it
when the module is loaded (``tvm_callback_cuda_compile``, i.e. nvcc or NVRTC
on the machine that runs it). intvit compiles the device code with nvcc
while it builds instead, so a compile error surfaces in ``intvit compile``
and the running machine needs no CUDA compiler:

1. while ``tvm.compile`` runs for a CUDA target, ``embedding`` installs
   TVM's ``tvm_callback_cuda_postproc`` hook, which receives the generated
   source, runs ``nvcc`` for PTX and for a fatbin (SASS for the arch plus
   its PTX), and returns ``embed(...)``: a text payload (marker line, arch,
   base64 fatbin, then the PTX) that TVM stores in place of the source;
2. at load time TVM hands that payload to ``tvm_callback_cuda_compile``;
   ``install_loader`` registers one that returns the embedded fatbin
   (``cuModuleLoadData`` takes it as is) and passes any other source on to
   the callback that was registered before.
"""
from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import subprocess
import tempfile
import threading

EMBED_MARKER = "//intvit-cuda-binary v1"
_ARCH = re.compile(r"sm_(\d+)([a-z]?)")


class CudaToolchainError(RuntimeError):
    """nvcc is missing or failed on the generated device code."""


def nvcc_path() -> str:
    found = shutil.which("nvcc") or next(
        (p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)
    if found is None:
        raise CudaToolchainError("nvcc was not found on PATH; install the CUDA toolkit (nvcc 12 or 13) "
                                 "to compile for --target cuda")
    return found


@functools.lru_cache(maxsize=None)
def nvcc_archs() -> tuple[str, ...]:
    """The ``sm_XX`` archs this nvcc can generate code for (``nvcc --list-gpu-arch``)."""
    out = subprocess.run([nvcc_path(), "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    return tuple(sorted({"sm_" + line.strip()[len("compute_"):] for line in out.split()
                         if line.strip().startswith("compute_")}, key=arch_number))


def check_arch(arch: str) -> str:
    """``arch`` if nvcc knows it, else ``UnknownTargetError`` naming the archs it does know."""
    from .errors import UnknownTargetError
    if not isinstance(arch, str) or not _ARCH.fullmatch(arch):
        raise UnknownTargetError(f"CUDA arch must look like sm_80 or sm_90, got {arch!r}")
    known = nvcc_archs()
    if arch not in known:
        raise UnknownTargetError(f"nvcc does not know arch {arch!r}; it can build for {', '.join(known)}")
    if arch_number(arch) < 61:
        raise UnknownTargetError(f"arch {arch!r} has no __dp4a int8 instruction; intvit needs sm_61 or newer")
    return arch


def arch_number(arch: str) -> int:
    """``"sm_90a"`` → 90."""
    return int(_ARCH.fullmatch(arch).group(1))


def detect_arch() -> str | None:
    """The arch of GPU 0 when this machine has a CUDA GPU TVM can see, else None."""
    import tvm
    try:
        dev = tvm.cuda(0)
        return "sm_" + str(dev.compute_version).replace(".", "") if dev.exist else None
    except Exception:
        return None


def compile_device_code(source: str, arch: str) -> tuple[str, bytes]:
    """nvcc ``source`` for ``arch`` → (PTX text, fatbin with SASS for ``arch`` and its PTX)."""
    num = arch[len("sm_"):]
    flags = ["-O3", "-std=c++17", "-diag-suppress=177,550"]
    with tempfile.TemporaryDirectory(prefix="intvit-nvcc-") as tmp:
        cu, ptx, fatbin = (os.path.join(tmp, f"kernels.{ext}") for ext in ("cu", "ptx", "fatbin"))
        with open(cu, "w") as f:
            f.write(source)
        for cmd in ([nvcc_path(), "--ptx", f"-arch=compute_{num}", *flags, "-o", ptx, cu],
                    [nvcc_path(), "--fatbin", f"-gencode=arch=compute_{num},code=[sm_{num},compute_{num}]",
                     *flags, "-o", fatbin, cu]):
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                raise CudaToolchainError(f"nvcc failed on the generated CUDA code for {arch} "
                                         f"(exit {run.returncode}):\n{run.stderr[-3000:]}")
        with open(ptx) as f, open(fatbin, "rb") as g:
            return f.read(), g.read()


def embed(arch: str, ptx: str, fatbin: bytes) -> str:
    """The text TVM stores as the module's device code: marker, arch, base64 fatbin, PTX."""
    return f"{EMBED_MARKER}\n//arch {arch}\n//fatbin {base64.b64encode(fatbin).decode()}\n{ptx}"


def unembed(text: str) -> dict | None:
    """``{"arch", "fatbin", "ptx"}`` of an ``embed`` payload; None for anything else (e.g. CUDA source)."""
    if not text.startswith(EMBED_MARKER + "\n"):
        return None
    _, arch_line, fat_line, ptx = text.split("\n", 3)
    return {"arch": arch_line[len("//arch "):], "fatbin": base64.b64decode(fat_line[len("//fatbin "):]), "ptx": ptx}


def device_code(executable) -> dict:
    """The embedded device code of a module built by ``tvm.compile`` under ``embedding``."""
    def find(mod):
        if mod.kind == "cuda":
            return mod
        return next((m for m in (find(i) for i in mod.imports) if m is not None), None)
    cuda = find(executable.mod)
    payload = unembed(cuda.inspect_source("cuda")) if cuda is not None else None
    if payload is None:
        raise CudaToolchainError("the module holds no embedded CUDA device code")
    return payload


_state = threading.local()


def _postproc(code, target):
    arch = getattr(_state, "arch", None)
    if arch is None:                 # not an intvit build: leave TVM's behaviour alone
        return code
    return embed(arch, *compile_device_code(str(code), arch))


class embedding:
    """Context manager: CUDA code generated by ``tvm.compile`` inside it is nvcc-compiled and embedded."""

    def __init__(self, arch: str):
        self.arch = arch

    def __enter__(self):
        import tvm_ffi
        nvcc_path()
        if not _INSTALLED.get("postproc"):
            tvm_ffi.register_global_func("tvm_callback_cuda_postproc", _postproc, override=True)
            _INSTALLED["postproc"] = True
        install_loader()
        _state.arch = self.arch
        return self

    def __exit__(self, *exc):
        _state.arch = None
        return False


_INSTALLED: dict = {}


def install_loader() -> None:
    """Register (once) a ``tvm_callback_cuda_compile`` that returns embedded fatbins as they are."""
    import tvm_ffi
    if _INSTALLED.get("loader"):
        return
    try:                             # the default callback (nvcc at load time) for plain CUDA source
        import tvm.support.nvcc  # noqa: F401
    except Exception:
        pass
    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def load(code, *rest):
        payload = unembed(str(code))
        if payload is not None:
            return payload["fatbin"]
        if previous is None:
            raise CudaToolchainError("this CUDA module holds source, not intvit's embedded code; "
                                     "recompile it with `intvit compile --target cuda`")
        return previous(code, *rest)
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", load, override=True)
    _INSTALLED["loader"] = True
