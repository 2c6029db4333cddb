"""What ``intvit bench`` writes: the stdout table, ``<host>-<date>.json`` and a PNG chart beside it.

JSON layout (``format`` = ``FORMAT``): ``machine`` (``bench.machine``), the run's
settings (``target``, ``arch`` — the CUDA arch the GPU modules were built for,
null on the CPU — ``repeat``, ``per_round``, ``warmup``, ``backends``,
``command``), ``method`` (how each number is measured on that target, in
words: ``METHOD`` or ``CUDA_METHOD``), ``models``,
and ``results``: one entry per model and batch size, whose ``backends`` map
each backend to either ``{"available": false, "reason": ...}`` or its numbers
(``median_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms``, ``min_ms``, ``samples``,
``images_per_s``, ``peak_mib``, ``size_bytes``, ``size_mb``, ``artifact``,
``build_s``, ``vs_intvit_tvm``).
"""
from __future__ import annotations

import os
import re
import textwrap

from .backends import ALL_BACKENDS, REFERENCE
from .record import write_record

FORMAT = "intvit.bench/2"
METHOD = {
    "clock": "time.perf_counter_ns around one call (numpy in, numpy logits out), in ms",
    "schedule": "warm-up calls per backend, then interleaved rounds: each backend in turn gets 1 untimed "
                "call and per_round timed calls",
    "statistics": "median; p90 and p99 by nearest rank over repeat*per_round samples (p99 is the slowest call "
                  "when there are fewer than 100); images_per_s = batch / median; vs_intvit_tvm = median / "
                  "intvit_int8_tvm median (above 1: slower than intvit INT8)",
    "peak_mib": "Linux: VmHWM minus VmRSS just before the call, over each backend's first call at this batch size "
                "(fresh module or ORT session; torch.compile: the first call after compiling), the high-water mark "
                "reset through /proc/self/clear_refs after malloc_trim: the working memory on top of the loaded "
                "model (activations, workspaces, the pools ORT and TVM allocate on a first call and keep); "
                "weights are not in it",
    "size_mb": "bytes of the artifact the backend runs / 1e6: the ONNX file (ORT), the exported .so (TVM), "
               "parameters + buffers (torch, torch.compile)",
    "tvm_fp32": "the float ONNX through tvm.relax.frontend.onnx with intvit's schedule effort (bench.tvm_float_cpu): "
                "FastMathTransform (exp, erf), the patch convolution as patchify + matmul, weights packed into intvit's "
                "16-column panels, intvit's register-tiled "
                "GEMM schedule in float32 (16-lane FMA, fused epilogue, parallel tiles) and its row-wise schedule",
}
CUDA_METHOD = {
    "clock": "CUDA events (torch.cuda.Event, enable_timing) recorded on torch's current stream before and after one "
             "call, the device synchronised before the call and after it; inputs resident on the GPU, outputs left "
             "there; TVM launches on that stream (tvm_ffi.use_torch_stream), TensorRT is given it, ONNX Runtime "
             "returns when its work is done; in ms",
    "schedule": METHOD["schedule"],
    "statistics": METHOD["statistics"],
    "peak_mib": "over each backend's first call at this batch size (fresh module, session or engine): torch_*: "
                "torch.cuda.max_memory_allocated after the call (peak stats reset before it) minus memory_allocated "
                "before it; TVM (intvit_int8_tvm, tvm_fp32/fp16) and ORT: the GPU's used memory (cudaMemGetInfo via "
                "torch.cuda.mem_get_info, whole device, 2 MiB pages) after the call minus before it, TVM's cached free "
                "blocks released first (vm.builtin.memory_manager.clear): the pools they allocate on a first call "
                "and keep (TVM: also its kernels' code, loaded on first use); TensorRT: "
                "the engine's device_memory_size for its execution context; weights are not in it",
    "size_mb": "bytes of the artifact the backend runs / 1e6: the exported .so with the embedded CUDA fatbin (TVM), "
               "the ONNX file (ORT), the serialized engine (TensorRT), parameters + buffers in the run's dtype (torch)",
    "tvm_fp16": "relax ToMixedPrecision (out_dtype float16: float16 compute and accumulation) of the float ONNX, "
                "then dlight's default GPU rules like tvm_fp32 (tensor cores via WMMA for large float16 matmuls)",
    "torch": "eager on cuda:0, torch.no_grad, the model and input converted to the dtype once, before timing; "
             "TF32 settings as the machine facts record them",
}
COLUMNS = f"  {'backend':20} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>8} {'peak MiB':>9} " \
          f"{'size MB':>8} {'x intvit':>9}"
LEGEND = (f"x intvit = median / {REFERENCE} median (above 1: slower than intvit INT8). peak MiB = memory the "
          "first call at this batch size adds on top of the loaded model (activations, workspaces, runtime pools; "
          "not the weights). size MB = the artifact each backend runs (ONNX file, compiled .so, or torch "
          "parameters).")
