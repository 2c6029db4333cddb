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

from .linear_kernel import build_linear_kernel

DEIT_S_GEMMS = (("qkv", 384, 1152), ("fc1", 384, 1536), ("fc2", 1536, 384))
TOKENS = 197


def build(rows_lead: tuple, rows: int, k: int, n: int, isa: str, seed: int = 0):
    """``(timer, args)`` for the kernel ``requant(x @ W + b)`` scheduled for ``isa`` ("amx" or "vnni")."""
    import tvm
    lib, args = build_linear_kernel(rows_lead, rows, k, n, isa, seed=seed)
    return lib.mod.time_evaluator("main", tvm.cpu(), number=5, repeat=1), args


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
