"""Time the backends of ``bench.backends`` side by side in one process: the measuring half of ``intvit bench``.

    intvit bench --model deit_small --batch 1,8 --repeat 10
    python -m intvit.bench.command ...          (the same command)

How it measures on the CPU (``--target llvm``), per model and batch size:

* **Peak memory** (``peak_mib``, Linux): each backend's first call at this
  batch size — on a module or ONNX Runtime session built for it, that had not
  run yet (``torch.compile``: the first call after its compiling call) — runs
  with the process's RSS high-water mark reset (``5`` to
  ``/proc/self/clear_refs``, after ``malloc_trim`` so that glibc's cached free
  memory does not hide new allocations); ``VmHWM`` minus the RSS just before
  the call, in MiB, is the working memory an inference at this batch size
  needs on top of the loaded model: activations, workspaces, and the pools
  that ONNX Runtime (its arena) and TVM (its VM storage) allocate on a first
  call and keep. The weights are not in it: ``size_bytes`` is their side.
* **Warm-up**: then every backend runs ``warmup`` untimed calls (JIT, caches,
  thread pools).
* **Interleaved rounds**: ``repeat`` rounds; in each, every backend in turn gets
  one untimed call and then ``per_round`` timed ones. Machine drift (other
  load, clock changes) hits all backends alike, and the untimed call keeps one
  backend's still-spinning worker threads from being billed to the next.
* **Clock**: ``time.perf_counter_ns`` around one call (input already in memory,
  output converted to numpy), in milliseconds.
* **Statistics** over the ``repeat × per_round`` samples: median, p90, p99
  (nearest rank: with fewer than 100 samples p99 is the slowest call), mean,
  min; images/s = batch / median; ``vs_intvit_tvm`` = the backend's median /
  intvit INT8 (TVM)'s median (above 1: slower than intvit).
* **Threads**: every backend gets ``threads`` (torch and inductor kernels via
  ``torch.set_num_threads``, ORT intra-op threads, ``TVM_NUM_THREADS``); the
  number is in the report.

On ``--target cuda`` the backends are ``bench.cuda_backends``' and the same
schedule is timed by ``bench.cuda_latency.measure_cuda`` (CUDA events, GPU
memory); ``--build-only`` is ``bench.build_only``.

No test asserts a timing: tests run this in a tiny configuration so the code
path stays alive.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import gc
import os
import tempfile
import time

import numpy as np
import torch

from .backends import ALL_BACKENDS, DEFAULT_BACKENDS, REFERENCE, ModelBackends, backend_names, check_backends
from .models import build_model, check_model_name
from .stats import summarize
from .targets import check_cuda, check_target_options

__all__ = ["ALL_BACKENDS", "DEFAULT_BACKENDS", "REFERENCE", "measure", "parse_batches", "run", "summarize"]


class BenchArgumentError(ValueError):
    """A batch list, repeat count or thread count that is not a positive integer."""


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` → ``[1, 8, 32]``; anything but distinct positive integers raises ``BenchArgumentError``."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        batches = [int(p) for p in parts]
    except ValueError:
        batches = []
    if not batches or any(b <= 0 for b in batches) or len(set(batches)) != len(batches):
        raise BenchArgumentError(f"--batch {text!r}: give distinct positive integers separated by commas, e.g. 1,8,32")
    return batches


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BenchArgumentError(f"{name} must be a positive integer, got {value!r}")
    return value


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _malloc_trim() -> None:
    """Hand glibc's cached free memory back to the OS, so that a call's allocations show up in the RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):     # not glibc
        pass


def call_peak_mib(fn, x) -> float | None:
    """MiB one call of ``fn(x)`` adds to the process's resident set at its peak (Linux; None elsewhere)."""
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                     # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
    except OSError:
        return None
    fn(x)
    return max(0, _status_kib("VmHWM") - before) / 1024


def measure(fns: dict, x: np.ndarray, repeat: int, warmup: int = 3, per_round: int = 3, progress=None) -> dict:
    """Latency statistics and peak memory per backend (see the module docstring for the method).

    ``progress``, if given, hears about finished rounds at most every 15 s.
    """
    peaks = {k: call_peak_mib(f, x) for k, f in fns.items()}      # each backend's first call at this batch
    for f in fns.values():
        for _ in range(warmup):
            f(x)
    times = {k: [] for k in fns}
    last = time.perf_counter()
    for i in range(repeat):                       # interleaved rounds: drift hits every backend alike
        for k, f in fns.items():
            f(x)
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                f(x)
                times[k].append((time.perf_counter_ns() - t0) / 1e6)
        if progress and time.perf_counter() - last > 15 and i + 1 < repeat:
            progress(f"  round {i + 1}/{repeat}")
            last = time.perf_counter()
    return {k: {**summarize(ts, x.shape[0]), "peak_mib": peaks[k]} for k, ts in times.items()}


@contextlib.contextmanager
def _threads(n: int):
    """Every backend's thread count set to ``n`` for the run, torch's restored after."""
    before, env = torch.get_num_threads(), os.environ.get("TVM_NUM_THREADS")
    torch.set_num_threads(n)
    os.environ["TVM_NUM_THREADS"] = str(n)      # read when TVM's thread pool starts
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = env


def _backend_entry(backend, stats: dict | None) -> dict:
    if backend.unavailable:
        return {"available": False, "reason": backend.unavailable}
    entry = {"available": True, **stats, "size_bytes": backend.size_bytes, "size_mb": backend.size_bytes / 1e6,
             "artifact": backend.artifact, "build_s": round(backend.build_s, 2)}
    if getattr(backend.compiled, "isa", None):
        entry["gemm_isa"] = backend.compiled.isa           # the instruction set intvit's GEMMs were built for
    return entry


