"""Concurrent callers of one loaded module: calls handed to the process's module workers, one VM each
(``LoadedModule.run``, ``tvm_backend.callers``), against one VM behind a lock called from the callers' own
threads, and the memory the workers' VMs take.

``python -m intvit.bench.runtime_threads model.so [--calls 10]`` loads a module written by ``intvit
compile`` and, for 1, 2, 4 and 8 caller threads, runs each way three times (the workers first, then the
lock) and prints the median calls per second (the figures in ``tvm_backend/runtime.py`` come from it).
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
    from intvit.tvm_backend.callers import worker_count
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

    def on_workers():
        for _ in range(args.calls):
            module.run(x)

    module.run(x)
    before = _rss_mb()
    _calls_per_second(on_workers, 8, 1)
    print(f"VMs of {worker_count()} workers: +{_rss_mb() - before:.1f} MB")
    # Workers first: every short-lived caller thread of the lock variant leaves a TVM pool behind, whose
    # polling threads would slow whatever runs after it (the very cost the workers remove).
    for name, work in (("workers", on_workers), ("one VM + lock", locked)):
        rates = {threads: np.median([_calls_per_second(work, threads, args.calls) for _ in range(3)])
                 for threads in (1, 2, 4, 8)}
        print(f"{name}: " + ", ".join(f"{t} threads {r:.0f} calls/s" for t, r in rates.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
