"""Where a compiled integer ViT spends its time: per kernel class, time and achieved int8 MAC/s.

``python -m intvit.bench.profile model.so [--repeat 20] [--json out.json]`` loads a module written by
``intvit compile``, runs it with an instrument on TVM's Relax VM (``VirtualMachine.set_instrument``: a
timestamp before and after every call the VM makes), and groups the calls by kernel class
(``kernel_class``). For the GEMM classes it counts multiply-accumulates from the shapes the kernel saw —
``MACs = numel(output) · K`` with ``K`` the last dimension of the first operand — and prints the achieved
rate. Each call's time includes the instrument's own overhead (about a microsecond; the shapes are read after
the clock stops), so classes made of many tiny calls read slightly high; the first run (allocation, first
touch) is discarded.

Timings need a quiet machine: run it alone.
"""
from __future__ import annotations

import argparse
import collections
import math
import time

import numpy as np
from .record import command_line, write_record

# (class, predicate on the kernel's name) in the order they are tried; the first match wins.
CLASSES = (
    ("VM builtins (allocation, checks)", lambda name, shapes: name.startswith("vm.")),
    ("GEMM int8: Q·Kᵀ", lambda name, shapes: _is_gemm(name) and not name.startswith("int16_gemm")
     and bool(shapes) and len(shapes[-1]) == 4 and shapes[-1][-1] >= shapes[-1][-2]),
    ("GEMM int16×int8: A·V", lambda name, shapes: name.startswith("int16_gemm")),
    ("GEMM int8: linear", lambda name, shapes: _is_gemm(name) and bool(shapes)),
    ("LayerNorm", lambda name, shapes: "layernorm" in name),
    ("Shiftmax", lambda name, shapes: "shiftmax" in name or "softmax" in name),
    ("operand packing", lambda name, shapes: "pack" in name or "compensation" in name),
    ("residual add / requant", lambda name, shapes: "add" in name or "requant" in name or "saturate" in name),
    ("layout (slice / transpose / cast)", lambda name, shapes: any(w in name for w in ("transpose", "reshape",
                                                                                        "slice", "cast"))),
    ("input quantizer", lambda name, shapes: "round" in name or "divide" in name),
)


def _is_gemm(name: str) -> bool:
    return "linear" in name or "gemm" in name or "matmul" in name


def kernel_class(name: str, shapes: list[tuple]) -> str:
    """The class of a VM call from its symbol name and its arguments' shapes (``CLASSES``)."""
    for label, test in CLASSES:
        if test(name, shapes):
            return label
    return "other"


def gemm_macs(shapes: list[tuple], label: str = "") -> int:
    """``numel(output) · K``: the output is the last argument, ``K`` the first operand's last dimension. A
    ``Q·Kᵀ`` output may be wider than its keys (x86 computes the panels' padding columns,
    ``import_gemm.GemmEmitter._padded_width``): only its ``T × T`` logits are counted."""
    out = shapes[-1]
    if label == "GEMM int8: Q·Kᵀ":
        out = (*out[:-1], out[-2])
    return math.prod(out) * shapes[0][-1]


