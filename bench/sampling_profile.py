"""Where a compiled module's time goes, from CPU samples rather than timers: ``python -m
intvit.bench.sampling_profile model.so [--seconds 10]``.

``bench.profile`` times every kernel call from an instrument on TVM's VM, which
stops the threads between kernels and reads ~30 % slow; this runs the module
in a loop in a child process, lets Linux ``perf record`` sample both cores for
``--seconds`` of it (after ``--warmup`` seconds), and gives each kernel its
share of the samples times the loop's time per run. A sample in a kernel's
code (the library's function symbols: a kernel's parallel body follows its
``*_compute_`` symbol) counts for that kernel; one in the Linux kernel
(``[kernel]``: mostly TVM's worker threads yielding while they wait for one
another or for the next kernel) or in another library counts as such. Kernels
are grouped by function name without its numeric suffix (``shiftmax3`` →
``shiftmax``). Needs ``perf`` and permission to sample (``perf_event_paranoid``
<= 1, or root); one ``--threads`` setting for the child (default: intvit's).
"""
from __future__ import annotations

import argparse
import bisect
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

from .record import command_line, write_record

_CHILD = """
import sys, time, numpy as np
from intvit.runtime import load
module = load(sys.argv[1])
c = module.compiled
x = np.random.default_rng(0).standard_normal(c.input_shape).astype(np.float32)
warmup, seconds = float(sys.argv[2]), float(sys.argv[3])
t0 = time.perf_counter()
while time.perf_counter() - t0 < warmup:
    c(x)
print("ready", flush=True)
runs, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    c(x)
    runs += 1
print(runs, time.perf_counter() - t0, flush=True)
"""


def kernel_family(symbol: str) -> str:
    """``int8_linear_requant_residual17_compute_`` → ``int8_linear_requant_residual``; every kernel's
    ``__tvm_ffi_*`` calling wrapper → one ``(kernel call wrappers)``."""
    if symbol.startswith("__tvm_ffi_"):
        return "(kernel call wrappers)"
    return re.sub(r"\d*_compute_$", "", symbol)


def attribute(samples, mappings: dict[str, int], symbols: list[tuple[int, int, str]], library: str,
              group=None) -> dict:
    """Samples per kernel family: ``samples`` are ``(ip, dso)`` pairs (``perf script -F ip,dso``),
    ``mappings`` the load address of file offset 0 of each mapped file, ``symbols`` the module library's
    ``(address, size, name)`` (``elf.function_symbols``), ``library`` the path it ran from. An address is
    the kernel of the nearest function symbol at or below it, named by ``group(symbol)`` (default
    ``kernel_family``)."""
    group = group or kernel_family
    symbols = sorted(symbols)
    starts = [s[0] for s in symbols]
    counts: collections.Counter = collections.Counter()
    for ip, dso in samples:
        if dso == library and library in mappings:
            i = bisect.bisect_right(starts, ip - mappings[library]) - 1
            counts[group(symbols[i][2]) if i >= 0 else "(module, before its first function)"] += 1
        elif dso.startswith("[kernel"):
            counts["[kernel] (threads waiting, system calls)"] += 1
        else:
            counts[f"[{os.path.basename(dso) or 'unknown'}]"] += 1
    return dict(counts)


def parse_perf_script(text: str) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """``(samples, mappings)`` from ``perf script --show-mmap-events -F ip,dso`` output: each sample's
    instruction address and file, and for each file mapped executable, the address its file offset 0 has."""
    samples, mappings = [], {}
    mmap = re.compile(r"PERF_RECORD_MMAP2? .*\[(0x[0-9a-f]+)\((0x[0-9a-f]+)\) @ (0x[0-9a-f]+|0) .*\]: r-xp (\S.*)$")
    for line in text.splitlines():
        found = mmap.search(line)
        if found:
            start, _size, offset, path = found.groups()
            mappings.setdefault(path.strip(), int(start, 16) - int(offset, 16))
            continue
        parts = line.split(None, 1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]+", parts[0]):
            samples.append((int(parts[0], 16), parts[1].strip().strip("()")))
    return samples, mappings


