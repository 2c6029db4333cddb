"""Compile an intvit integer ONNX graph with TVM and run it.

``compile_onnx(path_or_proto, target="llvm", batch=1)`` → ``CompiledIntViT``.

Pipeline: ``importer.to_relax`` → legalize → fuse (GEMM kernels are kept
whole: they are marked opaque so ``FuseOps`` does not merge neighbours into
them) → ``schedules.schedule_module`` (VNNI where the target CPU has it) →
``tvm.compile``.
"""
from __future__ import annotations

import os

import numpy as np
import onnx

from .importer import to_relax

TARGETS = ("llvm",)
OPAQUE_PATTERN = 8          # relax OpPatternKind.kOpaque: FuseOps leaves the function alone
INJECTIVE_PATTERN = 2       # kInjective: FuseOps may merge it with the layout ops that feed it
GEMM_PREFIXES = ("int8_linear", "int16_gemm", "int_bmm")
PACK_PREFIXES = ("pack_panels", "pack_values")    # index arithmetic hides that they are injective


class UnknownTargetError(ValueError):
    """The target name is not one intvit can compile for."""


def resolve_target(target) -> dict:
    """``"llvm"`` → this host's CPU (``mcpu`` from LLVM, all cores); a dict passes through."""
    if isinstance(target, dict):
        return target
    if target not in TARGETS:
        raise UnknownTargetError(f"unknown target {target!r}; choose one of {list(TARGETS)}")
    from .x86 import host_cpu
    return {"kind": "llvm", "mcpu": host_cpu(), "num-cores": os.cpu_count() or 1}


def lower(mod, target):
    """Legalize, fuse and schedule a Relax module from ``to_relax``; returns the module ``tvm.compile`` takes."""
    import tvm
    from tvm import relax

    from .schedules import schedule_module
    from .x86 import target_has_vnni
    with target:
        # first drop what the importer bypassed (casts in front of fused GEMMs), so that
        # FuseOps sees single-consumer chains
        mod = relax.transform.DeadCodeElimination()(mod)
        mod = relax.transform.LegalizeOps()(mod)
        mod = relax.transform.AnnotateTIROpPattern()(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tvm.tirx.PrimFunc) and gv.name_hint.startswith(GEMM_PREFIXES):
                mod[gv] = func.with_attr("op_pattern", OPAQUE_PATTERN)
            elif isinstance(func, tvm.tirx.PrimFunc) and gv.name_hint.startswith(PACK_PREFIXES):
                mod[gv] = func.with_attr("op_pattern", INJECTIVE_PATTERN)
        mod = relax.transform.FuseOps()(mod)
        mod = relax.transform.FuseTIR()(mod)
        mod = relax.transform.DeadCodeElimination()(mod)
    return schedule_module(mod, target_has_vnni(target))


class CompiledIntViT:
    """A compiled integer ViT: ``model(images) -> (logits, int_logits)`` as numpy arrays."""

    def __init__(self, executable, batch: int, input_name: str, input_shape, input_dtype):
        import tvm
        from tvm import relax
        self.dev = tvm.cpu()
        self.executable = executable
        self.vm = relax.VirtualMachine(executable, self.dev)
        self.batch, self.input_name = batch, input_name
        self.input_shape, self.input_dtype = tuple(input_shape), input_dtype

    def __call__(self, images):
        import tvm
        arr = np.asarray(images.detach().cpu().numpy() if hasattr(images, "detach") else images)
        if arr.shape != self.input_shape:
            raise ValueError(f"this module was compiled for input shape {list(self.input_shape)}, "
                             f"got {list(arr.shape)}; recompile with --batch {arr.shape[0]}"
                             if arr.shape[1:] == self.input_shape[1:] else
                             f"expected input shape {list(self.input_shape)}, got {list(arr.shape)}")
        out = self.vm["main"](tvm.runtime.tensor(arr.astype(self.input_dtype, copy=False), self.dev))
        return out[0].numpy(), out[1].numpy()


def compile_onnx(model, target="llvm", batch: int = 1) -> CompiledIntViT:
    import tvm
    proto = onnx.load(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model
    tgt = tvm.target.Target(resolve_target(target))
    ex = tvm.compile(lower(to_relax(proto, batch), tgt), target=tgt)
    inp = proto.graph.input[0]
    dtype = "int8" if inp.name == "images_int8" else "float32"
    shape = [batch] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    return CompiledIntViT(ex, batch, inp.name, shape, dtype)
