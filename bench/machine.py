"""Facts about the machine and software a benchmark ran on, recorded in every report.

CPU model and its SIMD flags (from ``/proc/cpuinfo`` on Linux), LLVM's name
for it (what TVM compiles for), core count,
the thread count every backend was given, GPU name, driver, memory and
compute capability when ``nvidia-smi`` finds one, the CUDA versions (the
driver's, torch's runtime and cuDNN, nvcc's) and torch's TF32 switches
(``cuda``), OS, and the versions of Python, intvit, torch, ONNX Runtime, TVM,
transformers and numpy; the instruction set torch's CPU kernels dispatch to
and the environment variables that cap the backends' instruction sets
(``ISA_CAPS``: a run that emulates an older CPU for torch and oneDNN says so).
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess

# the flags that decide which kernels the backends can use (the full list is ~100 words)
SIMD_PREFIXES = ("sse4", "avx", "fma", "amx", "f16c")
# environment variables that cap a backend's instruction set: torch's ATen kernels, MKL, oneDNN (torch and
# OpenVINO), OpenVINO's own switch (ONNX Runtime's MLAS has none: it dispatches on the CPU it finds)
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """(CPU model name, its SIMD flags), from ``/proc/cpuinfo``; (``platform.processor()``, []) elsewhere."""
    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = sorted(x for x in value.split() if x.startswith(SIMD_PREFIXES))
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def _run(cmd: list[str]) -> str | None:
    """stdout of ``cmd`` when it exists and succeeds within 20 s, else None."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def gpus() -> list[dict]:
    """Name, driver, memory and compute capability of each NVIDIA GPU ``nvidia-smi`` lists; [] when there is none."""
    fields = ("name", "driver", "memory", "compute_cap")
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"])
    if out is None:            # drivers older than 510 know no compute_cap
        fields = fields[:3]
        out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]) or ""
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    return [dict(zip(fields, r)) for r in rows if len(r) == len(fields)] or _torch_gpus()


def _torch_gpus() -> list[dict]:
    """What a CUDA build of torch says about each GPU, where ``nvidia-smi`` is missing (no driver version)."""
    import torch
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"name": p.name, "driver": None, "memory": f"{p.total_memory // 2**20} MiB",
                    "compute_cap": f"{p.major}.{p.minor}"})
    return out


def _torch_driver_cuda() -> str | None:
    """The CUDA version the driver supports, as torch's CUDA runtime reads it (``12040`` → ``"12.4"``)."""
    import torch
    get = getattr(torch._C, "_cuda_getDriverVersion", None)
    if get is None or not torch.cuda.is_available():
        return None
    version = get()
    return f"{version // 1000}.{version % 1000 // 10}"


def _version_after(text: str | None, marker: str) -> str | None:
    """The word after ``marker`` in ``text`` (``"CUDA Version: 12.4"`` → ``"12.4"``), or None."""
    if not text or marker not in text:
        return None
    rest = text.split(marker, 1)[1].split()
    return rest[0].rstrip(",") if rest else None


def cuda_facts() -> dict:
    """CUDA versions — the driver's (``nvidia-smi``), torch's runtime and cuDNN, nvcc's — and torch's TF32
    switches; None for what this machine lacks."""
    import torch
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"driver_cuda": _version_after(_run(["nvidia-smi"]), "CUDA Version:") or _torch_driver_cuda(),
            "torch_cuda": torch.version.cuda, "cudnn": cudnn,
            "nvcc": _version_after(_run(["nvcc", "--version"]), "release"),
            "torch_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "torch_cudnn_tf32": torch.backends.cudnn.allow_tf32}


def machine_facts(threads: int) -> dict:
    import numpy
    import onnxruntime
    import torch
    import transformers
    import tvm

    from .. import __version__
    from ..tvm_backend.x86 import host_cpu, host_extra_features
    cpu, flags = cpu_model_and_flags()
    return {"host": socket.gethostname(), "os": f"{platform.system()} {platform.release()}",
            "cpu": cpu, "cpu_flags": " ".join(flags), "llvm_mcpu": host_cpu(),
            "llvm_mcpu_lacks": list(host_extra_features()),    # reported by Linux, added to the target as mattr
            "cores": os.cpu_count(), "threads": threads,
            "gpus": gpus(), "cuda": cuda_facts(), "python": platform.python_version(), "intvit": __version__,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "tvm": tvm.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_caps": {k: os.environ[k] for k in ISA_CAPS if k in os.environ}}