def check_run_arguments(models, batches, repeat, threads, backends, per_round, warmup, target, arch=None,
                        build_only=False) -> tuple:
    """Every argument of ``run`` checked, cheapest first and the device last; returns
    ``(backends in report order, batches, repeat, per_round, threads, arch)`` (``arch``: None for llvm)."""
    check_target_options(target, arch, build_only)
    backends = check_backends(backend_names(target)[1] if backends is None else backends, target)
    batches = [_positive("each batch size", b) for b in batches]
    repeat, per_round, threads = (_positive(n, v) for n, v in
                                  (("--repeat", repeat), ("--per-round", per_round), ("--threads", threads)))
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise BenchArgumentError(f"--warmup must be a non-negative integer, got {warmup!r}")
    for name in models:
        check_model_name(name)
    arch = check_cuda(arch, build_only) if target == "cuda" else None
    return backends, batches, repeat, per_round, threads, arch


def run(models, batches, repeat: int, threads: int, out_dir=None, progress=print, backends=None,
        per_round: int = 3, warmup: int = 3, target: str = "llvm", chart: bool = True, command: str = "",
        arch: str | None = None, profile: bool = False) -> dict:
    """Benchmark ``backends`` (default: the target's defaults) for each model and batch size on ``target``
    (``llvm``: this CPU; ``cuda``: GPU 0, built for ``arch``, default the GPU's own); returns the report
    (see ``bench.report``).

    ``profile`` (CPU): after the timing, each intvit TVM backend's kernel profile (``bench.profile``: per kernel
    class time, share and achieved int8 MAC/s) goes into its result entry as ``"profile"``.

    Every argument is checked before anything is built, and nothing is written
    unless the whole run succeeds: then ``out_dir/<host>-<date>.json`` and (if
    ``chart``) the ``.png`` beside it, whose paths are in ``report["path"]`` and
    ``report["chart"]``.
    """
    from . import report as rep
    from .machine import machine_facts

    if profile and target == "cuda":
        raise BenchArgumentError("--profile times the kernels of intvit's CPU module; use it with --target llvm")
    backends, batches, repeat, per_round, threads, arch = check_run_arguments(
        models, batches, repeat, threads, backends, per_round, warmup, target, arch)
    cuda = target == "cuda"
    t_start = time.perf_counter()
    say = lambda msg: progress(f"[{time.perf_counter() - t_start:6.1f} s] {msg}")  # noqa: E731
    built = [build_model(name) for name in models]        # an .onnx that is not a float ViT fails here
    for bm in built:
        if bm.fixed_batch and any(b != bm.fixed_batch for b in batches):
            raise BenchArgumentError(f"{bm.name} has a fixed batch size of {bm.fixed_batch}; run it with "
                                     f"--batch {bm.fixed_batch} or export it with a dynamic batch axis")
    report = {"format": rep.FORMAT, "date": dt.datetime.now().isoformat(timespec="seconds"), "command": command,
              "target": target, "arch": arch, "machine": machine_facts(threads), "repeat": repeat,
              "per_round": per_round, "warmup": warmup, "backends": list(backends), "method": rep.method(target),
              "models": {}, "results": []}
    with _threads(threads), tempfile.TemporaryDirectory(prefix="intvit-bench-") as work:
        for bm in built:
            say(f"{bm.label}: {bm.description}")
            report["models"][bm.label] = {"description": bm.description,
                                          "parameters": sum(p.numel() for p in bm.model.parameters())}
            if cuda:
                from .cuda_backends import CudaModelBackends
                prepared = CudaModelBackends(bm, backends, work, arch, threads, say)
            else:
                prepared = ModelBackends(bm, backends, threads, work, say)
            for batch in batches:
                say(f"{bm.label}, batch {batch}: building the batch-specific backends")
                x = np.random.default_rng(0).standard_normal((batch, bm.channels, bm.image, bm.image)) \
                    .astype(np.float32)
                ready = prepared.for_batch(batch, x) if cuda else prepared.for_batch(batch)
                fns = {k: b.run for k, b in ready.items() if not b.unavailable}
                say(f"{bm.label}, batch {batch}: timing {len(fns)} backends: a first call each (peak memory), "
                    f"{warmup} warm-up calls, {repeat} interleaved rounds of 1 untimed + {per_round} timed calls"
                    + (" (CUDA events)" if cuda else ""))
                if cuda:
                    from .cuda_latency import measure_cuda
                    stats = measure_cuda(ready, batch, repeat, warmup=warmup, per_round=per_round, progress=say)
                else:
                    stats = measure(fns, x, repeat, warmup=warmup, per_round=per_round, progress=say)
                ref = stats[REFERENCE]["median_ms"]
                for s in stats.values():
                    s["vs_intvit_tvm"] = s["median_ms"] / ref
                result = {"model": bm.label, "batch": batch, **prepared.facts,
                          "backends": {k: _backend_entry(b, stats.get(k)) for k, b in ready.items()}}
                if profile and not cuda:
                    from .profile import profile as profile_kernels
                    for k, b in ready.items():
                        if b.compiled is not None:
                            say(f"{bm.label}, batch {batch}: profiling {k}'s kernels")
                            result["backends"][k]["profile"] = profile_kernels(b.compiled, repeat=max(3, repeat))
                report["results"].append(result)
                ready = fns = None          # let this batch's modules and sessions go before the next are built
                say(f"{bm.label}, batch {batch}: done")
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    if out_dir:
        report["path"], report["chart"] = rep.write(report, out_dir, chart=chart)
    return report
