"""The backends ``intvit bench`` times on the CPU, each built for one model and batch size.

===================== =====================================================================
``intvit_int8_tvm``   intvit's integer-only graph compiled by intvit's TVM backend (the reference)
``torch_fp32``        the float HF model, PyTorch eager
``torch_compile_fp32`` the same module through ``torch.compile`` (inductor, full graph, static shapes)
``ort_fp32``          the float ONNX in ONNX Runtime
``ort_int8_qdq``      ORT's own static INT8 of that ONNX (``quantize_static``: QDQ, per-channel weights)
``intvit_int8_ort``   intvit's integer graph in ONNX Runtime (a correctness reference: generic int64 ops)
``intvit_int8_tvm_vnni`` the same integer graph with its GEMMs forced onto AVX-512 VNNI (``isa="vnni"``):
                      on a CPU with AMX, where ``intvit_int8_tvm`` uses AMX, the pair measures AMX's gain
``intvit_int8_tvm_avx2`` the same integer graph compiled for any AVX2 CPU (``mcpu=x86-64-v3``: no AVX-512,
                      GEMMs as ``vpmaddwd`` on int16 operands, ``isa="avx2"``): on this CPU, the code a
                      CPU without VNNI (Zen 2/3, Haswell to Skylake client) runs
``intvit_ivit_int8_tvm`` intvit quantized in the I-ViT form (ShiftGELU, symmetric grids, no migration:
                      the default before the GELU table, zero points and migration), same compiler
``tvm_fp32``          the float ONNX through ``tvm.relax.frontend.onnx`` for the same llvm target as
                      intvit, with the same schedule effort: intvit's register-tiled GEMM and
                      row-wise schedules applied to the float graph (``bench.tvm_float_cpu``)
``openvino_*``, ``torch_bf16``, ``torch_compile_bf16``, ``pt2e_int8_inductor``
                      the peers of an AMX Xeon: OpenVINO FP32 / default precision / NNCF INT8,
                      PyTorch BF16 eager and compiled, PT2E INT8 through inductor (``bench.cpu_peers``)
===================== =====================================================================

(The GPU backends of ``--target cuda`` are in ``bench.cuda_backends``.)

Every backend is a function ``images [N, C, H, W] float32 → logits`` (numpy)
plus the size of the artifact it runs (``size_bytes``): the ONNX file for the
ORT backends, the exported ``.so`` for the TVM ones, the parameters and
buffers for the torch ones. All get the same thread count; ORT's worker
spinning is off so that an idle backend does not steal the others' cores.
``torch_compile_fp32`` and ``tvm_fp32`` depend on a toolchain (a C++ compiler
for inductor; TVM's ONNX importer for the user's graph): if building one
fails it is reported unavailable with the reason instead of stopping the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Callable

import numpy as np
import torch

from .cpu_peers import PEER_BACKENDS
from .models import BenchModel
from .onnx_float import export_float_onnx, ort_session, quantize_qdq

REFERENCE = "intvit_int8_tvm"
AVX2_CPU = "x86-64-v3"      # intvit_int8_tvm_avx2: any AVX2 CPU (LLVM's x86-64 level 3)
ALL_BACKENDS = ("intvit_int8_tvm", "intvit_int8_tvm_vnni", "intvit_int8_tvm_avx2", "intvit_ivit_int8_tvm", "torch_fp32", "torch_compile_fp32",
                "ort_fp32", "ort_int8_qdq", "intvit_int8_ort", "tvm_fp32", *PEER_BACKENDS)
# intvit_int8_ort runs the integer nonlinears as generic int64 ONNX ops (10-25x slower than the
# rest): only when asked for.
DEFAULT_BACKENDS = ("intvit_int8_tvm", "torch_fp32", "torch_compile_fp32", "ort_fp32", "ort_int8_qdq", "tvm_fp32",
                    *PEER_BACKENDS)
OPTIONAL = ("torch_compile_fp32", "tvm_fp32", "intvit_int8_tvm_avx2", *PEER_BACKENDS)   # may be unavailable on a machine: recorded, not fatal


class UnknownBackendError(ValueError):
    """A backend name outside ``ALL_BACKENDS``, or a set without the reference."""


def backend_names(target: str = "llvm") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every backend, the default ones) for ``target``: ``llvm`` here, ``cuda`` in ``bench.targets``."""
    if target == "cuda":
        from .targets import CUDA_BACKENDS, CUDA_DEFAULT_BACKENDS
        return tuple(CUDA_BACKENDS), CUDA_DEFAULT_BACKENDS
    return ALL_BACKENDS, DEFAULT_BACKENDS


