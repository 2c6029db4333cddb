"""The threads that run loaded modules: one fixed set per process, shared by every ``LoadedModule``.

TVM's CPU thread pool belongs to the thread that calls into a module: every
calling thread gets workers of its own, and they outlive it (measured: 100
short-lived caller threads left 200 OS threads behind, polling, two cores
two-thirds busy while idle, and later calls 18× slower). Nor does a pool
survive ``fork``: a child forked after its parent had run a module spun
forever in the parent's pool, whose workers do not exist in the child.

So a caller hands the call to one of a fixed set of long-lived worker threads
and waits for it (about 40 µs per call on this repo's 2-core VM): the process
holds ``INTVIT_RUNTIME_WORKERS`` TVM pools however many threads call, and a
forked child starts workers of its own on its first call. The default is one
worker: a call already runs on every core (``threads.use_physical_cores``),
and a second worker's pool only competes for them — on the embedded model
with 1, 2, 4 and 8 caller threads, one worker held its calls per second flat
within each process, where two lost up to 40 % once two callers overlapped
(``bench.runtime_threads``). Raise it, with a smaller ``TVM_NUM_THREADS``, to
run several calls side by side on a large machine.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

ENV = "INTVIT_RUNTIME_WORKERS"
DEFAULT_WORKERS = 1
WAIT_SLICE_S = 0.1                  # how often a waiting caller looks for Ctrl-C

_state = threading.local()          # .is_worker on the workers
_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def worker_count() -> int:
    """``INTVIT_RUNTIME_WORKERS`` if set (a positive whole number), else 1."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_WORKERS
    if not (text.isascii() and text.isdigit()) or int(text) < 1:     # "²".isdigit(), but int() refuses it
        raise ValueError(f"{ENV}={text!r}: give a positive whole number of threads")
    return int(text)


def _mark_worker() -> None:
    _state.is_worker = True


class CallCancelled(Exception):
    """Raised on a worker inside a call whose caller was interrupted (Ctrl-C), at the call's next check."""


def on_worker(fn, *args):
    """``fn(*args)`` run on one of the process's module workers; its result, or its exception, here.

    Ctrl-C while waiting cancels the call: it does not start if it has not, else it stops at its next
    ``check_cancelled`` (between batches), so neither the next call nor the interpreter's exit waits for all
    its images. At interpreter exit, when the workers are gone (an ``atexit`` handler), the call runs here."""
    global _executor
    if getattr(_state, "is_worker", False):      # already on a worker (a module called from inside a call)
        return fn(*args)
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(worker_count(), thread_name_prefix="intvit-run",
                                           initializer=_mark_worker)
        executor = _executor
    cancelled = threading.Event()
    try:
        future = executor.submit(_cancellable, cancelled, fn, *args)
    except RuntimeError as exc:                  # "cannot schedule new futures after (interpreter) shutdown"
        if "shutdown" not in str(exc):
            raise
        return fn(*args)
    try:
        while True:
            # in slices: a SIGINT handler that a library re-installed with SA_RESTART (LLVM, after a compile in
            # this process) restarts a lock wait instead of interrupting it, so Ctrl-C would wait for the call
            try:
                return future.result(timeout=WAIT_SLICE_S)
            except FuturesTimeout:
                continue
    except KeyboardInterrupt:
        cancelled.set()
        future.cancel()
        raise


def _cancellable(cancelled: threading.Event, fn, *args):
    _state.cancelled = cancelled
    try:
        return fn(*args)
    finally:
        _state.cancelled = None


def check_cancelled() -> None:
    """Raise ``CallCancelled`` on a worker whose caller has been interrupted; nothing anywhere else."""
    event = getattr(_state, "cancelled", None)
    if event is not None and event.is_set():
        raise CallCancelled("the call was cancelled: its caller was interrupted")


def _forget_parent_workers() -> None:
    """In a forked child: the parent's workers (and their TVM pools) are not there; start afresh."""
    global _executor, _lock
    _executor, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_workers)
