"""Which device ``intvit bench --target`` runs on, its backends, and the checks that it can run there.

``llvm`` is this machine's CPU: the backends of ``bench.backends``, timed by
``bench.latency.measure`` (``perf_counter_ns``, RSS high-water mark).

``cuda`` is an NVIDIA GPU: the backends of ``CUDA_BACKENDS``, built by
``bench.cuda_backends`` with their inputs resident on the GPU and timed by
``bench.cuda_latency.measure_cuda`` (CUDA events around each call, interleaved
rounds as on the CPU; peak memory from ``torch.cuda.max_memory_allocated`` for
the torch backends and from the device's used memory for TVM and ONNX Runtime).
The GPU arch is the GPU's own unless ``--arch`` names one (at most the GPU's).
Running needs a GPU that both TVM and a CUDA build of torch can use, and nvcc
(intvit's and TVM's device code is compiled by nvcc at build time).

Without a GPU, ``--target cuda`` is one ``BenchTargetError`` saying so, unless
``--build-only``: then ``bench.build_only`` builds every GPU artifact that can
be built without a GPU — intvit's CUDA module and TVM's FP32/FP16 CUDA modules,
their device code compiled by nvcc for ``--arch`` — reports them, and times
nothing.
"""
from __future__ import annotations

TARGETS = ("llvm", "cuda")

# name -> what it runs on the GPU, in report order; every ratio is against the first
CUDA_BACKENDS: dict[str, str] = {
    "intvit_int8_tvm": "intvit's integer graph compiled by its TVM backend for CUDA (int8 GEMMs on tensor cores "
                       "from sm_80, dp4a below; device code compiled by nvcc at build time)",
    "tvm_fp32": "the float ONNX through tvm.relax.frontend.onnx, dlight's GPU schedules, float32",
    "tvm_fp16": "the same after relax ToMixedPrecision (float16 compute; dlight puts large matmuls on tensor cores)",
    "torch_fp32": "the float model, PyTorch eager on cuda:0 (default TF32 settings, recorded)",
    "torch_fp16": "the float model in float16 (model.half(), float16 input), PyTorch eager",
    "torch_bf16": "the float model in bfloat16, PyTorch eager",
    "torch_compile_fp32": "torch.compile (inductor, full graph, static shapes) of torch_fp32",
    "torch_compile_fp16": "torch.compile of torch_fp16",
    "torch_compile_bf16": "torch.compile of torch_bf16",
    "ort_fp32": "the float ONNX in ONNX Runtime's CUDAExecutionProvider (I/O bound on the GPU)",
    "ort_int8_qdq": "ORT's own static INT8 (quantize_static, QDQ) of it on the CUDAExecutionProvider",
    "tensorrt_fp16": "a TensorRT engine built from the float ONNX with FP16 enabled",
    "tensorrt_int8": "a TensorRT engine built from a symmetric-INT8 QDQ ONNX (explicit quantization, FP16 enabled)",
}
# torch.compile is opt-in on the GPU: it compiles per variant and batch size (minutes for DeiT-S)
CUDA_DEFAULT_BACKENDS = tuple(n for n in CUDA_BACKENDS if not n.startswith("torch_compile_"))


class BenchTargetError(ValueError):
    """The bench cannot run on the requested target here, or the target's options do not fit."""


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


def check_target_options(target: str, arch: str | None = None, build_only: bool = False) -> None:
    """Raise ``BenchTargetError`` for an unknown target, or ``--arch``/``--build-only`` on a target other than cuda."""
    if target not in TARGETS:
        raise BenchTargetError(f"unknown target {target!r}; choose one of {list(TARGETS)}")
    if target == "cuda":
        return
    if arch is not None:
        raise BenchTargetError(f"--arch {arch} applies to --target cuda, not --target {target}")
    if build_only:
        raise BenchTargetError("--build-only applies to --target cuda (it builds the GPU artifacts without a GPU); "
                               "the CPU bench has no build-only mode")


def _no_device_message() -> str:
    return ("--target cuda: no CUDA device is visible on this machine (no NVIDIA GPU, or no driver, or a CPU-only "
            "torch/TVM build). Run the CUDA benchmark on a machine with an NVIDIA GPU, or use --target llvm for this "
            "CPU. Without a GPU, `intvit bench --target cuda --arch sm_90 --build-only` still builds (and checks) "
            "the GPU artifacts.")


def _require_nvcc() -> None:
    from ..tvm_backend.cuda import CudaToolchainError, nvcc_path
    try:
        nvcc_path()
    except CudaToolchainError as exc:
        raise BenchTargetError(f"--target cuda compiles intvit's and TVM's device code with nvcc: {exc}") from None


def _checked_arch(arch: str) -> str:
    """``arch`` if nvcc can build for it and intvit supports it, else ``BenchTargetError``."""
    from ..tvm_backend.build import UnknownTargetError
    from ..tvm_backend.cuda import check_arch
    try:
        return check_arch(arch)
    except UnknownTargetError as exc:
        raise BenchTargetError(f"--arch: {exc}") from None


def check_cuda(arch: str | None = None, build_only: bool = False) -> str:
    """The CUDA arch to build for, once it is clear that the CUDA bench (or its build-only mode) can run here.

    Raises ``BenchTargetError`` with one line saying what is missing: a GPU
    (unless ``build_only``), a CUDA build of torch, nvcc, or an arch nvcc knows.
    """
    from ..tvm_backend.cuda import arch_number, detect_arch
    if build_only:
        _require_nvcc()
        arch = arch or detect_arch()
        if arch is None:
            raise BenchTargetError("--build-only: no GPU here to take the arch from; name it, e.g. --arch sm_90 "
                                   "(H100/H200) or --arch sm_80 (A100)")
        return _checked_arch(arch)
    device = cuda_device()
    if device is None:
        raise BenchTargetError(_no_device_message())
    import torch
    if not torch.cuda.is_available():
        raise BenchTargetError(f"--target cuda: found {device}, but this torch ({torch.__version__}) cannot use it; "
                               "the CUDA bench times with torch.cuda events: install a CUDA build of torch")
    here = detect_arch()
    if here is None:
        raise BenchTargetError(f"--target cuda: found {device}, but TVM cannot use it (a TVM built without CUDA, or "
                               "a driver older than TVM's CUDA runtime); intvit's CUDA modules run through TVM")
    _require_nvcc()
    arch = _checked_arch(arch or here)
    if arch_number(arch) > arch_number(here):
        raise BenchTargetError(f"--arch {arch} is newer than this GPU ({device}, {here}); use --arch {here} or "
                               "leave --arch out")
    return arch


def check_target(target: str, arch: str | None = None, build_only: bool = False) -> str | None:
    """Raise ``BenchTargetError`` unless the bench can run on ``target`` here; returns the CUDA arch (None: llvm)."""
    check_target_options(target, arch, build_only)
    return check_cuda(arch, build_only) if target == "cuda" else None
