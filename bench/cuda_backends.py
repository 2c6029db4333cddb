"""The backends ``intvit bench --target cuda`` times (``bench.targets.CUDA_BACKENDS``), each built for one batch size.

Every backend here is a ``CudaBackend`` whose ``run()`` takes no argument: it
runs one inference on the backend's own copy of the batch, already resident
on GPU 0, and leaves the output there (nothing is copied to or from the host
while timing). How each one keeps its input:

======================== ==========================================================================
``intvit_int8_tvm``      ``tvm.runtime.tensor`` on ``tvm.cuda(0)``, run by ``CompiledIntViT.run_on_device``
``tvm_fp32/fp16``        the same, through a Relax VM on ``tvm.cuda(0)`` (``bench.tvm_float`` builds them)
``torch_*``              a float32/float16/bfloat16 ``torch`` tensor on ``cuda:0``, the model a copy
                         on ``cuda:0`` in that dtype (``torch_compile_*``: the same copy, compiled)
``ort_*``                a ``torch`` tensor on ``cuda:0`` bound to the session with ``io_binding``;
                         the output is bound to the GPU as well
``tensorrt_*``           ``torch`` tensors on ``cuda:0`` for the input and output, bound to the
                         execution context by address
======================== ==========================================================================

``memory`` says how the bench measures a backend's peak working memory
(``bench.cuda_latency``): ``"torch"`` (the torch caching allocator's
``max_memory_allocated``), ``"device"`` (the GPU's used memory, which TVM's and
ONNX Runtime's pools raise on a first call and keep), or ``"engine"``
(TensorRT's own figure for the execution context, ``engine_mib``).

Building never needs a GPU for ``intvit_int8_tvm``, ``tvm_fp32`` and
``tvm_fp16`` (``build_intvit``, ``build_tvm_float``: nvcc compiles their device
code), which is what ``--build-only`` uses. Every backend but the reference
that cannot be built or run here (no CUDA execution provider in this
onnxruntime, no TensorRT, a compiler error) is reported unavailable with the
reason instead of stopping the run.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time

import numpy as np
import torch

from .backends import REFERENCE, Backend, _export_size, _reason, timed_step, torch_bytes
from .onnx_float import export_float_onnx, quantize_qdq
from .models import BenchModel

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TVM_DTYPES = {"tvm_fp32": "float32", "tvm_fp16": "float16"}
NEEDS_FLOAT_ONNX = ("tvm_fp32", "tvm_fp16", "ort_fp32", "ort_int8_qdq", "tensorrt_fp16", "tensorrt_int8")


@dataclasses.dataclass
class CudaBackend(Backend):
    """A ``Backend`` whose ``run()`` works on its own GPU-resident input (see the module docstring)."""
    memory: str = "device"               # how peak_mib is measured: "torch", "device" or "engine"
    engine_mib: float | None = None      # "engine": TensorRT's device memory for the execution context


class BackendUnavailable(RuntimeError):
    """This backend cannot run here, for a reason that is not an error (a missing optional package)."""


def tvm_on_torch_stream():
    """Context: TVM launches its kernels on torch's current CUDA stream, where the bench records its events."""
    import tvm_ffi
    return tvm_ffi.use_torch_stream()


