"""The ``intvit bench`` command line: its options and what it prints (``cli.py`` registers it).

``python -m intvit.bench.latency`` takes the same options.
"""
from __future__ import annotations

import os
import sys

from .backends import ALL_BACKENDS, DEFAULT_BACKENDS
from .models import NAMES

DESCRIPTION = """\
Time intvit INT8 (its integer graph compiled by TVM) against FP32 and INT8
baselines on this machine, in one process and interleaved so that machine
drift hits every backend alike. Prints a table per batch size (median, p90,
p99 ms, images/s, peak MiB, size MB, ratio to intvit INT8) and writes
OUT/<host>-<date>.json and a PNG chart (latency by batch size per backend).

Backends: intvit_int8_tvm (always), torch_fp32 (eager), torch_compile_fp32
(inductor; reported unavailable, with the reason, where it cannot compile),
ort_fp32, ort_int8_qdq (ORT quantize_static, QDQ); opt-in: intvit_int8_ort
(intvit's graph in ORT, a slow correctness reference) and tvm_fp32 (the float
ONNX through tvm.relax.frontend, unscheduled: seconds per image).

Named models are Hugging Face ViT architectures with random weights (nothing is
downloaded); an .onnx path is a float ViT classifier exported from Hugging Face
(torch.onnx.export). Only --target llvm (this CPU) is measured; cuda exits with
an error until the GPU backends exist."""


def add_arguments(p) -> None:
    p.add_argument("--model", default="deit_small",
                   help=f"{', '.join(NAMES)}, or a float ViT .onnx path; comma-separated for several "
                        "(default: %(default)s)")
    p.add_argument("--target", default="llvm", help="llvm (this CPU) or cuda (not measured yet) (default: %(default)s)")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes, e.g. 1,8,32 (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=10,
                   help="interleaved timing rounds; each backend gets PER_ROUND timed calls per round "
                        "(default: %(default)s)")
    p.add_argument("--per-round", type=int, default=3, help="timed calls per backend per round (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls per backend before timing (default: %(default)s)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help=f"comma-separated, from {','.join(ALL_BACKENDS)}; must include intvit_int8_tvm "
                        "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for every backend, recorded in the report (default: all %(default)s cores)")
    p.add_argument("--out", default=os.path.join("bench", "results"),
                   help="directory for <host>-<date>.json and .png (default: %(default)s)")
    p.add_argument("--no-chart", action="store_true", help="write the JSON report only")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _command_line(args) -> str:
    """The command that repeats this run (every option spelled out, defaults included)."""
    return (f"intvit bench --model {args.model} --target {args.target} --batch {args.batch} --repeat {args.repeat} "
            f"--per-round {args.per_round} --warmup {args.warmup} --backends {args.backends} "
            f"--threads {args.threads}")


def run_command(args) -> int:
    """Run the benchmark the parsed ``args`` describe; print the table and the paths written."""
    from .latency import parse_batches, run
    progress = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run([m.strip() for m in args.model.split(",")], parse_batches(args.batch), args.repeat, args.threads,
                 out_dir=args.out, progress=progress, backends=[b.strip() for b in args.backends.split(",")],
                 per_round=args.per_round, warmup=args.warmup, target=args.target, chart=not args.no_chart,
                 command=_command_line(args))
    from .report import format_report
    print(format_report(report))
    print(f"\nwrote {report['path']}" + (f" and {report['chart']}" if report["chart"] else "")
          + f" ({report['wall_s']:.0f} s)")
    return 0
