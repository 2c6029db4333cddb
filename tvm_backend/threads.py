"""How many threads TVM's CPU thread pool runs intvit's kernels on.

TVM creates its pool on the first parallel kernel of a process, with
``TVM_NUM_THREADS`` threads, else ``OMP_NUM_THREADS``, else — on x86 — half
the logical CPUs, assuming two hyper-threads per core. On a machine without
hyper-threading (many cloud VMs) that is half the cores: DeiT-S at batch 1
takes 28.4 ms on 1 thread instead of 15.8 ms on 2 on this repo's 2-core VM.
``use_physical_cores`` sets ``TVM_NUM_THREADS`` to the physical cores this
process may run on, unless the user set either variable; it runs when
``intvit.tvm_backend`` is imported, before intvit runs any TVM code.
"""
from __future__ import annotations

import os

ENV = "TVM_NUM_THREADS"


def physical_cores(cpuinfo: str | None = None, allowed: set[int] | None = None) -> int | None:
    """Distinct (package, core) pairs among the CPUs in ``allowed`` (default: this process's affinity mask),
    read from ``cpuinfo`` (default: ``/proc/cpuinfo``'s text); None where Linux's files are not there."""
    try:
        allowed = os.sched_getaffinity(0) if allowed is None else allowed
        if cpuinfo is None:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
    except (AttributeError, OSError):
        return None
    cores = set()
    for entry in cpuinfo.strip().split("\n\n"):
        fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in entry.splitlines() if ":" in line)}
        if "processor" not in fields or int(fields["processor"]) not in allowed:
            continue
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
        else:                                # no topology (some VMs, non-x86): one core per CPU
            cores.add(("cpu", fields["processor"]))
    return len(cores) or None


def use_physical_cores() -> None:
    """``TVM_NUM_THREADS`` := the physical core count, unless ``TVM_NUM_THREADS`` or ``OMP_NUM_THREADS`` is set."""
    if ENV in os.environ or "OMP_NUM_THREADS" in os.environ:
        return
    n = physical_cores()
    if n:
        os.environ[ENV] = str(n)
