"""Hand schedules vs MetaSchedule-tuned GEMMs (``intvit compile --tune N``), timed side by side.

    python -m intvit.bench.tune_eval --model deit_small --batch 8 --trials 32

Quantizes the model (``bench.models``: random-weight HF ViTs of the named
shapes), compiles its integer graph twice for this CPU — hand schedules, and
with ``tune=TRIALS`` (database in a temporary directory, or ``--tuning-db``) —
checks both against each other on the same input, then times them interleaved
in one process (``bench.latency.measure``: same threads, same input) and
prints and writes the medians, the ratio and the tuning wall time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from .record import command_line, write_record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m intvit.bench.tune_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_small", help="a bench model name (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="(default: %(default)s)")
    p.add_argument("--trials", type=int, default=32, help="measured candidates per GEMM shape (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=10, help="interleaved timing rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="TVM threads, for tuning and timing alike (default: all %(default)s cores)")
    p.add_argument("--tuning-db", help="database directory to use and keep (default: a temporary one)")
    p.add_argument("--out", default=os.path.join("bench", "results"), help="directory for the JSON (default: %(default)s)")
    args = p.parse_args(argv)

    from intvit.bench.latency import _threads
    with _threads(args.threads):        # before TVM's thread pool starts: tuning measures with it too
        return _run(args, lambda m: print(m, file=sys.stderr, flush=True))


def _run(args, say) -> int:
    import intvit
    from intvit.bench.latency import measure
    from intvit.bench.machine import machine_facts
    from intvit.bench.models import build_model
    from intvit.quantize.onnx_export import to_onnx
    from intvit.tvm_backend.build import compile_onnx
    bm = build_model(args.model)
    say(f"{bm.label}: quantizing")
    proto = to_onnx(intvit.quantize(bm.model, bm.calib, intvit.QuantConfig(progress=False)))
    t0 = time.perf_counter()
    hand = compile_onnx(proto, "llvm", args.batch)
    hand_s = time.perf_counter() - t0
    say(f"hand schedules: compiled in {hand_s:.0f} s")
    with tempfile.TemporaryDirectory(prefix="intvit-tune-") as tmp:
        t0 = time.perf_counter()
        tuned = compile_onnx(proto, "llvm", args.batch, tune=args.trials, tuning_dir=args.tuning_db or tmp,
                             progress=say)
        tuned_s = time.perf_counter() - t0
    x = np.random.default_rng(0).standard_normal(hand.input_shape).astype(np.float32)
    if not np.array_equal(hand(x)[1], tuned(x)[1]):
        say("the tuned module's integer outputs differ from the hand-scheduled one's")
        return 1
    stats = measure({"hand": lambda v: hand(v), "tuned": lambda v: tuned(v)}, x, args.repeat)
    ratio = stats["hand"]["median_ms"] / stats["tuned"]["median_ms"]
    report = {"model": bm.label, "batch": args.batch, "trials_per_shape": args.trials,
              "machine": machine_facts(args.threads), "hand": stats["hand"], "tuned": stats["tuned"],
              "speedup_tuned_vs_hand": round(ratio, 3), "hand_compile_s": round(hand_s, 1),
              "tuned_compile_s": round(tuned_s, 1), "tuning": tuned.tuning.as_dict()}
    report["tuning"].pop("database")
    print(f"{bm.label}, batch {args.batch}: hand {stats['hand']['median_ms']:.1f} ms, tuned "
          f"{stats['tuned']['median_ms']:.1f} ms (p90 {stats['hand']['p90_ms']:.1f} / {stats['tuned']['p90_ms']:.1f}); "
          f"tuned is {ratio:.2f}x the hand schedules' speed; tuning took {tuned.tuning.tune_wall_s:.0f} s for "
          f"{tuned.tuning.tuned} GEMM shapes x {args.trials} trials")
    path = os.path.join(args.out, f"tune-{bm.name}-b{args.batch}-{time.strftime('%Y-%m-%d')}.json")
    write_record(path, report, command_line("intvit.bench.tune_eval", argv), args.threads)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
