"""``intvit bench --target cuda --build-only``: build the GPU artifacts without a GPU, time nothing.

For each model and batch size it builds what ``--target cuda`` would run and
can be built without a GPU — intvit's CUDA module (``intvit_int8_tvm``) and
TVM's float modules (``tvm_fp32``, ``tvm_fp16``), their device code compiled by
nvcc for ``--arch`` (PTX and a fatbin, embedded: a compile error fails the
build here), plus, once per model, the float ONNX and ORT's QDQ INT8 file for
the ONNX Runtime backends — and lists each with its size, build time and what
its device code holds (kernels, dp4a, float16 arithmetic, tensor-core MMA
instructions in the PTX). The torch, torch.compile and TensorRT backends build
on the GPU they run on and are listed as not built, with why.

Everything goes to a temporary directory that is removed afterwards: the
mode writes nothing (no report, no chart).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time

from .backends import REFERENCE, _export_size

PTX_COUNTS = {   # name -> PTX instruction pattern, counted in each TVM module's device code
    "dp4a": re.compile(r"\bdp4a\.[su]32\.[su]32\b"),
    "f16_arith": re.compile(r"\b(?:add|sub|mul|fma|neg|abs|max|min|div)(?:\.[a-z]+)*\.f16(?:x2)?\b"),
    "mma": re.compile(r"\b(?:wmma\.mma|mma)\.sync\b"),
}
NOT_BUILT = {
    "torch_": "eager PyTorch: nothing to build (the model is copied to the GPU when the bench runs)",
    "torch_compile_": "inductor compiles for the GPU it runs on",
    "tensorrt_": "TensorRT builds its engines on the GPU they run on",
}
PER_MODEL = {"ort_fp32": "float ONNX file", "ort_int8_qdq": "QDQ ONNX file"}


@dataclasses.dataclass
class Artifact:
    model: str
    backend: str
    batch: int | None                    # None: built once per model (ONNX files) or not built
    artifact: str                        # what was built, or why not ("not built: ...")
    size_bytes: int | None = None
    build_s: float = 0.0
    device: dict | None = None           # TVM modules: kernels, PTX and fatbin bytes, PTX_COUNTS
    ptx: str = dataclasses.field(default="", repr=False)


def device_code_summary(executable) -> tuple[dict, str]:
    """(kernels, PTX/fatbin sizes and ``PTX_COUNTS``, the PTX text) of a module built under ``embedding``."""
    from ..tvm_backend.cuda import device_code
    code = device_code(executable)
    ptx = code["ptx"]
    summary = {"arch": code["arch"], "kernels": len(re.findall(r"\.entry\s", ptx)), "ptx_bytes": len(ptx),
               "fatbin_bytes": len(code["fatbin"]), **{k: len(p.findall(ptx)) for k, p in PTX_COUNTS.items()}}
    return summary, ptx


def _not_built_reason(name: str) -> str | None:
    """Why ``--build-only`` does not build backend ``name``; None when it does."""
    for prefix in ("torch_compile_", "tensorrt_", "torch_"):
        if name.startswith(prefix):
            return NOT_BUILT[prefix] + ("" if prefix != "tensorrt_" or _has_module("tensorrt")
                                        else " (and TensorRT is not installed here)")
    return None


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _ort_note() -> str:
    """Where the ONNX files run, and whether this onnxruntime could."""
    import onnxruntime as ort
    here = "" if "CUDAExecutionProvider" in ort.get_available_providers() else \
        f"; this onnxruntime {ort.__version__} has none, onnxruntime-gpu does"
    return f" (runs on ORT's CUDAExecutionProvider{here})"


def _tvm_artifact(bm, name: str, batch: int, executable, build_s: float, workdir: str) -> Artifact:
    size = _export_size(executable, os.path.join(workdir, f"{bm.label}-{name}-b{batch}.so"))
    summary, ptx = device_code_summary(executable)
    return Artifact(bm.label, name, batch, "compiled .so (CUDA fatbin + PTX inside)", size, build_s, summary, ptx)


def build_model_artifacts(prepared, batches, workdir: str) -> list[Artifact]:
    """Every artifact of one model's ``CudaModelBackends`` (``prepared``) for ``batches``, in backend order."""
    bm, out = prepared.bm, []
    for name in prepared.names:
        reason = _not_built_reason(name)
        if reason:
            out.append(Artifact(bm.label, name, None, f"not built: {reason}"))
        elif name in PER_MODEL:
            path = prepared.fp32_path if name == "ort_fp32" else prepared.qdq_path(symmetric=False)
            out.append(Artifact(bm.label, name, None, PER_MODEL[name] + _ort_note(), os.path.getsize(path)))
        else:
            for batch in batches:
                if name == REFERENCE:
                    module, build_s = prepared.build_intvit(batch)
                    executable = module.executable
                else:
                    executable, build_s = prepared.build_tvm_float(name, batch)
                out.append(_tvm_artifact(bm, name, batch, executable, build_s, workdir))
    return out


def run_build_only(models, batches, backends, arch: str, progress=print) -> dict:
    """Build every model's GPU artifacts for ``arch`` (arguments already checked); returns
    ``{"arch", "artifacts": [Artifact], "wall_s"}``. Nothing is written outside a temporary directory."""
    from .cuda_backends import CudaModelBackends
    from .models import build_model
    t_start = time.perf_counter()
    say = lambda msg: progress(f"[{time.perf_counter() - t_start:6.1f} s] {msg}")  # noqa: E731
    built = [build_model(name) for name in models]
    artifacts = []
    with tempfile.TemporaryDirectory(prefix="intvit-bench-build-") as work:
        for bm in built:
            say(f"{bm.label}: {bm.description}")
            prepared = CudaModelBackends(bm, backends, work, arch, progress=say)
            artifacts += build_model_artifacts(prepared, batches, work)
    return {"arch": arch, "artifacts": artifacts, "wall_s": round(time.perf_counter() - t_start, 1)}


def _device_cell(device: dict | None) -> str:
    if not device:
        return ""
    counts = ", ".join(f"{device[k]} {k}" for k in PTX_COUNTS if device[k])
    return (f"{device['kernels']} kernels, PTX {device['ptx_bytes'] / 1e3:.0f} kB, fatbin "
            f"{device['fatbin_bytes'] / 1e3:.0f} kB" + (f"; {counts}" if counts else ""))


def format_build_only(result: dict) -> str:
    """The table ``--build-only`` prints: one row per artifact (or backend not built)."""
    lines = [f"CUDA {result['arch']} artifacts, built with nvcc, none run (no timing; nothing written)",
             f"  {'model':12} {'backend':20} {'batch':>5} {'size MB':>8} {'build s':>8}  artifact / device code"]
    for a in result["artifacts"]:
        batch = "" if a.batch is None else str(a.batch)
        size = "" if a.size_bytes is None else f"{a.size_bytes / 1e6:.1f}"
        build = f"{a.build_s:.1f}" if a.build_s else ""
        detail = a.artifact + (f": {_device_cell(a.device)}" if a.device else "")
        lines.append(f"  {a.model:12} {a.backend:20} {batch:>5} {size:>8} {build:>8}  {detail}")
    counts = "dp4a = int8 dot-product instructions, f16_arith = float16 arithmetic, mma = tensor-core MMA (PTX)"
    return "\n".join(lines + ["", counts])