class CudaModelBackends:
    """The requested GPU backends for one model.

    What does not depend on the batch size (intvit's quantization, the float
    ONNX, ORT's QDQ file) is built here; ``for_batch`` builds the rest and puts
    each backend's input on the GPU.
    """

    def __init__(self, bm: BenchModel, names, workdir: str, arch: str, threads: int = 1, progress=print):
        import intvit
        from ..quantize.onnx_export import to_onnx

        self.bm, self.names, self.workdir, self.arch = bm, tuple(names), workdir, arch
        self.threads, self.progress = threads, progress
        self._failed: dict[str, str] = {}        # backends that could not be built: name -> reason
        self._torch_models: dict[str, torch.nn.Module] = {}
        self._qdq: dict[bool, str] = {}
        self.fp32_path = None
        if any(n in self.names for n in NEEDS_FLOAT_ONNX):
            self.fp32_path = bm.onnx_path or os.path.join(workdir, f"{bm.label}-fp32.onnx")
            if not bm.onnx_path:
                self._step(f"exporting {bm.label} to float ONNX", export_float_onnx, bm.model, bm.channels,
                           bm.image, self.fp32_path)
        t0 = time.perf_counter()
        self.proto = to_onnx(self._step(f"intvit: calibrating on {bm.calib.shape[0]} images and quantizing",
                                         intvit.quantize, bm.model, bm.calib, intvit.QuantConfig(progress=False)))
        self.facts = {"intvit_quantize_s": round(time.perf_counter() - t0, 2)}
        if "ort_int8_qdq" in self.names:
            self.qdq_path(symmetric=False)

    def _step(self, what: str, fn, *args):
        return timed_step(self.progress, what, fn, *args)

    def qdq_path(self, symmetric: bool) -> str:
        """ORT's QDQ INT8 of the float ONNX (``symmetric``: int8 activations, for TensorRT), built once."""
        if symmetric not in self._qdq:
            path = os.path.join(self.workdir, f"{self.bm.label}-qdq{'-sym' if symmetric else ''}.onnx")
            self._step(f"ONNX Runtime: quantize_static ({'symmetric ' if symmetric else ''}QDQ INT8)", quantize_qdq,
                       self.fp32_path, self.bm.input_name, self.bm.calib, path, symmetric)
            self._qdq[symmetric] = path
        return self._qdq[symmetric]

    # --- builds that need no GPU -------------------------------------------------------------------------

    def build_intvit(self, batch: int):
        """intvit's integer graph compiled for CUDA ``self.arch`` at ``batch``: (``CompiledIntViT``, seconds)."""
        from ..tvm_backend.build import compile_onnx
        t0 = time.perf_counter()
        module = self._step(f"intvit: compiling the integer graph for CUDA {self.arch}, batch {batch}",
                            compile_onnx, self.proto, "cuda", batch, self.arch)
        return module, time.perf_counter() - t0

    def build_tvm_float(self, name: str, batch: int):
        """``tvm_fp32`` or ``tvm_fp16``: the float ONNX compiled for CUDA at ``batch``: (executable, seconds)."""
        from .tvm_float import build_float_cuda
        bm, dtype = self.bm, TVM_DTYPES[name]
        t0 = time.perf_counter()
        executable = self._step(f"TVM {dtype}: importing the float ONNX, dlight GPU schedules, compiling for "
                                f"{self.arch}, batch {batch}", build_float_cuda, self.fp32_path, bm.input_name,
                                [batch, bm.channels, bm.image, bm.image], dtype, self.arch)
        return executable, time.perf_counter() - t0

    # --- backends ready to run on the GPU ----------------------------------------------------------------

    def for_batch(self, batch: int, x: np.ndarray) -> dict[str, CudaBackend]:
        """Every requested backend, ready to run on its own GPU copy of ``x`` (``[batch, C, H, W]`` float32).

        Nothing has run on ``batch`` yet except ``torch.compile``'s compiling call.
        """
        builders = {REFERENCE: self._intvit, "tvm_fp32": self._tvm_float, "tvm_fp16": self._tvm_float,
                    "ort_fp32": self._ort, "ort_int8_qdq": self._ort,
                    "tensorrt_fp16": self._tensorrt, "tensorrt_int8": self._tensorrt}
        if any(n.startswith("torch_compile_") for n in self.names):
            torch._dynamo.reset()     # the previous batch's graphs are done with; no recompile limit to hit
        ready = {}
        for name in self.names:
            build = builders.get(name, self._torch_compile if name.startswith("torch_compile_") else self._torch)
            ready[name] = build(name, batch, x) if name == REFERENCE else self._optional(name, build, batch, x)
        return ready

    def _optional(self, name: str, build, batch: int, x: np.ndarray) -> CudaBackend:
        """``build(name, batch, x)``, or the backend marked unavailable with the reason (not retried)."""
        if name not in self._failed:
            try:
                return build(name, batch, x)
            except Exception as exc:      # no provider, no package, a compiler error: report it, keep going
                self._failed[name] = str(exc) if isinstance(exc, BackendUnavailable) else _reason(exc)
                self.progress(f"  {name} is unavailable here: {self._failed[name]}")
        return CudaBackend(name, None, unavailable=self._failed[name])

    def _intvit(self, name: str, batch: int, x: np.ndarray) -> CudaBackend:
        import tvm
        module, build_s = self.build_intvit(batch)
        size = _export_size(module.executable, os.path.join(self.workdir, f"intvit-int8-cuda-b{batch}.so"))
        module.vm                                  # load the module and upload its constants before the first call
        x_dev = tvm.runtime.tensor(x.astype(module.input_dtype, copy=False), module.dev)
        return CudaBackend(name, lambda: module.run_on_device(x_dev), size, "compiled .so (CUDA fatbin inside)",
                           build_s, memory="device")

    def _tvm_float(self, name: str, batch: int, x: np.ndarray) -> CudaBackend:
        import tvm
        from tvm import relax

        from ..tvm_backend.cuda import install_loader
        executable, build_s = self.build_tvm_float(name, batch)
        size = _export_size(executable, os.path.join(self.workdir, f"{name}-cuda-b{batch}.so"))
        install_loader()                           # the embedded fatbin is what the driver loads
        dev = tvm.cuda(0)
        main = relax.VirtualMachine(executable, dev)["main"]
        x_dev = tvm.runtime.tensor(x, dev)
        return CudaBackend(name, lambda: main(x_dev), size, "compiled .so (CUDA fatbin inside)", build_s,
                           memory="device")

    def _torch_model(self, dtype: str) -> torch.nn.Module:
        """A copy of the float model on ``cuda:0`` in ``dtype`` (one per dtype, shared with torch.compile)."""
        if dtype not in self._torch_models:
            self._torch_models[dtype] = copy.deepcopy(self.bm.model).to("cuda:0", TORCH_DTYPES[dtype]).eval()
        return self._torch_models[dtype]

    def _torch(self, name: str, batch: int, x: np.ndarray) -> CudaBackend:
        dtype = name.rsplit("_", 1)[1]
        model = self._torch_model(dtype)
        x_dev = torch.from_numpy(x).to("cuda:0", TORCH_DTYPES[dtype])

        def run():
            with torch.no_grad():
                return model(x_dev).logits

        return CudaBackend(name, run, torch_bytes(model), "parameters + buffers", memory="torch")

    def _torch_compile(self, name: str, batch: int, x: np.ndarray) -> CudaBackend:
        dtype = name.rsplit("_", 1)[1]
        model = self._torch_model(dtype)
        compiled = torch.compile(model, backend="inductor", fullgraph=True, dynamic=False)
        x_dev = torch.from_numpy(x).to("cuda:0", TORCH_DTYPES[dtype])

        def run():
            with torch.no_grad():
                return compiled(x_dev).logits

        t0 = time.perf_counter()
        self._step(f"torch.compile (inductor, {dtype}): compiling for batch {batch}", run)   # compiles on 1st call
        torch.cuda.synchronize()
        return CudaBackend(name, run, torch_bytes(model), "parameters + buffers", time.perf_counter() - t0,
                           memory="torch")

    def _ort(self, name: str, batch: int, x: np.ndarray) -> CudaBackend:
        import onnxruntime as ort
        provider = "CUDAExecutionProvider"
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(f"onnxruntime {ort.__version__} has no {provider} (it offers "
                                     f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
        path = self.fp32_path if name == "ort_fp32" else self.qdq_path(symmetric=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads            # for nodes the CUDA provider leaves on the CPU
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, so, providers=[(provider, {"device_id": 0}), "CPUExecutionProvider"])
        if provider not in session.get_providers():
            raise BackendUnavailable(f"onnxruntime could not start its {provider} (CUDA or cuDNN libraries missing?)")
        x_dev = torch.from_numpy(x).to("cuda:0")
        binding = session.io_binding()
        binding.bind_input(self.bm.input_name, "cuda", 0, np.float32, list(x_dev.shape), x_dev.data_ptr())
        binding.bind_output(session.get_outputs()[0].name, "cuda", 0)

        def run():
            session.run_with_iobinding(binding)    # returns once the GPU work is done
            return x_dev                           # keeps the bound input alive with the closure

        artifact = "float ONNX file" if name == "ort_fp32" else "QDQ ONNX file"
        return CudaBackend(name, run, os.path.getsize(path), artifact, memory="device")

    def _tensorrt(self, name: str, batch: int, x: np.ndarray) -> CudaBackend:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailable(f"TensorRT is not installed ({_reason(exc)}); pip install tensorrt") from None
        int8 = name == "tensorrt_int8"
        path = self.qdq_path(symmetric=True) if int8 else self.fp32_path
        t0 = time.perf_counter()
        engine, blob_bytes = self._step(f"TensorRT: building the {'INT8' if int8 else 'FP16'} engine for batch {batch}",
                                        build_tensorrt_engine, trt, path, self.bm.input_name, x.shape, int8)
        build_s = time.perf_counter() - t0
        context = engine.create_execution_context()
        context.set_input_shape(self.bm.input_name, tuple(x.shape))
        x_dev = torch.from_numpy(x).to("cuda:0")
        outputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                   if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT]
        out = {n: torch.empty(tuple(context.get_tensor_shape(n)), device="cuda:0",
                              dtype=torch.float16 if engine.get_tensor_dtype(n) == trt.DataType.HALF else torch.float32)
               for n in outputs}
        context.set_tensor_address(self.bm.input_name, x_dev.data_ptr())
        for n, t in out.items():
            context.set_tensor_address(n, t.data_ptr())

        def run():
            context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
            return out

        memory = getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size
        return CudaBackend(name, run, blob_bytes, "serialized TensorRT engine", build_s, memory="engine",
                           engine_mib=memory / 2**20)


def build_tensorrt_engine(trt, onnx_path: str, input_name: str, shape, int8: bool):
    """A TensorRT engine for ``onnx_path`` at the fixed input ``shape`` (FP16; ``int8``: INT8 too, scales from the
    QDQ nodes); returns (engine, serialized size in bytes)."""
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)            # explicit batch (the only mode in TensorRT 10)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            raise RuntimeError("TensorRT's ONNX parser: " + "; ".join(str(parser.get_error(i))
                                                                      for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, tuple(shape), tuple(shape), tuple(shape))
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError("TensorRT could not build the engine")
    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
    return engine, blob.nbytes
