"""AMX against VNNI on the same linear-layer kernel, one process, interleaved.

``python -m intvit.bench.amx_kernels [--reps 15] [--batch 8]`` builds DeiT-S's
three linear GEMM shapes (``[B·197, 384] × [384, 1152]`` qkv, ``× [384, 1536]``
fc1, ``[B·197, 1536] × [1536, 384]`` fc2) as ``gemm.packed_gemm_te`` kernels
with a requant-to-int8 epilogue, schedules each with the AMX and with the VNNI
schedule, checks that both give the same int8 output, then times them in
alternation (each sample the mean of 5 calls) and prints the medians, the
ratio and the achieved int8 multiply-accumulates per second. Threads:
``TVM_NUM_THREADS`` (intvit sets the physical cores).
"""
from __future__ import annotations

import argparse

import numpy as np

DEIT_S_GEMMS = (("qkv", 384, 1152), ("fc1", 384, 1536), ("fc2", 1536, 384))
TOKENS = 197
REQUANT_SHIFT = 20


def build(rows_lead: tuple, rows: int, k: int, n: int, isa: str, seed: int = 0):
    """``(timer, args)`` for the kernel ``requant(x @ W + b)`` scheduled for ``isa`` ("amx" or "vnni")."""
    import tvm
    from tvm import te

    from intvit.tvm_backend import gemm, schedules
    from intvit.tvm_backend.build import resolve_target
    from intvit.tvm_backend.kernels import requant_value
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (*rows_lead, rows, k)).astype(np.int8)
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    m = rng.integers(1, 2**10, n).astype(np.int64)
    mr, nr = gemm.linear_tile(n)
    amx = isa == "amx"
    wp = gemm.pack_linear_weight(w, nr, amx=amx)
    xt, wt = te.placeholder(x.shape, "int8", name="x"), te.placeholder(wp.shape, "int8", name="w")
    bt, mt = te.placeholder((n,), "int64", name="b"), te.placeholder((n,), "int64", name="m")

    def epilogue(z, idx):
        return requant_value(z, idx, mt, REQUANT_SHIFT, 1 << (REQUANT_SHIFT - 1), 0, -128, 127)
    with gemm.amx_layout(amx):
        out = gemm.packed_gemm_te(xt, wt, bt, mr, n, epilogue=epilogue, out_dtype="int8")
        func = te.create_prim_func([xt, wt, bt, mt, out])
    func = schedules.schedule_gemm(func, True, amx=amx)
    target = tvm.target.Target(resolve_target("llvm"))
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (x, wp, gemm.folded_bias(w, np.zeros(n, np.int64)), m,
                                                 np.zeros((*rows_lead, rows, n), np.int8))]
    return lib.mod.time_evaluator("main", dev, number=5, repeat=1), args


def main(argv=None) -> int:
    from intvit.tvm_backend import amx
    p = argparse.ArgumentParser(prog="python -m intvit.bench.amx_kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=15, help="interleaved samples per schedule (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="images: rows = batch x 197 (default: %(default)s)")
    args = p.parse_args(argv)
    if not amx.host_has_amx():
        print("this CPU (or Linux) cannot run AMX: nothing to compare", flush=True)
        return 2
    print(f"{'GEMM':<5} {'M x K x N':>18} {'AMX ms':>8} {'VNNI ms':>8} {'VNNI/AMX':>9} {'AMX GMAC/s':>11}")
    for name, k, n in DEIT_S_GEMMS:
        timers = {isa: build((args.batch,), TOKENS, k, n, isa) for isa in ("amx", "vnni")}
        outputs = {}
        for isa, (timer, call_args) in timers.items():
            timer(*call_args)
            outputs[isa] = call_args[-1].numpy()
        if not np.array_equal(outputs["amx"], outputs["vnni"]):
            raise AssertionError(f"{name}: the AMX and VNNI kernels disagree")
        samples = {isa: [] for isa in timers}
        for _ in range(args.reps):
            for isa, (timer, call_args) in timers.items():
                samples[isa].append(timer(*call_args).mean * 1e3)
        med = {isa: float(np.median(v)) for isa, v in samples.items()}
        rows = args.batch * TOKENS
        print(f"{name:<5} {f'{rows} x {k} x {n}':>18} {med['amx']:8.3f} {med['vnni']:8.3f} "
              f"{med['vnni'] / med['amx']:8.2f}x {rows * k * n / med['amx'] / 1e6:11.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