def check_backends(names, target: str = "llvm") -> tuple[str, ...]:
    """``names`` in report order, or ``UnknownBackendError`` (unknown for ``target``, repeated, or no reference)."""
    names = tuple(names)
    known = backend_names(target)[0]
    unknown = [n for n in names if n not in known]
    if unknown or REFERENCE not in names or len(set(names)) != len(names):
        where = "" if target == "llvm" else f" for --target {target}"
        raise UnknownBackendError(
            (f"unknown backend(s) {unknown}{where}; " if unknown else "") +
            f"backends must include {REFERENCE} (every ratio is against it), each once, from {list(known)}; "
            f"got {list(names)}")
    return tuple(n for n in known if n in names)


@dataclasses.dataclass
class Backend:
    name: str
    run: Callable[[np.ndarray], np.ndarray] | None
    size_bytes: int | None = None
    artifact: str = ""                  # what size_bytes counts
    build_s: float = 0.0                # quantize / compile seconds (torch.compile: compile and first call)
    unavailable: str | None = None      # why it cannot run here; None when it runs
    compiled: object = None             # intvit's build.CompiledIntViT, for --profile (bench.profile)


def _reason(exc: BaseException) -> str:
    """One line for the report: the message's first line, and, where that line only says where it was raised
    (native libraries such as OpenVINO stack ``Exception from src/…:117:`` headers), the last line, which says
    what went wrong."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [""]
    text = lines[0] if len(lines) == 1 or not lines[0].endswith(":") else f"{lines[0]} … {lines[-1]}"
    return f"{type(exc).__name__}: {text}"[:300]


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence C++ warnings written straight to fd 2 (TVM prints one per constant on export)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _export_size(executable, path: str) -> int:
    with _quiet_native_stderr():
        executable.export_library(path)
    return os.path.getsize(path)


def timed_step(progress, what: str, fn, *args):
    """``fn(*args)`` between two progress lines, the second with its wall time."""
    progress(f"  {what} ...")
    t0 = time.perf_counter()
    out = fn(*args)
    progress(f"  {what}: {time.perf_counter() - t0:.1f} s")
    return out


def torch_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


class ModelBackends:
    """The requested backends for one model.

    What does not depend on the batch size (ONNX exports, ORT's quantization,
    intvit's quantization) is built once here; ``for_batch`` adds what is
    compiled for a fixed batch (intvit's TVM module, TVM FP32, ``torch.compile``)
    and opens fresh ONNX Runtime sessions.
    """

    def __init__(self, bm: BenchModel, names, threads: int, workdir: str, progress=print):
        import intvit
        from ..quantize.onnx_export import to_onnx

        self.bm, self.names, self.threads, self.workdir, self.progress = bm, tuple(names), threads, workdir, progress
        self.fixed: dict[str, Backend] = {}
        self._failed: dict[str, str] = {}         # optional backends that could not be built: name -> reason
        model = bm.model

        if any(n in ("ort_fp32", "ort_int8_qdq", "tvm_fp32") or n.startswith("openvino_") for n in self.names):
            if bm.onnx_path:
                self.fp32_path = bm.onnx_path
            else:
                self.fp32_path = os.path.join(workdir, f"{bm.label}-fp32.onnx")
                self._step(f"exporting {bm.label} to float ONNX", export_float_onnx, model, bm.channels, bm.image,
                           self.fp32_path)
        t0 = time.perf_counter()
        self.proto = to_onnx(self._step(f"intvit: calibrating on {bm.calib.shape[0]} images and quantizing",
                                         intvit.quantize, model, bm.calib, intvit.QuantConfig(progress=False)))
        self.facts = {"intvit_quantize_s": round(time.perf_counter() - t0, 2)}
        self.proto_bytes = self.proto.SerializeToString()
        if "intvit_ivit_int8_tvm" in self.names:
            from ..quantize.evaluate import IVIT_BASELINE
            self.ivit_proto = to_onnx(self._step("intvit: quantizing in the I-ViT form", intvit.quantize, model,
                                                 bm.calib, intvit.QuantConfig(progress=False, **IVIT_BASELINE[1])))

        def torch_fp32(x):
            with torch.no_grad():
                return model(torch.from_numpy(x)).logits.numpy()

        if "torch_fp32" in self.names:
            self.fixed["torch_fp32"] = Backend("torch_fp32", torch_fp32, torch_bytes(model), "parameters + buffers")
        # ONNX Runtime: the files here, a fresh session per batch size in for_batch (so that each batch's
        # first call allocates its own arena, which is what peak memory measures)
        self.ort_files: dict[str, tuple] = {}     # name -> (path or bytes, input name, size, artifact, build_s)
        if "ort_fp32" in self.names:
            self.ort_files["ort_fp32"] = (self.fp32_path, bm.input_name, os.path.getsize(self.fp32_path),
                                          "float ONNX file", 0.0)
        if "ort_int8_qdq" in self.names:
            qdq = os.path.join(workdir, f"{bm.label}-qdq.onnx")
            t0 = time.perf_counter()
            self._step("ONNX Runtime: quantize_static (QDQ INT8)", quantize_qdq, self.fp32_path, bm.input_name,
                       bm.calib, qdq)
            self.ort_files["ort_int8_qdq"] = (qdq, bm.input_name, os.path.getsize(qdq), "QDQ ONNX file",
                                              time.perf_counter() - t0)
        if "intvit_int8_ort" in self.names:
            self.ort_files["intvit_int8_ort"] = (self.proto_bytes, self.proto.graph.input[0].name,
                                                 len(self.proto_bytes), "integer ONNX file", 0.0)

    def _step(self, what: str, fn, *args):
        return timed_step(self.progress, what, fn, *args)

    def _ort(self, name: str) -> Backend:
        source, input_name, size, artifact, build_s = self.ort_files[name]
        session = ort_session(source, self.threads)
        return Backend(name, lambda x: session.run(None, {input_name: x})[0], size, artifact, build_s)

    def for_batch(self, batch: int) -> dict[str, Backend]:
        """Every requested backend, ready to run ``[batch, C, H, W]`` images, in ``ALL_BACKENDS`` order.

        Nothing here has run on ``batch`` yet except ``torch.compile``'s compiling call.
        """
        built = {**self.fixed, **{name: self._ort(name) for name in self.ort_files}}
        built[REFERENCE] = self._intvit_tvm(batch)
        if "intvit_int8_tvm_vnni" in self.names:
            built["intvit_int8_tvm_vnni"] = self._intvit_tvm(batch, name="intvit_int8_tvm_vnni", isa="vnni")
        if "intvit_int8_tvm_avx2" in self.names:
            built["intvit_int8_tvm_avx2"] = self._optional(
                "intvit_int8_tvm_avx2", lambda b: self._intvit_tvm(b, name="intvit_int8_tvm_avx2", isa="avx2",
                                                                   cpu=AVX2_CPU), batch)
        if "intvit_ivit_int8_tvm" in self.names:
            built["intvit_ivit_int8_tvm"] = self._intvit_tvm(batch, self.ivit_proto, "intvit_ivit_int8_tvm")
        if "tvm_fp32" in self.names:
            built["tvm_fp32"] = self._optional("tvm_fp32", self._tvm_fp32, batch)
        if "torch_compile_fp32" in self.names:
            built["torch_compile_fp32"] = self._optional("torch_compile_fp32", self._torch_compile, batch)
        for name in PEER_BACKENDS:
            if name in self.names:
                built[name] = self._optional(name, lambda b, name=name: self._peer(name, b), batch)
        return {n: built[n] for n in ALL_BACKENDS if n in built}

    def _peer(self, name: str, batch: int) -> Backend:
        """One of ``cpu_peers.PEER_BACKENDS``, built for ``batch`` (a failure makes it unavailable: ``_optional``)."""
        from . import cpu_peers
        bm = self.bm
        example = np.zeros((batch, bm.channels, bm.image, bm.image), np.float32)
        t0 = time.perf_counter()
        if name.startswith("openvino_"):
            precision = {"openvino_fp32": "f32"}.get(name)
            calib = bm.calib if name == "openvino_int8" else None
            run, size, artifact = self._step(f"{name}: building for batch {batch}", cpu_peers.openvino_backend,
                                             self.fp32_path, bm.input_name, batch, self.threads, precision, calib,
                                             self.workdir)
            return Backend(name, run, size, artifact, time.perf_counter() - t0)
        if name in ("torch_bf16", "torch_compile_bf16"):
            run, bf16 = self._step(f"{name}: building for batch {batch}", cpu_peers.torch_bf16_backend, bm.model,
                                   batch, name == "torch_compile_bf16", example)
            return Backend(name, run, torch_bytes(bf16), "parameters + buffers (bfloat16)", time.perf_counter() - t0)
        torch._dynamo.reset()
        run = self._step(f"{name}: quantizing and compiling for batch {batch}", cpu_peers.pt2e_inductor_backend,
                         bm.model, bm.calib, batch, example)
        return Backend(name, run, torch_bytes(bm.model), "float parameters (the INT8 weights live in the compiled "
                       "graph)", time.perf_counter() - t0)

    def _optional(self, name: str, build, batch: int) -> Backend:
        """``build(batch)``, or the backend marked unavailable with the reason (not tried again for other batches)."""
        if name not in self._failed:
            try:
                return build(batch)
            except Exception as exc:      # a missing compiler or an unsupported op: report it, keep going
                self._failed[name] = _reason(exc)
                self.progress(f"  {name} is unavailable here: {self._failed[name]}")
        return Backend(name, None, unavailable=self._failed[name])

    def _intvit_tvm(self, batch: int, proto=None, name: str = REFERENCE, isa: str | None = None,
                    cpu: str | None = None) -> Backend:
        from ..tvm_backend.build import compile_onnx
        t0 = time.perf_counter()
        module = self._step(f"{name}: compiling the integer graph with TVM for batch {batch}",
                            lambda *a: compile_onnx(*a, isa=isa, cpu=cpu), proto or self.proto, "llvm", batch)
        build_s = time.perf_counter() - t0
        size = _export_size(module.executable, os.path.join(self.workdir, f"{name}-b{batch}.so"))
        return Backend(name, lambda x: module(x)[0], size, "compiled .so", build_s, compiled=module)

    def _tvm_fp32(self, batch: int) -> Backend:
        import tvm
        from tvm import relax

        from .tvm_float_cpu import build_float_cpu
        bm = self.bm
        t0 = time.perf_counter()
        executable = self._step(f"TVM FP32: importing the float ONNX, scheduling and compiling for batch {batch}",
                                build_float_cpu, self.fp32_path, bm.input_name,
                                [batch, bm.channels, bm.image, bm.image])
        build_s = time.perf_counter() - t0
        vm, dev = relax.VirtualMachine(executable, tvm.cpu()), tvm.cpu()

        def run(x):
            out = vm["main"](tvm.runtime.tensor(x, dev))
            return (out if hasattr(out, "numpy") else out[0]).numpy()     # one output, or a tuple

        size = _export_size(executable, os.path.join(self.workdir, f"tvm-fp32-b{batch}.so"))
        return Backend("tvm_fp32", run, size, "compiled .so", build_s)

    def _torch_compile(self, batch: int) -> Backend:
        bm = self.bm
        torch._dynamo.reset()       # the previous batch's graphs are done with; no recompile limit to hit
        compiled = torch.compile(bm.model, backend="inductor", fullgraph=True, dynamic=False)

        def run(x):
            with torch.no_grad():
                return compiled(torch.from_numpy(x)).logits.numpy()

        t0 = time.perf_counter()
        self._step(f"torch.compile (inductor): compiling for batch {batch}", run,     # compiles on the first call
                   np.zeros((batch, bm.channels, bm.image, bm.image), np.float32))
        return Backend("torch_compile_fp32", run, torch_bytes(bm.model), "parameters + buffers",
                       time.perf_counter() - t0)
