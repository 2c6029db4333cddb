"""The CUDA tensor-core GEMMs checked without a GPU: on this CPU, and in the compiled device code.

**On the CPU** (``compile_cpu_twin``): the model is imported in the CUDA
form (``gemm_form="tiled"``), every GEMM that the IMMA schedule takes on
the GPU gets that schedule's CPU twin (``imma.schedule_gemm_imma(...,
gpu=False)``: the same block/warp/fragment tiling, operand staging and
``ldmatrix`` register layouts, without thread bindings and tensor
intrinsics), the other kernels the CPU schedules, and the whole model is
compiled for this CPU and run. Its integer outputs must equal the PyTorch
integer model's, which proves the GPU schedule's loop structure and layouts
on whole models; the tensor-core instructions themselves are TVM's (tested
upstream on GPUs) and the thread synchronisation is checked on a GPU only.

**In the device code** (``gemm_kernel_report``): per kernel of a CUDA
module's PTX, how many ``mma.sync...s8.s8.s32`` and ``dp4a`` instructions
it holds, and the spill bytes ``ptxas -v`` reports for it.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

IMMA_PTX = re.compile(r"mma\.sync\.aligned\.m16n8k32\.row\.col\.s32\.s8\.s8\.s32")
CP_ASYNC_PTX = re.compile(r"cp\.async\.c[ag]\.shared\.global")


def compile_cpu_twin(proto, batch: int = 1):
    """``(CompiledIntViT on this CPU, number of GEMM kernels in the IMMA twin schedule)`` for an intvit
    integer ONNX graph (module docstring)."""
    import tvm

    from .build import fuse, make_target, resolve_target, wrap_executable
    from .gemm import ACC_BLOCK
    from .gpu_gemm import imma_layout
    from .imma import imma_shape, schedule_gemm_imma
    from .importer import to_relax
    from .schedules import block_names, schedule_module

    target = make_target(resolve_target("llvm"))
    with imma_layout():
        mod = fuse(to_relax(proto, batch, gemm_form="tiled"), target)
    twins = 0
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        sch = tvm.s_tir.Schedule(func)
        if ACC_BLOCK in block_names(sch) and imma_shape(sch) is not None:
            mod[gv] = schedule_gemm_imma(func, gpu=False)
            twins += 1
    mod = schedule_module(mod, vnni=False)
    return wrap_executable(tvm.compile(mod, target=target), proto, batch), twins


def ptx_kernels(ptx: str) -> dict[str, str]:
    """``{kernel name: its PTX text}`` for every ``.entry`` of a PTX module."""
    parts = re.split(r"\.(?:visible\s+)?\.?entry\s+", ptx)
    return {part.split("(", 1)[0].strip(): part for part in parts[1:]}


def ptxas_spills(ptx: str, arch: str) -> dict[str, tuple[int, int]]:
    """``{kernel: (spill store bytes, spill load bytes)}`` as ``ptxas -v`` reports them for ``arch``."""
    from .cuda import CudaToolchainError, nvcc_path
    ptxas = os.path.join(os.path.dirname(os.path.realpath(nvcc_path())), "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        run = subprocess.run([ptxas, f"-arch={arch}", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
    if run.returncode != 0:
        raise CudaToolchainError(f"ptxas failed on the module's PTX for {arch}:\n{run.stderr[-2000:]}")
    spills, current = {}, None
    for line in run.stderr.splitlines():
        name = re.search(r"Compiling entry function '(\w+)'", line)
        if name:
            current = name.group(1)
        counts = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if counts and current is not None:
            spills[current] = (int(counts.group(1)), int(counts.group(2)))
    return spills


def gemm_kernel_report(ptx: str, arch: str) -> list[dict]:
    """For every kernel of ``ptx`` that multiplies int8 (IMMA or ``dp4a``): its name, instruction counts
    (``cp_async``: asynchronous global → shared copies) and ``ptxas`` spill bytes."""
    spills = ptxas_spills(ptx, arch)
    rows = []
    for name, body in ptx_kernels(ptx).items():
        imma, dp4a = len(IMMA_PTX.findall(body)), len(re.findall(r"\bdp4a\.", body))
        if imma or dp4a:
            rows.append({"kernel": name, "imma": imma, "dp4a": dp4a, "cp_async": len(CP_ASYNC_PTX.findall(body)),
                         "spill_bytes": sum(spills.get(name, (0, 0)))})
    return rows
