"""Concurrent callers of one loaded module: one VM per calling thread (``LoadedModule.run``) against one VM
behind a lock, and the memory the extra VMs take.

``python -m intvit.bench.runtime_threads model.so [--calls 10]`` loads a module written by ``intvit
compile`` and, for 1, 2, 4 and 8 caller threads, runs both ways three times each, alternating, and prints
the median calls per second (the figures in ``tvm_backend/runtime.py`` and the README come from it).
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _calls_per_second(work, threads: int, calls: int) -> float:
    pool = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return threads * calls / (time.perf_counter() - t0)


def main(argv=None) -> int:
    from intvit.runtime import load
    p = argparse.ArgumentParser(prog="python -m intvit.bench.runtime_threads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("module", help="a .so written by intvit compile")
    p.add_argument("--calls", type=int, default=10, help="calls per thread per measurement (default: %(default)s)")
    args = p.parse_args(argv)
    module = load(args.module)
    x = np.random.default_rng(0).standard_normal(module.compiled.input_shape).astype(np.float32)
    lock = threading.Lock()

    def locked():
        for _ in range(args.calls):
            with lock:
                module.compiled(x)

    def per_thread():
        for _ in range(args.calls):
            module.run(x)

    module.run(x)
    before = _rss_mb()
    _calls_per_second(per_thread, 8, 1)
    print(f"8 extra VMs: +{_rss_mb() - before:.1f} MB")
    for threads in (1, 2, 4, 8):
        rates = {"per-thread VM": [], "one VM + lock": []}
        for _ in range(3):
            rates["one VM + lock"].append(_calls_per_second(locked, threads, args.calls))
            rates["per-thread VM"].append(_calls_per_second(per_thread, threads, args.calls))
        print(f"{threads} threads: " + ", ".join(f"{k} {np.median(v):.1f} calls/s" for k, v in rates.items()),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
