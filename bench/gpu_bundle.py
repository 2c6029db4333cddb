"""Assemble the GPU validation bundle here, so that a lent GPU machine only runs it (``bench/gpu_check.sh``).

The lent NVIDIA machine has Python 3.12 with torch, transformers, onnx and
numpy, no TVM, no package registry, and takes at most 64 MiB of files per
call (the working tree included); its whole session has 15 minutes of GPU
time. So everything that needs TVM's compiler happens here, ahead of time::

    python -m intvit.bench.gpu_bundle [--out .gpu_bundle] [--arch sm_90] [--no-latency]

writes ``.gpu_bundle/`` and, packed, ``.gpu_bundle.tar.xz`` (what a device
call carries; both ignored by git), holding

* ``runtime/tvm``: this TVM without its compiler (``libtvm_compiler.so``,
  259 MB, and the sources), imported with ``TVM_USE_RUNTIME_LIB=1``: the
  runtime, the Relax VM and the CUDA module loader (``libtvm_runtime*.so``,
  with the ``libcudart.so.13`` it links beside it);
  ``runtime/wheels/``: ``apache-tvm-ffi`` for CPython 3.12 (``pip download``);
* ``exact/``: three models — the embedded Fashion-MNIST ViT, the tiny test
  ViT, and a one-layer DeiT-S (every GEMM shape of DeiT-S) — each compiled
  for CUDA (``arch``) and for a generic x86-64 CPU at batch 1 and 8, with 16
  images and the PyTorch integer model's int32 logits on them (checked here
  against the CPU modules before they are written);
* ``latency/``: intvit INT8 and TVM's FP32 / FP16 (dlight) baselines for
  DeiT-S and ViT-B at batch 1, 8 and 32, built with their weights lifted
  out (``tvm_backend.lift``: the runner feeds random weights of the same
  shapes; latency does not depend on their values), so they fit the limit;
* ``manifest.json``: what is where, and the builds' settings.

Host code is compiled for ``x86-64-v3`` (any AVX2 CPU), not this CPU.
``dry_run`` then runs the bundle's own runner (``bench.gpu_check``) in a
fresh process on this CPU with the bundle's runtime-only TVM first on the
path: it checks the CPU modules against the references and that every CUDA
module holds its embedded device code (loading one needs the GPU driver).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

DEFAULT_DIR = ".gpu_bundle"
DEVICE_LIMIT = 64 * 2**20            # what one device call may carry, working tree included
TREE_ALLOWANCE = 10 * 2**20          # left for the working tree
HOST = {"kind": "llvm", "mcpu": "x86-64-v3"}
EXACT_MODELS = ("fmnist", "tiny", "deit_small_1layer")
EXACT_BATCHES = (1, 8)
EXACT_IMAGES = 16
LATENCY_MODELS = ("deit_small", "vit_base")
LATENCY_BATCHES = (1, 8, 32)
FLOAT_BASELINES = {"tvm_fp32": "float32", "tvm_fp16": "float16"}
LIFT_BYTES = 64 * 1024
TVM_FFI_PIN = "apache-tvm-ffi==0.1.14.post1"
RUNTIME_DROP = ("lib/libtvm_compiler.so", "3rdparty", "src", "include")
ARCHIVE_SUFFIX = ".tar.xz"


class BundleError(RuntimeError):
    """The bundle cannot be assembled or does not check out (one message: what and what to do)."""


def _exact_model(name: str):
    """``(float model, calibration images, test images)`` of an exactness model (seeded)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from .models import SHAPES, build_model
    if name == "fmnist":
        from ..models import fmnist
        calib = fmnist.load_calibration_set(128)
        return fmnist.load_model(), calib, calib[:EXACT_IMAGES]
    if name == "tiny":
        bm = build_model("tiny")
        return bm.model, bm.calib, bm.calib[:EXACT_IMAGES]
    image, patch, dim, _, heads, mlp, labels = SHAPES["deit_small"]
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=image, patch_size=patch, hidden_size=dim, num_hidden_layers=1, num_attention_heads=heads,
        intermediate_size=mlp, num_labels=labels)).eval()
    x = torch.randn(8, 3, image, image, generator=torch.Generator().manual_seed(1))     # 224 px: 8 images
    return model, x, x


