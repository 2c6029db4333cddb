"""The machine's int8 instruction peaks, measured now: AMX ``tdpbusd``, AVX-512 VNNI ``vpdpbusd``, AVX-VNNI
``vpdpbusd`` on ymm and ``vpmaddwd`` (the 16-bit form of CPUs without VNNI), each where this CPU has it.

``python -m intvit.bench.peaks`` compiles TVM kernels that do nothing but the instruction, on all
``TVM_NUM_THREADS`` threads, and prints the multiply-accumulates per second they reach:

* **AMX**: per thread, four 16 × 16 int32 accumulator tiles fed by two A and two B tiles loaded once
  (2 × 2 blocking, as intvit's GEMMs), ``ITERATIONS`` × 4 ``tdpbusd`` (16·16·64 MACs each);
* **the vector dot products** (``DOT_PEAKS``): per thread, ``VNNI_CHAINS`` independent accumulators
  (enough to hide the instruction's latency), ``ITERATIONS`` × that many instructions: ``vpdpbusd`` on
  zmm (64 MACs) or ymm (32), ``vpmaddwd`` + ``vpaddd`` on zmm (32) where the CPU has AVX-512BW, else ymm (16)
  — the widths intvit's GEMMs use on this CPU (``x86.gemm_isa``).

Neither touches memory in its loop, so these are the rates the GEMM kernels are compared with in the
kernel profile (``bench.profile``): the machine's own, measured in the same process as the profile
(on a shared host they move with the load: one figure from another day would mislead).
"""
from __future__ import annotations

import functools
import time

import numpy as np

ITERATIONS = 5_000_000     # per run: ~10 ms of instructions on a 2-core VM (200k was 0.3 ms, within a thread wake-up)
VNNI_CHAINS = 12
TDPBUSD_MACS = 16 * 16 * 64
# result key → (the module ISA it is the peak of, the instruction (``x86``'s definition, the one the GEMMs'
# tensor intrinsics use), the CPU features it needs)
DOT_PEAKS = {
    "vnni_tmacs": ("vnni", "VPDPBUSD", ("avx512vnni", "avx512bw")),
    "avxvnni_tmacs": ("avxvnni", "VPDPBUSD_256", ("avxvnni",)),
    "pmaddwd_zmm_tmacs": ("avx2", "PMADDWD_512", ("avx512bw", "avx512f")),
    "pmaddwd_ymm_tmacs": ("avx2", "PMADDWD_256", ("avx2",)),
}


def dot_of(key: str):
    """The ``x86.DotInstruction`` whose peak ``DOT_PEAKS[key]`` measures."""
    from intvit.tvm_backend import x86
    return getattr(x86, DOT_PEAKS[key][1])


def _threads() -> int:
    from intvit.tvm_backend.threads import use_physical_cores
    use_physical_cores()
    import os
    return int(os.environ.get("TVM_NUM_THREADS") or os.cpu_count() or 1)


@functools.lru_cache(maxsize=None)
def _amx_kernel(threads: int):
    import tvm
    from tvm.script import tirx as T

    from intvit.tvm_backend.build import make_target, resolve_target
    u8 = T.uint8

    def tile(op, *args):
        return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{op}", *args))

    @T.prim_func(s_tir=True)
    def main(src: T.Buffer((1024,), "int8"), cfg: T.Buffer((8,), "int64"), out: T.Buffer((threads, 256), "int32"),
             n: T.int32):
        for t in T.parallel(threads):
            tile("ldtilecfg", T.address_of(cfg[0]))       # amx.tile_config_words(), passed in
            for r in T.unroll(4):
                tile("tilezero", T.Cast("uint8", r))
            for r in T.unroll(4):
                tile("tileloadd64", T.Cast("uint8", r + 4), T.address_of(src[0]), T.int64(64))
            for _ in range(n):
                tile("tdpbusd", u8(0), u8(4), u8(6))
                tile("tdpbusd", u8(1), u8(4), u8(7))
                tile("tdpbusd", u8(2), u8(5), u8(6))
                tile("tdpbusd", u8(3), u8(5), u8(7))
            tile("tilestored64", u8(0), T.address_of(out[t, 0]), T.int64(64))
            tile("tilerelease")

    from intvit.tvm_backend.amx import with_tile_request
    lib = tvm.compile(tvm.IRModule({"main": with_tile_request(main)}), target=make_target(resolve_target("llvm")))
    return lib