def kernel_function(symbol: str) -> str:
    """``int8_linear_requant1_compute_`` → ``int8_linear_requant1``: one row per kernel function (the same
    family's functions differ in their shapes or constants, e.g. qkv against Q·Kᵀ)."""
    return "(kernel call wrappers)" if symbol.startswith("__tvm_ffi_") else re.sub(r"_compute_$", "", symbol)


def sample(module_path: str, seconds: float, warmup: float, frequency: int, by: str = "family") -> dict:
    """Run ``module_path`` in a loop in a child process and sample it with ``perf``; returns the report."""
    from ..runtime import load
    from ..tvm_backend.elf import function_symbols
    from ..tvm_backend.runtime import module_cache_dir
    digest = load(module_path).meta["so_sha256"]
    child = subprocess.Popen([sys.executable, "-c", _CHILD, module_path, str(warmup), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the module loop stopped before it was ready")
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "perf.data")
            subprocess.run(["perf", "record", "-q", "-F", str(frequency), "-o", data, "-p", str(child.pid), "--",
                            "sleep", str(seconds)], check=True, capture_output=True)
            runs, elapsed = child.stdout.readline().split()
            script = subprocess.run(["perf", "script", "-i", data, "--show-mmap-events", "-F", "ip,dso"],
                                    check=True, capture_output=True, text=True).stdout
    finally:
        child.kill()
        child.wait()
    samples, mappings = parse_perf_script(script)
    library = next((p for p in mappings if os.path.basename(p).startswith(digest)), "")
    symbols = function_symbols(library) if library else []
    counts = attribute(samples, mappings, symbols, library, kernel_function if by == "function" else kernel_family)
    ms_per_run = 1e3 * float(elapsed) / max(int(runs), 1)
    total = sum(counts.values()) or 1
    rows = [{"what": k, "samples": v, "share": v / total, "ms_per_run": v / total * ms_per_run}
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    return {"module": os.path.abspath(module_path), "seconds": seconds, "runs": int(runs),
            "ms_per_run": ms_per_run, "samples": total, "frequency_hz": frequency, "by": by, "rows": rows,
            "module_cache": module_cache_dir()}


def format_report(report: dict) -> str:
    lines = [f"{report['runs']} runs in {report['seconds']:g} s: {report['ms_per_run']:.2f} ms a run; "
             f"{report['samples']} samples on all threads", f"{'ms a run':>9} {'share':>7}  kernel (or where)"]
    lines += [f"{r['ms_per_run']:9.3f} {100 * r['share']:6.1f}%  {r['what']}" for r in report["rows"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("module", help="a module written by intvit compile (model.so with its .json sidecar)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to sample (default: %(default)s)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of runs before sampling (default: %(default)s)")
    ap.add_argument("--frequency", type=int, default=999, help="samples per second per thread (default: %(default)s)")
    ap.add_argument("--by", choices=("family", "function"), default="family",
                    help="one row per kernel family (shiftmax3 counts as shiftmax) or per kernel function")
    ap.add_argument("--json", help="also write the report to this JSON file")
    args = ap.parse_args(argv)
    if shutil.which("perf") is None:
        ap.exit(2, f"{ap.prog}: needs Linux perf on PATH (apt-get install linux-perf)\n")
    if not (args.seconds > 0 and args.warmup >= 0 and args.frequency > 0):
        ap.exit(2, f"{ap.prog}: --seconds and --frequency must be positive, --warmup not negative\n")
    if args.json:
        from ..files import check_writable_target
        try:
            check_writable_target(args.json, "--json")
        except OSError as exc:
            ap.exit(2, f"{ap.prog}: {exc}\n")
    report = sample(args.module, args.seconds, args.warmup, args.frequency, args.by)
    print(format_report(report))
    if args.json:
        print(f"wrote {write_record(args.json, report, command_line('intvit.bench.sampling_profile', argv))}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
