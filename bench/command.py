"""The ``intvit bench`` command line: its options and what it prints (``cli.py`` registers it).

``python -m intvit.bench.command`` takes the same options.
"""
from __future__ import annotations

import os
import sys

from .backends import ALL_BACKENDS, DEFAULT_BACKENDS
from .models import NAMES
from .targets import CUDA_BACKENDS, CUDA_DEFAULT_BACKENDS

DESCRIPTION = """\
Time intvit INT8 (its integer graph compiled by TVM) against FP32 and INT8
baselines on this machine, in one process and interleaved so that machine
drift hits every backend alike. Prints a table per batch size (median, p90,
p99 ms, images/s, peak MiB, size MB, ratio to intvit INT8) and writes
OUT/<host>-<date>.json and a PNG chart (latency by batch size per backend).

--target llvm (this CPU, the default). Backends: intvit_int8_tvm (always),
torch_fp32 (eager), torch_compile_fp32 (inductor; reported unavailable, with
the reason, where it cannot compile), ort_fp32, ort_int8_qdq (ORT
quantize_static, QDQ), tvm_fp32 (the float ONNX through tvm.relax.frontend,
given intvit's own CPU schedules: tiled GEMMs, row-parallel nonlinears),
and the peers of an AMX Xeon (pip install 'intvit[peers]'; each reported
unavailable with the reason where it cannot run): openvino_fp32,
openvino_default (OpenVINO's own precision: bf16 on AMX), openvino_int8 (NNCF
post-training INT8 on the same calibration images), torch_bf16,
torch_compile_bf16, pt2e_int8_inductor (PT2E X86InductorQuantizer INT8
compiled by inductor); opt-in: intvit_int8_ort (intvit's graph in ORT, a slow correctness reference),
intvit_ivit_int8_tvm (intvit quantized in the I-ViT form: ShiftGELU,
symmetric grids, no migration, i.e. the default before those landed),
intvit_int8_tvm_vnni (intvit's graph with its GEMMs forced onto AVX-512
VNNI: next to intvit_int8_tvm, which uses AMX where the CPU has it, the
gain of AMX), intvit_int8_tvm_avx2 (intvit's graph compiled for any AVX2
CPU, mcpu x86-64-v3: no AVX-512, GEMMs on vpmaddwd; what a CPU without VNNI
runs).
Clock: perf_counter_ns; peak memory: the RSS high-water mark.

--target cuda (GPU 0; --arch defaults to the GPU's own). Backends:
intvit_int8_tvm (intvit's CUDA module, device code by nvcc), tvm_fp32 and
tvm_fp16 (the float ONNX through tvm.relax.frontend with dlight's GPU rules;
fp16 via ToMixedPrecision), torch_fp32/fp16/bf16 (eager on cuda:0), ort_fp32
and ort_int8_qdq (ORT's CUDAExecutionProvider), tensorrt_fp16 and
tensorrt_int8 (when TensorRT is installed); opt-in: torch_compile_fp32/fp16/bf16.
A backend that cannot run here (no onnxruntime-gpu, no TensorRT) is reported
unavailable with the reason. Inputs stay on the GPU; each call is timed with
CUDA events and synchronised; peak memory is torch's allocator peak for torch,
the GPU's used memory for TVM and ORT. Without a GPU, --target cuda is an
error, except with --build-only (--arch sm_90, say): build intvit's and TVM's
CUDA modules (nvcc PTX + fatbin) and the ONNX files, print what was built with
sizes, build times and device-code counts; nothing is timed or written.

Named models are Hugging Face ViT architectures with random weights (nothing is
downloaded); an .onnx path is a float ViT classifier exported from Hugging Face
(torch.onnx.export)."""


