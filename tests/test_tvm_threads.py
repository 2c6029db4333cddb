"""TVM's CPU thread count: the physical cores unless the user chose (``tvm_backend.threads``)."""
import os
import subprocess
import sys

from intvit.tvm_backend.threads import physical_cores

HYPERTHREADED = "\n\n".join(f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\nsiblings\t: 4"
                            for cpu in range(4))      # 2 cores x 2 threads: CPUs 0/2 and 1/3 share a core


def test_physical_cores_counts_cores_not_hyperthreads():
    assert physical_cores(HYPERTHREADED, allowed={0, 1, 2, 3}) == 2
    assert physical_cores(HYPERTHREADED, allowed={0, 2}) == 1           # affinity: one core's two threads
    no_topology = "processor\t: 0\n\nprocessor\t: 1\n\nprocessor\t: 2"
    assert physical_cores(no_topology, allowed={0, 1, 2}) == 3
    assert physical_cores("", allowed={0}) is None


def _tvm_threads_after_import(**env) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    code = ("import intvit.tvm_backend, tvm; "
            "print(tvm.get_global_func('runtime.NumThreads')())")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip().splitlines()[-1])


def test_tvm_pool_gets_the_physical_cores_unless_the_user_chose():
    assert _tvm_threads_after_import() == physical_cores()
    assert _tvm_threads_after_import(TVM_NUM_THREADS="1") == 1
    assert _tvm_threads_after_import(OMP_NUM_THREADS="1") == 1
