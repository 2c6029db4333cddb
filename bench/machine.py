"""Facts about the machine and software a benchmark ran on, recorded in every report.

CPU model and its SIMD flags (from ``/proc/cpuinfo`` on Linux), LLVM's name
for it (what TVM compiles for), core count,
the thread count every backend was given, GPU name and driver when
``nvidia-smi`` finds one, OS, and the versions of Python, intvit, torch,
ONNX Runtime, TVM, transformers and numpy.
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess

# the flags that decide which kernels the backends can use (the full list is ~100 words)
SIMD_PREFIXES = ("sse4", "avx", "fma", "amx", "f16c")


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


def gpus() -> list[dict]:
    """Name, driver and memory of each NVIDIA GPU ``nvidia-smi`` lists; [] when there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    return [{"name": r[0], "driver": r[1], "memory": r[2]} for r in rows if len(r) == 3]


def machine_facts(threads: int) -> dict:
    import numpy
    import onnxruntime
    import torch
    import transformers
    import tvm

    from .. import __version__
    from ..tvm_backend.x86 import host_cpu
    cpu, flags = cpu_model_and_flags()
    return {"host": socket.gethostname(), "os": f"{platform.system()} {platform.release()}",
            "cpu": cpu, "cpu_flags": " ".join(flags), "llvm_mcpu": host_cpu(),
            "cores": os.cpu_count(), "threads": threads,
            "gpus": gpus(), "python": platform.python_version(), "intvit": __version__,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "tvm": tvm.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__}