def add_arguments(p) -> None:
    p.add_argument("--model", default="deit_small",
                   help=f"{', '.join(NAMES)}, or a float ViT .onnx path; comma-separated for several "
                        "(default: %(default)s)")
    p.add_argument("--target", default="llvm", help="llvm (this CPU) or cuda (NVIDIA GPU 0) (default: %(default)s)")
    p.add_argument("--arch", default=None,
                   help="CUDA arch to build the GPU modules for, e.g. sm_90 (H100/H200) or sm_80 (A100); --target cuda "
                        "only (default: the GPU's own)")
    p.add_argument("--build-only", action="store_true",
                   help="--target cuda: build every GPU artifact that builds without a GPU (intvit's and TVM's CUDA "
                        "modules via nvcc, the ONNX files), print them with sizes and build times; time nothing, "
                        "write nothing")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes, e.g. 1,8,32 (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=10,
                   help="interleaved timing rounds; each backend gets PER_ROUND timed calls per round "
                        "(default: %(default)s)")
    p.add_argument("--per-round", type=int, default=3, help="timed calls per backend per round (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls per backend before timing (default: %(default)s)")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated; must include intvit_int8_tvm. llvm: from {', '.join(ALL_BACKENDS)} "
                        f"(default: {', '.join(DEFAULT_BACKENDS)}). cuda: from {', '.join(CUDA_BACKENDS)} "
                        "(default: all but torch_compile_*)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for every backend, recorded in the report (default: all %(default)s cores)")
    p.add_argument("--out", default="intvit-bench",
                   help="directory for <host>-<date>.json and .png, created if needed; a second run the same day "
                        "writes <host>-<date>-2.* and so on, never over an earlier report (default: %(default)s "
                        "in the working directory)")
    p.add_argument("--profile", action="store_true",
                   help="--target llvm: after the timing, print and record each intvit TVM backend's kernel profile "
                        "(per kernel class: time, share, achieved int8 MAC/s; bench/profile.py)")
    p.add_argument("--no-chart", action="store_true", help="write the JSON report only")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _command_line(args, backends, arch) -> str:
    """The command that repeats this run (every option spelled out, defaults included)."""
    return (f"intvit bench --model {args.model} --target {args.target}" + (f" --arch {arch}" if arch else "") +
            f" --batch {args.batch} --repeat {args.repeat} --per-round {args.per_round} --warmup {args.warmup} "
            f"--backends {','.join(backends)} --threads {args.threads}" + (" --profile" if args.profile else ""))


def _build_only(args, models, batches, backends, progress) -> int:
    """``--build-only``: build the GPU artifacts, print them; nothing timed, nothing written."""
    from .build_only import format_build_only, run_build_only
    from .latency import check_run_arguments
    backends, batches, *_, arch = check_run_arguments(models, batches, args.repeat, args.threads, backends,
                                                      args.per_round, args.warmup, args.target, args.arch,
                                                      build_only=True)
    result = run_build_only(models, batches, backends, arch, progress=progress)
    print(format_build_only(result))
    print(f"\nbuilt for CUDA {arch} in {result['wall_s']:.0f} s; nothing timed, nothing written")
    return 0


def run_command(args) -> int:
    """Run the benchmark the parsed ``args`` describe; print the table and the paths written."""
    from .latency import check_run_arguments, parse_batches, run
    progress = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    models = [m.strip() for m in args.model.split(",")]
    backends = None if args.backends is None else [b.strip() for b in args.backends.split(",")]
    batches = parse_batches(args.batch)
    if args.build_only:
        return _build_only(args, models, batches, backends, progress)
    backends, *_, arch = check_run_arguments(models, batches, args.repeat, args.threads, backends, args.per_round,
                                             args.warmup, args.target, args.arch)
    report = run(models, batches, args.repeat, args.threads, out_dir=args.out, progress=progress, backends=backends,
                 per_round=args.per_round, warmup=args.warmup, target=args.target, chart=not args.no_chart,
                 command=_command_line(args, backends, arch), arch=arch, profile=args.profile)
    from .profile import format_profile
    from .report import format_report
    print(format_report(report))
    for result in report["results"]:
        for name, entry in result["backends"].items():
            if entry.get("profile"):
                print(f"\n{result['model']}, {name}, kernel profile: " + format_profile(entry["profile"]))
    print(f"\nwrote {report['path']}" + (f" and {report['chart']}" if report["chart"] else "")
          + f" ({report['wall_s']:.0f} s)")
    return 0


def main(argv=None) -> int:
    """``python -m intvit.bench.command``: the same command as ``intvit bench``."""
    import argparse
    import sys
    parser = argparse.ArgumentParser(prog="python -m intvit.bench.command", description=DESCRIPTION.split("\n\n")[0])
    add_arguments(parser)
    try:
        return run_command(parser.parse_args(argv))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"intvit bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
