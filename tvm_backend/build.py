"""Compile an intvit integer ONNX graph with TVM and run it.

``compile_onnx(path_or_proto, target="llvm", batch=1)`` → ``CompiledIntViT``.
This first backend slice uses TVM's default Relax pipeline (no hand
schedules yet): it is the correctness path the scheduled kernels will be held to.
"""
from __future__ import annotations

import os

import numpy as np
import onnx

from .importer import to_relax

TARGETS = {"llvm": {"kind": "llvm"}}


class UnknownTargetError(ValueError):
    """The target name is not one intvit can compile for."""


def resolve_target(target):
    if isinstance(target, dict):
        return target
    if target not in TARGETS:
        raise UnknownTargetError(f"unknown target {target!r}; choose one of {sorted(TARGETS)}")
    return TARGETS[target]


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
    mod = to_relax(proto, batch)
    ex = tvm.compile(mod, target=tvm.target.Target(resolve_target(target)))
    inp = proto.graph.input[0]
    dtype = "int8" if inp.name == "images_int8" else "float32"
    shape = [batch] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    return CompiledIntViT(ex, batch, inp.name, shape, dtype)
