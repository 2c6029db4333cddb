"""Which device ``intvit bench --target`` runs on, and the check that it can run there.

``llvm`` is this machine's CPU: every backend in ``bench.backends`` runs on it.

``cuda`` is where the GPU backends will go and is not benchmarked yet. With no
CUDA device visible ``check_target("cuda")`` raises one ``BenchTargetError``
saying so and what to do; with one, it still raises, naming the backends that
are missing. When they exist they belong in ``CUDA_BACKENDS`` (name → what it
runs), built beside the CPU ones in ``bench.backends`` and measured with CUDA
events and ``torch.cuda.max_memory_allocated`` instead of ``perf_counter_ns``
and the RSS high-water mark:

* ``intvit_int8_tvm``  — the integer graph compiled by ``tvm_backend`` for CUDA (``intvit compile
  --target cuda`` builds it; the bench does not run it yet);
* ``tvm_fp32``         — the float ONNX through ``tvm.relax.frontend`` with dlight GPU schedules;
* ``torch_fp32`` / ``torch_compile_fp32`` — the float model on ``cuda:0``;
* ``ort_fp32`` / ``ort_int8_qdq`` — ONNX Runtime's CUDA (or TensorRT) execution provider.
"""
from __future__ import annotations

TARGETS = ("llvm", "cuda")
CUDA_BACKENDS: dict[str, str] = {}      # none implemented yet; see the module docstring


class BenchTargetError(ValueError):
    """The bench cannot run on the requested target here."""


def cuda_device() -> str | None:
    """The first CUDA device TVM or torch can see (its name), or None."""
    try:
        import tvm
        dev = tvm.cuda(0)
        if dev.exist:
            return str(dev.device_name)
    except Exception:       # a TVM built without CUDA raises instead of reporting no device
        pass
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return None


def _cuda_compile_hint() -> str:
    """Point at ``intvit compile --target cuda`` only when the TVM backend builds for CUDA."""
    from ..tvm_backend.build import TARGETS as COMPILE_TARGETS
    if "cuda" in COMPILE_TARGETS:
        return (" Without a GPU, `intvit compile MODEL.onnx --target cuda --arch sm_90` still build-tests "
                "intvit's CUDA code path.")
    return ""


def check_target(target: str) -> None:
    """Raise ``BenchTargetError`` unless the bench can run on ``target`` here."""
    if target not in TARGETS:
        raise BenchTargetError(f"unknown target {target!r}; choose one of {list(TARGETS)}")
    if target != "cuda":
        return
    device = cuda_device()
    if device is None:
        raise BenchTargetError("--target cuda: no CUDA device is visible on this machine (no NVIDIA GPU, or "
                               "no driver, or a CPU-only torch/TVM build). Run the CUDA benchmark on a machine "
                               "with an NVIDIA GPU, or use --target llvm for this CPU." + _cuda_compile_hint())
    if not CUDA_BACKENDS:
        raise BenchTargetError(f"--target cuda: found {device}, but the bench's CUDA backends are not "
                               "implemented yet (see intvit/bench/targets.py); use --target llvm")