@functools.lru_cache(maxsize=None)
def _dot_kernel(threads: int, key: str = "vnni_tmacs", cpu: str | None = None):
    """The loop of ``DOT_PEAKS[key]``: ``VNNI_CHAINS`` independent accumulators per thread, compiled for this
    CPU (or for ``cpu``, LLVM's name: to read its code, not to run it)."""
    import tvm
    from tvm.script import tirx as T

    from intvit.tvm_backend.build import make_target, resolve_target
    dot = dot_of(key)
    llvm, lanes, operand = dot.llvm, dot.lanes, dot.operand_vector
    chains, acc_t = VNNI_CHAINS, f"int32x{lanes}"

    def step(acc, a, b):
        if dot.accumulates:
            return T.call_llvm_pure_intrin(acc_t, llvm, acc, a, b)
        # the product must depend on the chain, or LLVM hoists the loop-invariant vpmaddwd out of the loop
        # (and the loop measures vpaddd alone); the values wrap, which does not change the timing
        return acc + T.call_llvm_pure_intrin(acc_t, llvm, T.reinterpret(acc, dtype=operand), b)

    @T.prim_func(s_tir=True)
    def main(a: T.Buffer((64,), "int8"), b: T.Buffer((64,), "int8"), out: T.Buffer((threads, 16), "int32"),
             n: T.int32):
        for t in T.parallel(threads):
            acc = T.alloc_buffer((chains * lanes,), "int32")
            for c in T.unroll(chains):
                acc[T.ramp(c * lanes, 1, lanes)] = T.broadcast(T.int32(0), lanes)
            for _ in range(n):
                for c in T.unroll(chains):
                    acc[T.ramp(c * lanes, 1, lanes)] = step(
                        acc[T.ramp(c * lanes, 1, lanes)],
                        T.reinterpret(a.vload([0], f"int8x{lanes * 4}"), dtype=operand),
                        T.reinterpret(b.vload([0], f"int8x{lanes * 4}"), dtype=operand))
            out[t, T.ramp(0, 1, lanes)] = acc[T.ramp(0, 1, lanes)]
            for c in range(1, chains):
                out[t, T.ramp(0, 1, lanes)] = out[t, T.ramp(0, 1, lanes)] + acc[T.ramp(c * lanes, 1, lanes)]

    return tvm.compile(tvm.IRModule({"main": main}), target=make_target(resolve_target("llvm", cpu=cpu)))


def dot_macs(key: str) -> int:
    """Multiply-accumulates per instruction of ``DOT_PEAKS[key]``: its group (4 bytes or 2 words) per int32
    lane."""
    dot = dot_of(key)
    return dot.lanes * dot.group


def _rate(lib, args, macs_per_iteration: int, threads: int, iterations: int, repeats: int) -> float:
    lib["main"](*args, 1000)                                   # warm up (thread pool, AMX state)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        lib["main"](*args, iterations)
        best = max(best, threads * iterations * macs_per_iteration / (time.perf_counter() - t0))
    return best


def measure_peaks(iterations: int = ITERATIONS, repeats: int = 5) -> dict:
    """``{"threads", "amx_tmacs", *DOT_PEAKS}``: the best of ``repeats`` runs of each instruction loop, in
    T int8 MAC/s over all threads; a peak is None where this CPU (or Linux) cannot run the instruction. The
    ``vpmaddwd`` peak is measured only where intvit's GEMMs use it, a CPU without VNNI (with VNNI, LLVM fuses
    ``vpmaddwd`` + ``vpaddd`` into ``vpdpwssd``), and of its two widths only the one they use (zmm with
    AVX-512BW)."""
    import tvm

    from intvit.tvm_backend.amx import host_has_amx
    from intvit.tvm_backend.x86 import host_has
    threads = _threads()
    dev = tvm.cpu()
    result = {"threads": threads, "amx_tmacs": None, **{key: None for key in DOT_PEAKS}}
    ones = np.ones(1024, np.int8)
    zmm = host_has("avx512bw", "avx512f")
    vnni = host_has("avx512vnni") or host_has("avxvnni")
    for key, (isa, _, features) in DOT_PEAKS.items():
        if not host_has(*features) or (isa == "avx2" and (vnni or zmm != (key == "pmaddwd_zmm_tmacs"))):
            continue
        args = [tvm.runtime.tensor(ones[:64], dev), tvm.runtime.tensor(ones[:64], dev),
                tvm.runtime.tensor(np.zeros((threads, 16), np.int32), dev)]
        result[key] = _rate(_dot_kernel(threads, key), args, VNNI_CHAINS * dot_macs(key), threads,
                            iterations, repeats) / 1e12
    if host_has_amx():
        from intvit.tvm_backend.amx import tile_config_words
        args = [tvm.runtime.tensor(ones, dev), tvm.runtime.tensor(np.array(tile_config_words(), np.int64), dev),
                tvm.runtime.tensor(np.zeros((threads, 256), np.int32), dev)]
        result["amx_tmacs"] = _rate(_amx_kernel(threads), args, 4 * TDPBUSD_MACS, threads, iterations // 4,
                                    repeats) / 1e12
    return result


# each peak's name in the profile's column heading ("of VNNI peak") and in full
PEAK_NAMES = {"amx_tmacs": ("AMX", "AMX tdpbusd"), "vnni_tmacs": ("VNNI", "VNNI vpdpbusd"),
              "avxvnni_tmacs": ("AVX-VNNI", "AVX-VNNI vpdpbusd"), "pmaddwd_zmm_tmacs": ("vpmaddwd", "vpmaddwd (zmm)"),
              "pmaddwd_ymm_tmacs": ("vpmaddwd", "vpmaddwd (ymm)")}


def format_peaks(peaks: dict) -> str:
    parts = [f"{name} {peaks[key]:.2f} T MAC/s" for key, (_, name) in PEAK_NAMES.items() if peaks.get(key)]
    return (f"measured int8 peaks ({peaks['threads']} threads): " + ", ".join(parts)) if parts else \
        "measured int8 peaks: none (no AMX, VNNI or AVX2 here)"


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m intvit.bench.peaks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=ITERATIONS, help="loop iterations (default: %(default)s)")
    args = ap.parse_args(argv)
    print(format_peaks(measure_peaks(args.iterations)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