CUDA_LEGEND = (f"x intvit = median / {REFERENCE} median (above 1: slower than intvit INT8). Times are CUDA-event "
               "ms per batch, inputs and outputs on the GPU. peak MiB = memory the first call at this batch size "
               "adds: torch's allocator peak for torch_*, the GPU's used memory for TVM and ORT, the engine's "
               "context memory for TensorRT (not the weights). size MB = the artifact each backend runs.")


def method(target: str) -> dict:
    """How each number is measured on ``target``, in words (recorded in the report)."""
    return CUDA_METHOD if target == "cuda" else METHOD


def device_label(report: dict) -> str:
    """What a table or chart ran on: the CPU and its threads, or the GPU and the arch."""
    m = report["machine"]
    if report.get("target") == "cuda":
        gpu = m["gpus"][0]["name"] if m.get("gpus") else "GPU 0"
        return f"{gpu}, CUDA {report.get('arch')}"
    caps = ", ".join(f"{k}={v}" for k, v in (m.get("isa_caps") or {}).items())
    return f"{m['cpu']}, {m['threads']} threads" + (f"; instruction sets capped by {caps}" if caps else "")


def format_table(result: dict, machine: dict, device: str | None = None) -> str:
    """One model and batch size: a row per backend, intvit INT8 first (``device``: default the CPU and threads)."""
    device = device or f"{machine['cpu']}, {machine['threads']} threads"
    lines = [f"{result['model']}, batch {result['batch']} ({device})", COLUMNS]
    for name, r in result["backends"].items():
        if not r["available"]:
            lines.append(f"  {name:20} unavailable: {r['reason']}")
            continue
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        lines.append(f"  {name:20} {r['median_ms']:10.2f} {r['p90_ms']:9.2f} {r['p99_ms']:9.2f} "
                     f"{r['images_per_s']:8.1f} {peak:>9} {r['size_mb']:8.1f} {r['vs_intvit_tvm']:9.2f}")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    tables = [format_table(r, report["machine"], device_label(report)) for r in report["results"]]
    return "\n\n".join(tables + [CUDA_LEGEND if report.get("target") == "cuda" else LEGEND])


def output_stem(report: dict, out_dir: str) -> str:
    """``out_dir/<host>-<date>`` (the host name reduced to file-name-safe characters), or ``…-2``, ``…-3``, …
    when a report of that name is already there: a second run the same day never overwrites the first."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", report["machine"]["host"]) or "host"
    base = os.path.join(out_dir, f"{host}-{report['date'][:10]}")
    stem, n = base, 1
    while os.path.exists(stem + ".json") or os.path.exists(stem + ".png"):
        n += 1
        stem = f"{base}-{n}"
    return stem


def write(report: dict, out_dir: str, chart: bool = True) -> tuple[str, str | None]:
    """Write the JSON report (and the chart); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = output_stem(report, out_dir)
    write_record(stem + ".json", {k: v for k, v in report.items() if k not in ("path", "chart")}, report["command"])
    png = None
    if chart:
        png = stem + ".png"
        write_chart(report, png)
    return stem + ".json", png


def write_chart(report: dict, path: str) -> None:
    """Median latency (log scale) against batch size, one line per backend, one panel per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    from matplotlib import colormaps
    palette = colormaps["tab20"]
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    fig = Figure(figsize=(7 * len(models), 5), layout="constrained")
    FigureCanvasAgg(fig)
    m, cuda = report["machine"], report.get("target") == "cuda"
    where = device_label(report) if cuda else device_label(report).replace(m["cpu"], f"{m['cpu']} ({m['llvm_mcpu']})", 1)
    head, _, caps = where.partition("; ")          # the caps (device_label) on a line of their own
    caps = textwrap.fill(caps, 80 * len(models))
    fig.suptitle(f"{head}, {report['date'][:10]}" + (f"\n{caps}" if caps else ""), fontsize=10)
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        rows = [r for r in report["results"] if r["model"] == model]
        batches = [r["batch"] for r in rows]
        for j, name in enumerate(report.get("backends", ALL_BACKENDS)):
            pts = [(r["batch"], r["backends"][name]["median_ms"]) for r in rows
                   if r["backends"].get(name, {}).get("available")]
            if pts:       # tab20: a colour of its own for each of up to 20 backends (the CPU has 13 or more)
                ax.plot(*zip(*pts), marker="o", linewidth=2.5 if name == REFERENCE else 1.2,
                        color=palette(j % palette.N), linestyle="-" if j < palette.N else "--",
                        label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel("median latency per batch (ms" + (", CUDA events)" if cuda else ")"))
        ax.set_title(f"{model}: latency by batch size")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