def profile(compiled, repeat: int = 20, seed: int = 0, peaks: bool = True) -> dict:
    """Per-class totals over ``repeat`` runs of a ``build.CompiledIntViT`` on random images (median run time
    reported too). Returns ``{"batch", "median_ms", "classes": {label: {"ms", "calls", "gmac"}}, "isa",
    "peaks"}`` per run; ``peaks`` (``bench.peaks.measure_peaks``, measured right after the profiled runs
    unless ``peaks=False``) are what the GEMM rates are compared with."""
    import tvm
    from tvm import relax
    vm = relax.VirtualMachine(compiled.executable, compiled.dev)
    started: dict[str, float] = {}
    totals = collections.defaultdict(lambda: [0.0, 0, 0])         # label -> [seconds, calls, MACs]
    recording = [False]

    def instrument(func, symbol, before, ret, *args):
        if before:
            started[symbol] = time.perf_counter()
            return 0
        if recording[0]:
            elapsed = time.perf_counter() - started[symbol]     # before the shapes are read: not the kernel's
            shapes = [tuple(int(d) for d in a.shape) for a in args if hasattr(a, "shape")]
            label = kernel_class(symbol, shapes)
            row = totals[label]
            row[0] += elapsed
            row[1] += 1
            if label.startswith("GEMM"):
                row[2] += gemm_macs(shapes, label)
        return 0

    vm.set_instrument(instrument)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(compiled.input_shape).astype(np.float32) if compiled.input_dtype == "float32" else \
        rng.integers(-128, 128, compiled.input_shape).astype(np.int8)
    arg = tvm.runtime.tensor(x, compiled.dev)
    vm["main"](arg)                                                  # first touch: not counted
    runs = []
    recording[0] = True
    for _ in range(repeat):
        t0 = time.perf_counter()
        vm["main"](arg)
        runs.append(time.perf_counter() - t0)
    classes = {label: {"ms": 1e3 * s / repeat, "calls": calls // repeat, "gmac": macs / repeat / 1e9}
               for label, (s, calls, macs) in sorted(totals.items(), key=lambda kv: -kv[1][0])}
    result = {"batch": compiled.batch, "median_ms": 1e3 * float(np.median(runs)), "classes": classes,
              "isa": getattr(compiled, "isa", None)}
    if peaks:
        from .peaks import measure_peaks
        result["peaks"] = measure_peaks()
    return result


def peak_of(result: dict) -> tuple[str, float] | None:
    """``(name, T MAC/s)``: the measured peak of the instruction the module's int8 GEMMs use (``isa``: AMX,
    VNNI, AVX-VNNI or ``vpmaddwd``; a module without one is compared with VNNI), or None when it was not
    measured."""
    from .peaks import DOT_PEAKS, PEAK_NAMES
    peaks, isa = result.get("peaks") or {}, result.get("isa")
    keys = ["amx_tmacs"] if isa == "amx" else [k for k, spec in DOT_PEAKS.items() if spec[0] == isa] or \
        ["vnni_tmacs"]
    key = next((k for k in keys if peaks.get(k)), None)
    return (PEAK_NAMES[key][0], peaks[key]) if key else None


def format_profile(result: dict) -> str:
    total = sum(c["ms"] for c in result["classes"].values())
    peak = peak_of(result)
    lines = [f"batch {result['batch']}: {result['median_ms']:.2f} ms a run (median, instrumented); per run:"]
    if result.get("peaks"):
        from .peaks import format_peaks
        lines.append(format_peaks(result["peaks"]))
    lines.append(f"{'kernel class':<36} {'calls':>6} {'ms':>9} {'share':>7} {'GMAC':>8} {'T MAC/s':>8}"
                 + (f" {'of ' + peak[0] + ' peak':>12}" if peak else ""))
    for label, c in result["classes"].items():
        gmac, rate = (f"{c['gmac']:.2f}", f"{c['gmac'] / c['ms']:.3f}") if c["gmac"] else ("", "")
        share = f" {100 * c['gmac'] / c['ms'] / peak[1]:>11.1f}%" if peak and c["gmac"] else ""
        lines.append(f"{label:<36} {c['calls']:>6} {c['ms']:>9.3f} {100 * c['ms'] / total:>6.1f}% {gmac:>8} {rate:>8}"
                     + share)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("module", help="a module written by intvit compile (model.so with its .json sidecar)")
    ap.add_argument("--repeat", type=int, default=20, help="profiled runs (default: %(default)s)")
    ap.add_argument("--json", help="also write the result to this JSON file")
    args = ap.parse_args(argv)
    from intvit.runtime import load
    result = profile(load(args.module).compiled, args.repeat)
    print(format_profile(result))
    if args.json:
        write_record(args.json, result, command_line("intvit.bench.profile", argv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
