"""One linear-layer GEMM kernel as the model's importer builds it, on random int8 data: what the kernel
benchmarks (``amx_kernels``, ``prefetch_kernels``) compile and time.

``requant`` epilogue: ``requant(x @ W + b)`` to int8 (qkv, fc1). ``residual`` epilogue: the residual add
that closes proj and fc2, ``saturate(rescale(x @ W + b) + rescale(h), int16)`` with ``h`` the int16 skip
stream (``kernels.residual_value``), stored as int16. As in an imported model, the GEMM's multiplier, shift
and rounding term are per-channel tensors and the skip stream's rescale is a scalar 30-bit multiplier.
"""
from __future__ import annotations

import numpy as np

REQUANT_SHIFT = 38               # 2**29 <= m < 2**30, as the dyadic multipliers of a real model
SKIP_RESCALE = [1074502161, 30, 1 << 29]     # a skip stream's (m, shift, rounding term), from DeiT-S
EPILOGUES = ("requant", "residual")


def build_linear_kernel(rows_lead: tuple, rows: int, k: int, n: int, isa: str = "vnni",
                        epilogue: str = "requant", prefetch: bool = True, seed: int = 0):
    """``(lib, args)``: the compiled kernel (``lib["main"]``) and its arguments, output last, for ``isa``
    ("amx" or "vnni"); ``prefetch`` as ``schedules.schedule_gemm``'s."""
    import tvm
    from tvm import te

    from intvit.tvm_backend import gemm, schedules
    from intvit.tvm_backend.build import resolve_target
    from intvit.tvm_backend.kernels import requant_value, rescale_value, residual_value
    if epilogue not in EPILOGUES:
        raise ValueError(f"unknown epilogue {epilogue!r}; choose one of {EPILOGUES}")
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (*rows_lead, rows, k)).astype(np.int8)
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    m = rng.integers(2**29, 2**30, n).astype(np.int64)
    shift, half = np.full(n, REQUANT_SHIFT, np.int64), np.full(n, 1 << (REQUANT_SHIFT - 1), np.int64)
    skip = rng.integers(-2**15, 2**15, (*rows_lead, rows, n)).astype(np.int16)
    mr, nr = gemm.linear_tile(n)
    amx = isa == "amx"
    wp = gemm.pack_linear_weight(w, nr, amx=amx)
    xt, wt = te.placeholder(x.shape, "int8", name="x"), te.placeholder(wp.shape, "int8", name="w")
    bt, mt, et, ht = (te.placeholder((n,), "int64", name=name) for name in ("b", "m", "e", "half"))
    st = te.placeholder(skip.shape, "int16", name="skip")
    if epilogue == "requant":
        def epilogue_fn(z, idx):
            return requant_value(z, idx, mt, et, ht, 0, -128, 127)
        params, out_dtype = [xt, wt, bt, mt, et, ht], "int8"
    else:
        def epilogue_fn(z, idx):
            return residual_value(rescale_value(z, idx, mt, et, ht), st, idx, SKIP_RESCALE, -2**15, 2**15 - 1)
        params, out_dtype = [xt, wt, bt, mt, et, ht, st], "int16"
    with gemm.amx_layout(amx):
        out = gemm.packed_gemm_te(xt, wt, bt, mr, n, epilogue=epilogue_fn, out_dtype=out_dtype)
        func = te.create_prim_func([*params, out])
    func = schedules.schedule_gemm(func, True, amx=amx, prefetch=prefetch)
    target = tvm.target.Target(resolve_target("llvm"))
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    dev = tvm.cpu()
    arrays = [x, wp, gemm.folded_bias(w, np.zeros(n, np.int64)), m, shift, half] \
        + ([skip] if epilogue == "residual" else [])
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    return lib, args + [tvm.runtime.tensor(np.zeros((*rows_lead, rows, n), out_dtype), dev)]