def _copy_runtime(dest: str) -> None:
    """This TVM's Python package without the compiler, and the tvm-ffi wheel for CPython 3.12."""
    import tvm
    src = os.path.dirname(tvm.__file__)
    drop = {os.path.join(src, d) for d in RUNTIME_DROP}
    shutil.copytree(src, os.path.join(dest, "tvm"),
                    ignore=lambda d, names: [n for n in names if os.path.join(d, n) in drop or n == "__pycache__"])
    cudart = _find_cudart()
    shutil.copy2(cudart, os.path.join(dest, "tvm", "lib", os.path.basename(cudart)))     # found through $ORIGIN
    wheels = os.path.join(dest, "wheels")
    os.makedirs(wheels)
    run = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                          "--python-version", "3.12", "--implementation", "cp", "--platform",
                          "manylinux_2_28_x86_64", "-d", wheels, TVM_FFI_PIN], capture_output=True, text=True)
    if run.returncode != 0:
        raise BundleError(f"could not download {TVM_FFI_PIN} for CPython 3.12 (the GPU machine's Python) from "
                          f"the package index: {run.stderr.strip()[-500:]}")


def _find_cudart() -> str:
    """The CUDA runtime library ``libtvm_runtime_cuda.so`` links (``libcudart.so.13``), from nvcc's toolkit."""
    import glob

    from ..tvm_backend.cuda import nvcc_path
    toolkits = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc_path())))]
    toolkits += [p for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")) if p]
    toolkits += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for toolkit in toolkits:
        for sub in ("lib", "lib64", os.path.join("targets", "x86_64-linux", "lib")):
            path = os.path.join(toolkit, sub, "libcudart.so.13")
            if os.path.exists(path):
                return path
    raise BundleError(f"libcudart.so.13 is in none of {toolkits}; TVM's CUDA runtime needs it "
                      "(install the CUDA 13 toolkit, or set CUDA_HOME)")


def _save_module(compiled_or_executable, path: str) -> str:
    executable = getattr(compiled_or_executable, "executable", compiled_or_executable)
    executable.export_library(path)
    return os.path.basename(path)


def _build_exact(dest: str, arch: str, progress, models=EXACT_MODELS) -> list[dict]:
    import intvit

    from ..quantize.onnx_export import to_onnx
    from ..tvm_backend.build import compile_onnx
    os.makedirs(dest)
    entries = []
    for name in models:
        model, calib, x = _exact_model(name)
        q = intvit.quantize(model, calib, intvit.QuantConfig(progress=False))
        proto = to_onnx(q)
        ref = np.concatenate([q.forward_int(x[i:i + 8]).numpy() for i in range(0, len(x), 8)])
        np.save(os.path.join(dest, f"{name}.images.npy"), x.numpy())
        np.save(os.path.join(dest, f"{name}.int_logits.npy"), ref)
        for batch in EXACT_BATCHES:
            progress(f"exact: {name}, batch {batch}: CUDA {arch} and x86-64 modules")
            cpu = compile_onnx(proto, dict(HOST), batch=batch, isa="generic")
            got = np.concatenate([cpu(x[i:i + batch])[1] for i in range(0, len(x), batch)])
            if not np.array_equal(got, ref):
                raise BundleError(f"the x86-64 module of {name} (batch {batch}) differs from the PyTorch integer "
                                  "model here; the bundle would carry a wrong reference")
            cuda = compile_onnx(proto, {"kind": "cuda", "arch": arch, "host": dict(HOST)}, batch=batch)
            entries.append({"model": name, "batch": batch, "images": f"{name}.images.npy",
                            "reference": f"{name}.int_logits.npy",
                            "cuda": _save_module(cuda, os.path.join(dest, f"{name}.b{batch}.cuda.so")),
                            "cpu": _save_module(cpu, os.path.join(dest, f"{name}.b{batch}.cpu.so"))})
    return entries


def _build_latency(dest: str, arch: str, progress, models=LATENCY_MODELS, batches=LATENCY_BATCHES) -> list[dict]:
    import intvit

    from ..quantize.onnx_export import to_onnx
    from ..tvm_backend.build import compile_onnx
    from .onnx_float import export_float_onnx
    from .models import build_model
    from .tvm_float import build_float_cuda
    os.makedirs(dest)
    entries = []
    for name in models:
        bm = build_model(name)
        proto = to_onnx(intvit.quantize(bm.model, bm.calib, intvit.QuantConfig(progress=False)))
        fp32_onnx = os.path.join(dest, f"{name}.float.onnx.tmp")
        export_float_onnx(bm.model, bm.channels, bm.image, fp32_onnx)
        try:
            for batch in batches:
                shape = [batch, bm.channels, bm.image, bm.image]
                progress(f"latency: {name}, batch {batch}: intvit INT8 for CUDA {arch}")
                q = compile_onnx(proto, {"kind": "cuda", "arch": arch, "host": dict(HOST)}, batch=batch,
                                 lift_weights=LIFT_BYTES)
                entries.append({"model": name, "batch": batch, "backend": "intvit_int8", "input": shape,
                                "lifted": [w.as_dict() for w in q.lifted],
                                "module": _save_module(q, os.path.join(dest, f"{name}.b{batch}.intvit_int8.so"))})
                for backend, dtype in FLOAT_BASELINES.items():
                    progress(f"latency: {name}, batch {batch}: TVM {dtype} (dlight) for CUDA {arch}")
                    ex, lifted = build_float_cuda(fp32_onnx, bm.input_name, shape, dtype, arch, host=dict(HOST),
                                                  lift_weights=LIFT_BYTES)
                    entries.append({"model": name, "batch": batch, "backend": backend, "input": shape,
                                    "lifted": [w.as_dict() for w in lifted],
                                    "module": _save_module(ex, os.path.join(dest, f"{name}.b{batch}.{backend}.so"))})
        finally:
            os.remove(fp32_onnx)
    return entries


def bundle_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def assemble(out: str = DEFAULT_DIR, arch: str = "sm_90", latency: bool = True, progress=print,
             exact_models=EXACT_MODELS, latency_models=LATENCY_MODELS, latency_batches=LATENCY_BATCHES) -> dict:
    """Write the bundle to ``out`` and ``archive_path(out)`` (both replaced only once the new one is complete
    and fits a device call) and return its manifest."""
    import tvm

    from .. import __version__
    from ..tvm_backend.cuda import check_arch
    check_arch(arch)
    t0 = time.perf_counter()
    tmp = f"{out.rstrip(os.sep)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        progress("runtime: TVM without its compiler, and apache-tvm-ffi for CPython 3.12")
        _copy_runtime(os.path.join(tmp, "runtime"))
        manifest = {"format": "intvit-gpu-bundle 1", "arch": arch, "intvit_version": __version__,
                    "tvm_version": tvm.__version__, "host": HOST,
                    "exact": _build_exact(os.path.join(tmp, "exact"), arch, progress, exact_models),
                    "latency": (_build_latency(os.path.join(tmp, "latency"), arch, progress, latency_models,
                                               latency_batches) if latency else []),
                    "build_seconds": None}
        manifest["build_seconds"] = round(time.perf_counter() - t0, 1)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        archive = _pack(tmp, os.path.basename(out.rstrip(os.sep)))
        if os.path.getsize(archive) > DEVICE_LIMIT - TREE_ALLOWANCE:
            raise BundleError(f"the packed bundle is {os.path.getsize(archive) / 2**20:.1f} MiB; a device call "
                              f"carries at most {(DEVICE_LIMIT - TREE_ALLOWANCE) / 2**20:.0f} MiB beside the "
                              "working tree: build fewer latency modules (--no-latency, or fewer batches)")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(archive, archive_path(out))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(tmp + ARCHIVE_SUFFIX):
            os.remove(tmp + ARCHIVE_SUFFIX)
    manifest["bytes"] = bundle_bytes(out)
    manifest["archive_bytes"] = os.path.getsize(archive_path(out))
    return manifest


def archive_path(out: str) -> str:
    """The file a device call carries: the bundle directory packed as ``<out>.tar.xz``."""
    return out.rstrip(os.sep) + ARCHIVE_SUFFIX


def _pack(folder: str, name: str) -> str:
    """``folder`` as ``<folder>.tar.xz`` whose top directory is ``name`` (xz: the modules' code, PTX and
    repeated weights shrink ~4×)."""
    import tarfile
    path = folder + ARCHIVE_SUFFIX
    with tarfile.open(path, "w:xz", preset=6) as tar:
        tar.add(folder, arcname=name)
    return path


def dry_run(archive: str, timeout: int = 600) -> dict:
    """Unpack the bundle ``archive`` and run ``bench.gpu_check`` on this CPU in a fresh process, with the
    bundle's runtime-only TVM first on the path (this Python's own tvm-ffi: the bundle carries the 3.12 one
    for the GPU machine). Returns its JSON report; raises ``BundleError`` when it fails or a CPU module
    differs from its reference."""
    import tarfile
    import tempfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="intvit-dry-run-") as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(os.path.join(tmp, "unpacked"), filter="data")
        (name,) = os.listdir(os.path.join(tmp, "unpacked"))
        bundle = os.path.join(tmp, "unpacked", name)
        pkg = os.path.join(tmp, "pkg")
        os.makedirs(pkg)
        os.symlink(root, os.path.join(pkg, "intvit"))
        env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([pkg, os.path.join(os.path.abspath(bundle), "runtime")])}
        report = os.path.join(tmp, "out")
        run = subprocess.run([sys.executable, "-m", "intvit.bench.gpu_check", bundle, "--device", "cpu",
                              "--out", report], capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp)
        if run.returncode != 0:
            raise BundleError(f"the dry run failed (exit {run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
        with open(os.path.join(report, "gpu_check.json")) as f:
            result = json.load(f)
    if not result.get("tvm_runtime_only"):
        raise BundleError("the dry run did not import the bundle's runtime-only TVM")
    if not all(r["equal"] for r in result["exact"]):
        raise BundleError(f"the dry run's CPU modules differ from their references: {result['exact']}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m intvit.bench.gpu_bundle", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_DIR, help=f"bundle directory (default {DEFAULT_DIR}, git-ignored)")
    p.add_argument("--arch", default="sm_90", help="CUDA arch of the lent GPU (default sm_90: H100/H200)")
    p.add_argument("--no-latency", action="store_true", help="only the exactness modules (small, quick)")
    p.add_argument("--dry-run-only", action="store_true", help="check an existing bundle on this CPU")
    args = p.parse_args(argv)
    if not args.dry_run_only:
        m = assemble(args.out, args.arch, latency=not args.no_latency, progress=lambda s: print(s, flush=True))
        print(f"wrote {args.out} ({m['bytes'] / 2**20:.1f} MiB) and {archive_path(args.out)} "
              f"({m['archive_bytes'] / 2**20:.1f} MiB): {len(m['exact'])} exactness and {len(m['latency'])} "
              f"latency modules, in {m['build_seconds']} s")
    report = dry_run(archive_path(args.out))
    print(f"dry run on this CPU: {sum(r['equal'] for r in report['exact'])}/{len(report['exact'])} CPU modules "
          f"equal to their references with the runtime-only TVM; {report['cuda_modules_checked']} CUDA modules hold "
          "their device code")
    archive = archive_path(args.out)
    print(f"on a lent GPU: run(command='bash bench/gpu_check.sh {archive}', carry=['{archive}'])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
