"""The linear GEMMs with and without their software prefetch (``tvm_backend.prefetch``), one process,
interleaved.

``python -m intvit.bench.prefetch_kernels [--models deit_small,vit_base] [--batch 1,8] [--reps 15]
[--cold-mb 64] [--json out.json]`` builds each model's four linear GEMMs as the importer does (qkv and fc1
with a requant epilogue — fc1's GELU table left out —, proj and fc2 closing the residual add), once with the
prefetches and once without, checks that both give the same output, then times them in alternation. Each
call reads the next of several copies of the weight and of the skip stream, ``--cold-mb`` of them in all,
so that they come from memory as in a whole model: its weights outgrow the cache (DeiT-S: 22 MB, ViT-B:
86 MB), and the skip stream was written a whole attention block earlier. Prints the
medians, ``without / with`` and the achieved int8 multiply-accumulates per second. Threads:
``TVM_NUM_THREADS`` (intvit sets the physical cores).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from .linear_kernel import build_linear_kernel
from .models import SHAPES
from .record import command_line, write_record

TOKENS = 197
MODELS = ("deit_small", "vit_base")     # the 224-px shapes of ``models.SHAPES`` (197 tokens)


def model_gemms(model: str) -> list[tuple[str, int, int, str]]:
    """``(name, K, N, epilogue)`` of the linear layers of one of ``model``'s blocks (``models.SHAPES``)."""
    _, _, hidden, _, _, mlp, _ = SHAPES[model]
    return [("qkv", hidden, 3 * hidden, "requant"), ("proj", hidden, hidden, "residual"),
            ("fc1", hidden, mlp, "requant"), ("fc2", mlp, hidden, "residual")]


def _time(lib, args, copies, calls: int) -> float:
    """Mean ms of ``calls`` calls, each with the next copy of the inputs in ``copies`` (argument index → list)."""
    fn, total = lib["main"], 0.0
    for i in range(calls):
        for index, tensors in copies.items():
            args[index] = tensors[i % len(tensors)]
        t0 = time.perf_counter()
        fn(*args)
        total += time.perf_counter() - t0
    return 1e3 * total / calls


def compare(batch: int, k: int, n: int, epilogue: str, reps: int, cold_mb: float) -> dict:
    """Build both variants of one GEMM, check them equal, time them; ``{"without_ms", "with_ms", ...}``."""
    import tvm
    builds = {on: build_linear_kernel((batch,), TOKENS, k, n, epilogue=epilogue, prefetch=on) for on in (False, True)}
    outputs = []
    for lib, args in builds.values():
        lib["main"](*args)
        outputs.append(args[-1].numpy())
    if not np.array_equal(*outputs):
        raise AssertionError(f"{k} x {n} ({epilogue}): the kernels with and without prefetch disagree")
    # the weight (argument 1) and, for a residual add, the skip stream (the argument before the output)
    cold = [1] + ([len(builds[True][1]) - 2] if epilogue == "residual" else [])
    arrays = {i: builds[True][1][i].numpy() for i in cold}
    count = max(1, int(np.ceil(cold_mb * 2**20 / sum(a.nbytes for a in arrays.values()))))
    copies = {i: [tvm.runtime.tensor(a.copy(), tvm.cpu()) for _ in range(count)] for i, a in arrays.items()}
    samples = {on: [] for on in builds}
    for _ in range(reps):
        for on, (lib, args) in builds.items():
            samples[on].append(_time(lib, list(args), copies, calls=count))
    without, with_ = (float(np.median(samples[on])) for on in (False, True))
    macs = batch * TOKENS * k * n
    return {"without_ms": without, "with_ms": with_, "speedup": without / with_,
            "with_tmacs": macs / with_ / 1e9, "input_copies": count}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m intvit.bench.prefetch_kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="deit_small,vit_base", help=f"of {', '.join(MODELS)} (default: %(default)s)")
    p.add_argument("--batch", default="1,8", help="images per call; rows = batch x 197 (default: %(default)s)")
    p.add_argument("--reps", type=int, default=15, help="interleaved samples per variant (default: %(default)s)")
    p.add_argument("--cold-mb", type=float, default=64.0,
                   help="MB of weight (and skip stream) copies cycled through (default: %(default)s, beyond "
                        "the last-level cache)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        p.error(f"--batch takes comma-separated integers, got {args.batch!r}")
    if any(b < 1 for b in batches) or args.reps < 1 or not args.cold_mb > 0:
        p.error("--batch and --reps must be at least 1 and --cold-mb above 0")
    if args.json:
        from ..files import check_writable_target
        try:
            check_writable_target(args.json, "--json")
        except OSError as exc:
            p.error(str(exc))
    results = []
    print(f"{'model':<11} {'GEMM':<5} {'M x K x N':>17} {'epilogue':>9} {'without ms':>11} {'with ms':>8} "
          f"{'ratio':>6} {'T MAC/s':>8}", flush=True)
    for model in models:
        for batch in batches:
            for name, k, n, epilogue in model_gemms(model):
                r = compare(batch, k, n, epilogue, args.reps, args.cold_mb)
                results.append({"model": model, "batch": batch, "gemm": name, "k": k, "n": n,
                                "epilogue": epilogue, **r})
                print(f"{model:<11} {name:<5} {f'{batch * TOKENS} x {k} x {n}':>17} {epilogue:>9} "
                      f"{r['without_ms']:11.3f} {r['with_ms']:8.3f} {r['speedup']:5.2f}x {r['with_tmacs']:8.3f}",
                      flush=True)
    if args.json:
        write_record(args.json, {"reps": args.reps, "cold_mb": args.cold_mb, "results": results},
                     command_line("intvit.bench.prefetch_kernels", argv))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
