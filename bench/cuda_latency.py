"""Time the GPU backends of ``bench.cuda_backends`` side by side: the measuring half of ``intvit bench --target cuda``.

The same schedule as the CPU bench (``bench.latency``), with the GPU's clock
and memory:

* **Peak memory** (``peak_mib``), over each backend's first call at this batch
  size (a module, session or engine built for it that has not run yet):

  - torch backends: ``torch.cuda.max_memory_allocated()`` after the call
    (peak statistics reset just before it) minus ``memory_allocated()`` before
    it: the activations and workspaces torch's allocator handed out, not the
    weights;
  - TVM (intvit, tvm_fp32/fp16) and ONNX Runtime: they allocate outside
    torch, so the GPU's used memory (``torch.cuda.mem_get_info``, i.e.
    ``cudaMemGetInfo``: the whole device, 2 MiB granularity) after the call
    minus before it: what their pools allocated on the first call and keep
    (TVM's VM storage, ORT's arena; for TVM also the kernels' code, loaded on
    first use; the weights were uploaded before). TVM's pooled allocator is
    one per device for the whole process, so the free blocks it caches are
    released first (``vm.builtin.memory_manager.clear``): otherwise another
    module's or batch size's leftovers would serve the call unseen. Anything
    else using the GPU at the same time would show up in it;
  - TensorRT: the execution context's device memory as the engine reports it
    (allocated when the context is created, not by the call).

* **Warm-up**: then every backend runs ``warmup`` untimed calls.
* **Interleaved rounds**: ``repeat`` rounds; in each, every backend in turn gets
  one untimed call and then ``per_round`` timed ones.
* **Clock**: a CUDA event recorded on torch's current stream before the call
  and one after it (``torch.cuda.Event(enable_timing=True)``), the device
  synchronised before the call and after the second event; the sample is the
  time between the two events in ms. TVM launches on the same stream
  (``tvm_ffi.use_torch_stream``), TensorRT is given it, ONNX Runtime returns
  only when its work is done. Inputs stay on the GPU and outputs are left
  there, so no host copy is timed; the host's launch time is (the GPU waits
  for it), as in an application that synchronises after each batch.
* **Statistics** as on the CPU (``bench.stats.summarize``).

A backend other than intvit's that fails on its first call is reported
unavailable with the reason and left out of the timing.
"""
from __future__ import annotations

import time

from .backends import REFERENCE, _reason


def _torch_peak_mib(run) -> float:
    """MiB torch's allocator handed out at the peak of one ``run()``, on top of what it held before."""
    import torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - before) / 2**20


def release_tvm_pools() -> None:
    """Free the blocks TVM's pooled allocator caches but no tensor uses (its pool is one per device and process,
    shared by every TVM module, so an earlier module's freed blocks would otherwise hide a new call's needs)."""
    import tvm_ffi
    clear = tvm_ffi.get_global_func("vm.builtin.memory_manager.clear", allow_missing=True)
    if clear is not None:
        clear()


def _device_used_mib_added(run) -> float:
    """MiB of GPU memory in use after one ``run()`` minus before it (cudaMemGetInfo: the whole device), TVM's
    cached free blocks released first."""
    import torch
    torch.cuda.synchronize()
    release_tvm_pools()
    free_before, _ = torch.cuda.mem_get_info()
    run()
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info()
    return max(0, free_before - free_after) / 2**20


def first_call_peak_mib(backend) -> float | None:
    """Run ``backend``'s first call and return its peak working memory as its ``memory`` kind measures it."""
    if backend.memory == "torch":
        return _torch_peak_mib(backend.run)
    if backend.memory == "device":
        return _device_used_mib_added(backend.run)
    backend.run()
    return backend.engine_mib


def time_call_ms(run, start, end) -> float:
    """One ``run()`` between two CUDA events on torch's current stream, in ms (the device idle before it)."""
    import torch
    torch.cuda.synchronize()
    start.record()
    run()
    end.record()
    end.synchronize()
    torch.cuda.synchronize()         # anything a backend left on another stream is done before the next call
    return start.elapsed_time(end)


def _first_calls(backends: dict) -> dict:
    """Each runnable backend's first call (peak memory); a failing optional backend is marked unavailable."""
    peaks = {}
    for name, backend in backends.items():
        if backend.unavailable:
            continue
        try:
            peaks[name] = first_call_peak_mib(backend)
        except Exception as exc:
            if name == REFERENCE:
                raise
            backend.unavailable = f"failed on its first call: {_reason(exc)}"
    return peaks


def measure_cuda(backends: dict, batch: int, repeat: int, warmup: int = 3, per_round: int = 3,
                 progress=None) -> dict:
    """Latency statistics and peak memory per runnable backend (see the module docstring for the method).

    ``backends`` maps names to ``CudaBackend``; those that fail their first
    call get ``unavailable`` set and no statistics.
    """
    import torch

    from .cuda_backends import tvm_on_torch_stream
    from .stats import summarize
    with tvm_on_torch_stream():
        peaks = _first_calls(backends)
        runs = {k: b.run for k, b in backends.items() if k in peaks}
        for run in runs.values():
            for _ in range(warmup):
                run()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = {k: [] for k in runs}
        last = time.perf_counter()
        for i in range(repeat):                       # interleaved rounds: drift hits every backend alike
            for k, run in runs.items():
                run()
                for _ in range(per_round):
                    times[k].append(time_call_ms(run, start, end))
            if progress and time.perf_counter() - last > 15 and i + 1 < repeat:
                progress(f"  round {i + 1}/{repeat}")
                last = time.perf_counter()
    return {k: {**summarize(ts, batch), "peak_mib": peaks[k]} for k, ts in times.items()}
