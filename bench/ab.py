"""Two compiled modules of the same model, checked equal and timed in alternation: a before/after A/B.

``python -m intvit.bench.ab before.so after.so [--repeat 25]`` loads both modules (written by
``intvit compile`` from the same ONNX file, e.g. at two commits), runs them on the same random
images, refuses to time them if their integer outputs differ, and then times them in interleaved
rounds with ``bench.latency.measure`` (so drift of the machine hits both alike). It prints both
medians and ``before / after``, with a note when either module's p90 exceeds 1.5× its median (a busy
machine: two identical builds read 1.18× there). This is how the README's per-change speed-ups were
measured, on a quiet machine.
"""
from __future__ import annotations

import argparse

import numpy as np


def compare(before, after, repeat: int = 25, seed: int = 0) -> dict:
    """``{"before_ms", "after_ms", "speedup"}`` for two ``CompiledIntViT`` of one model and batch; raises
    ``ValueError`` when their shapes or outputs differ."""
    from .latency import measure
    from .stats import disturbed
    if tuple(before.input_shape) != tuple(after.input_shape):
        raise ValueError(f"the modules take different inputs: {list(before.input_shape)} and "
                         f"{list(after.input_shape)}; compile both for the same model and --batch")
    x = np.random.default_rng(seed).standard_normal(before.input_shape).astype(np.float32) \
        if before.input_dtype == "float32" else \
        np.random.default_rng(seed).integers(-128, 128, before.input_shape).astype(np.int8)
    if not np.array_equal(before(x)[1], after(x)[1]):
        raise ValueError("the two modules give different integer outputs on the same images; an A/B of "
                         "their speed would compare different computations")
    stats = measure({"before": before, "after": after}, x, repeat)
    b, a = stats["before"]["median_ms"], stats["after"]["median_ms"]
    return {"before_ms": b, "after_ms": a, "speedup": b / a,
            "disturbed": disturbed(stats["before"]) or disturbed(stats["after"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m intvit.bench.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("before", help="module (model.so with its .json sidecar) from intvit compile")
    ap.add_argument("after", help="the same model compiled by the changed code")
    ap.add_argument("--repeat", type=int, default=25, help="interleaved rounds (default: %(default)s)")
    args = ap.parse_args(argv)
    from intvit.runtime import load
    from intvit.tvm_backend.threads import use_physical_cores
    use_physical_cores()
    r = compare(load(args.before).compiled, load(args.after).compiled, args.repeat)
    print(f"outputs identical; before {r['before_ms']:.2f} ms, after {r['after_ms']:.2f} ms (median), "
          f"before / after {r['speedup']:.3f}x")
    if r["disturbed"]:
        print("note: a p90 is over 1.5x its median: another process shared the CPU, and the ratio is not to be "
              "trusted (two identical builds read 1.18x on a busy machine); rerun on a quiet one")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
