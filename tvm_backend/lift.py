"""Large constants of a compiled module turned into inputs of its ``main``: modules that ship without weights.

A Relax module keeps every constant (the packed int8 weights, a float
baseline's float16 weights) inside the compiled library, so a DeiT-S module
is ~22 MB and a ViT-B one ~87 MB. ``lift_large_constants`` rewrites ``main``
so that each constant of at least ``min_bytes`` becomes a parameter after
the images: ``main(images, w0, w1, ...)``. The code, the kernels and the
small constants (biases, requant multipliers, tables) are unchanged; the
caller supplies the lifted tensors. The GPU validation bundle
(``bench.gpu_bundle``) uses it for its latency modules, whose speed does not
depend on the weights' values, to stay under the device's 64 MiB transfer.
"""
from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_MIN_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class LiftedInput:
    """One lifted constant: where it goes in ``main``'s parameters (after the images), and what it is."""
    name: str
    shape: tuple[int, ...]
    dtype: str

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def lift_large_constants(mod, min_bytes: int = DEFAULT_MIN_BYTES):
    """``(module, [LiftedInput], [value])``: ``mod`` with every constant of ``main`` of at least ``min_bytes``
    bytes made a parameter of ``main`` (in order of first use), the new parameters' descriptions, and the
    constants' values (``tvm.runtime.Tensor``, to pass back in)."""
    from tvm import relax

    main = mod["main"]
    lifted: dict = {}

    @relax.expr_functor.mutator
    class _Lift(relax.PyExprMutator):
        def visit_generic_const_(self, const):     # relax.Constant (TVM 0.27 calls it GenericConst)
            value = const.value
            if int(np.prod(value.shape)) * np.dtype(str(value.dtype)).itemsize < min_bytes:
                return const
            if const not in lifted:
                lifted[const] = relax.Var(f"lifted_{len(lifted)}", const.ty)
            return lifted[const]

    body = _Lift(mod).visit_expr(main.body)
    if not lifted:
        return mod, [], []
    params = list(main.params) + list(lifted.values())
    new_main = relax.Function(params, body, main.ret_ty, main.is_pure, main.attrs, main.span)
    out = mod.clone() if hasattr(mod, "clone") else mod
    out["main"] = new_main
    specs = [LiftedInput(f"lifted_{i}", tuple(int(d) for d in c.value.shape), str(c.value.dtype))
             for i, c in enumerate(lifted)]
    return out, specs, [c.value for c in lifted]
