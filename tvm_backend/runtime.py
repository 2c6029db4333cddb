"""Compiled-module files: ``model.so`` plus ``model.so.json`` (the sidecar), and loading them.

The sidecar records what the module was built for — input name/shape/dtype,
batch, target, the CPU model and the x86 extensions its code may use
(AVX-512, VNNI, ...) or the CUDA arch, the intvit and TVM versions — and the
SHA-256 of the ``.so`` it belongs to. ``load`` checks all of it against the
running TVM, this CPU and this GPU before running anything, with one clear
error on a mismatch (instead of an illegal-instruction crash, a CUDA "no
kernel image" failure, a SIGBUS on a truncated file or another model's code
running under this sidecar).

Publishing: ``compile_to_file`` writes both under names unique to the writer,
then, holding an exclusive lock on the directory, renames the ``.so`` into
place and the sidecar last — so two writers never leave one's ``.so`` under
the other's sidecar, and as the sidecar names the digest of the ``.so`` it
was written with, a reader that meets a half-published pair refuses it.

Loading: the library is opened through a content-addressed copy
(``<cache>/<sha256>.so``), so recompiling to the same path and loading again
in the same process runs the new code (the dynamic loader returns the
library already open for a path), once per distinct content (TVM keeps part
of every library it loads alive), and a ``LoadedModule`` serves concurrent
callers: one virtual machine per worker thread over the shared library, the calls
handed to a fixed set of worker threads (``callers``).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import threading
import time

import numpy as np

from .. import __version__
from ..files import check_regular_file, check_writable_target, read_whole, sweep_stale_temps, temp_name
from ..quantize.onnx_export import OUTPUT_KIND_KEY
from ..quantize.preprocessing import METADATA_KEY as PREPROCESSING_KEY
from ..quantize.preprocessing import from_metadata
from .build import (ISAS, MAX_INPUT_VALUES, CompiledIntViT, NoDeviceError, check_tune_cpu, compile_onnx,
                    make_target, resolve_isa, resolve_target)
from .callers import on_worker
from .importer import check_intvit_graph
from .imma import GEMM_PATHS, gemm_path
from . import amx_emulator
from .amx import AMX_FEATURES, request_tile_permission
from .elf import DamagedLibraryError, check_library_whole
from .arm import cross_compiler, machine_arch, needs_cross_compiler, target_arch
from .x86 import host_cpu, host_has, isa_features

SIDECAR_FORMAT = "intvit.compiled-module"


class ModuleMismatchError(RuntimeError):
    """The compiled module was built for another TVM version, target or device."""


def sidecar_path(path) -> str:
    return os.fspath(path) + ".json"


def tuning_dir_for(output) -> str:
    """Where ``compile_to_file`` keeps the tuning database by default: ``model.so.tuning/``."""
    return os.fspath(output) + ".tuning"


def compile_to_file(onnx_path, output, target="llvm", batch: int = 1, arch: str | None = None, tune: int = 0,
                    tuning_dir: str | None = None, progress=None, isa: str | None = None,
                    cpu: str | None = None) -> dict:
    """Compile an integer ONNX file and write ``output`` (.so) and its sidecar atomically.

    With ``tune=N`` the GEMMs are tuned first (``build.compile_onnx``); the
    MetaSchedule database goes to ``tuning_dir`` (default ``output.tuning``)
    and the sidecar's ``"tuning"`` records what was tuned, reused, the
    tuning wall time and whether the tuned module matched ONNX Runtime.
    ``progress(line)`` hears what is being compiled (after every input is checked) and tuning's steps.
    ``isa`` forces the CPU GEMMs' instruction set (``build.ISAS``; default:
    the best this CPU runs); the sidecar records it, and an AMX module lists
    the AMX features among those the CPU must have. ``cpu`` builds for another
    CPU (``build.resolve_target``; an ARM64 one is linked with the
    ``aarch64-linux-gnu-gcc`` cross compiler, ``arm.cross_compiler``): the
    sidecar records it and its architecture, and ``load`` refuses another
    architecture or a CPU without its extensions.
    """
    import tvm

    from ..quantize.onnx_export import read_onnx
    output = os.fspath(output)
    try:
        check_writable_target(output, "the compiled module")
        check_writable_target(sidecar_path(output), "the compiled module's sidecar")
        if tune and tuning_dir and os.path.exists(tuning_dir) and not os.path.isdir(tuning_dir):
            raise NotADirectoryError(f"the tuning database {tuning_dir} is a file; give a folder (it is created "
                                     "if missing)")
    except OSError as exc:
        raise ValueError(str(exc)) from None
    parent = os.path.dirname(os.path.abspath(output))
    proto = read_onnx(onnx_path)
    check_intvit_graph(proto)                   # not an intvit graph, or edited: refused before any output
    t0 = time.perf_counter()
    resolved = resolve_target(target, arch, cpu)
    # an instruction set the target lacks: refused before any output
    if resolve_isa(isa, make_target(resolved)) == "amx" and amx_emulator.active():
        raise ValueError("an AMX module compiled under the AMX emulator (amx_emulator.emulation) runs only in "
                         "the process that compiled it, so it is not written to a file; compile outside "
                         "emulation() for a module file")
    link = cross_compiler() if resolved["kind"] == "llvm" and needs_cross_compiler(resolved) else None
    check_tune_cpu(tune, cpu)
    if progress:                                # only once the file, the folder and the target are known good
        where = f"{target} {resolved['arch']}" if resolved.get("arch") else \
            f"{target} (CPU {cpu})" if cpu is not None else target
        progress(f"compiling {onnx_path} for {where}, batch {batch} ...")
    compiled = compile_onnx(proto, target, batch, arch=resolved.get("arch"), tune=tune,
                            tuning_dir=(tuning_dir or tuning_dir_for(output)) if tune else None, progress=progress,
                            isa=isa, cpu=cpu)
    host = resolved if resolved["kind"] == "llvm" else resolve_target("llvm")
    meta = {"format": SIDECAR_FORMAT, "intvit_version": __version__, "tvm_version": tvm.__version__,
            "target": target if isinstance(target, str) else json.dumps(target), "batch": batch,
            "arch": resolved.get("arch"),
            "mcpu": host.get("mcpu", ""), "isa": compiled.isa, "cpu_arch": target_arch(host),
            "cpu_features": isa_features(host.get("mcpu", ""), host.get("mattr", ()), host.get("mtriple"))
            + (list(AMX_FEATURES) if compiled.isa == "amx" else []),
            "input": {"name": compiled.input_name, "shape": list(compiled.input_shape),
                      "dtype": compiled.input_dtype},
            "outputs": [o.name for o in proto.graph.output],
            "preprocessing": from_metadata(next((p.value for p in proto.metadata_props
                                                  if p.key == PREPROCESSING_KEY), None)),
            "output": next((p.value for p in proto.metadata_props if p.key == OUTPUT_KIND_KEY), "logits"),
            "source_onnx": os.path.basename(os.fspath(onnx_path)), "source_onnx_sha256": file_sha256(onnx_path),
            "compile_seconds": round(time.perf_counter() - t0, 2),
            "tuning": compiled.tuning.as_dict() if compiled.tuning else None}
    if resolved.get("arch"):
        meta["gpu_gemm"], note = gemm_path(resolved["arch"])
        if note:
            meta["notes"] = [note]
    sweep_stale_temps(output)
    tmp_so = temp_name(output, ".so")
    tmp_js = tmp_so[:-len(".so")] + ".json"
    try:
        try:
            compiled.executable.export_library(tmp_so, fcompile=link)
        except Exception as exc:        # the linker's own words name the temp file, not the output
            reason = next((line for line in str(exc).splitlines() if any(
                r in line for r in ("No space left", "Read-only file system", "Permission denied",
                                    "cannot open output file", "Disk quota"))), None)
            if reason is None:
                raise
            raise OSError(f"cannot write the compiled module to {output}: "
                          f"{reason.split(': ')[-1].strip()}") from None
        meta["so_sha256"] = file_sha256(tmp_so)
        meta["sidecar_sha256"] = sidecar_digest(meta)
        try:
            with open(tmp_js, "w") as f:
                json.dump(meta, f, indent=1)
        except OSError as exc:
            raise OSError(f"cannot write the sidecar of {output} ({sidecar_path(output)}): "
                          f"{exc.strerror or exc}") from None
        with _directory_lock(parent):          # the two renames as one unit against other writers
            os.replace(tmp_so, output)
            os.replace(tmp_js, sidecar_path(output))  # last: it names the digest of the .so just published
    finally:
        for p in (tmp_so, tmp_js):
            if os.path.exists(p):
                os.remove(p)
    return meta


@contextlib.contextmanager
def _directory_lock(directory: str, shared: bool = False):
    """A ``flock`` on ``directory`` (no lock file left behind): exclusive for a writer publishing a pair,
    shared for readers. A reader of a folder it may not open (execute-only) goes on without one."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        if not shared:
            raise
        yield
        return
    _HELD_DIRECTORY_LOCKS.add(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        _HELD_DIRECTORY_LOCKS.discard(fd)
        os.close(fd)                        # closing releases the lock


_HELD_DIRECTORY_LOCKS: set[int] = set()     # the folder-lock descriptors open now, in any thread


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_digest(meta: dict) -> str:
    """SHA-256 of the sidecar's fields (keys sorted) other than this digest: stored in it, checked on load."""
    body = {k: v for k, v in meta.items() if k != "sidecar_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def module_cache_dir() -> str:
    """Where loaded libraries are copied under their digest (``INTVIT_MODULE_CACHE``, else the temp dir)."""
    return os.environ.get("INTVIT_MODULE_CACHE") or os.path.join(tempfile.gettempdir(), f"intvit-modules-{os.getuid()}")


def content_addressed_copy(path: str, digest: str) -> str:
    """``path`` copied to ``<cache>/<digest>.so`` (once; written atomically, checked against ``digest``)."""
    cache = module_cache_dir()
    try:
        os.makedirs(cache, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise _cache_error(cache, exc) from None
    check_private_folder(cache)
    target = os.path.join(cache, f"{digest}.so")
    if os.path.exists(target) and file_sha256(target) == digest:
        return target
    sweep_stale_temps(target)
    tmp = temp_name(target)
    try:
        try:
            shutil.copyfile(path, tmp)
        except OSError as exc:
            if os.path.exists(tmp) or exc.filename == tmp:
                raise _cache_error(cache, exc) from None
            raise
        if file_sha256(tmp) != digest:
            raise ModuleMismatchError(f"{path} changed while it was being loaded; load it again")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _cache_error(cache: str, exc: OSError) -> OSError:
    """Writing a loaded library's copy into the module cache failed: say it is the cache, and how to move it."""
    return OSError(f"cannot write to the module cache {cache} ({exc.strerror or exc}), where a loaded module's "
                   "library is copied before it runs; free space there, or set INTVIT_MODULE_CACHE to a folder "
                   "this user can write")


def check_private_folder(folder: str) -> None:
    """The module cache holds code this process will run, so only this user may be able to write to it: a real
    folder (not a link), owned by this user, not writable by group or others. Anyone else who could write
    there could swap a library between its check and its load."""
    st = os.lstat(folder)
    problem = ("is not a folder (a link or a file)" if not stat.S_ISDIR(st.st_mode) else
               f"is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})" if st.st_uid != os.getuid() else
               f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})" if st.st_mode & 0o022 else None)
    if problem:
        raise ModuleMismatchError(f"the module cache {folder} {problem}, so another user could replace the code "
                                  "it loads; remove it, or set INTVIT_MODULE_CACHE to a folder only you can write")


def latency_summary(times_ms: list[float]) -> dict:
    """Median and p90 (nearest rank) of a list of latencies in milliseconds."""
    ts = sorted(times_ms)
    return {"median_ms": ts[len(ts) // 2], "p90_ms": ts[min(len(ts) - 1, int(0.9 * len(ts)))]}


class LoadedModule:
    """``module(images) -> logits`` (numpy), ``module.run(images) -> (logits, int_logits)``, ``benchmark()``."""

    def __init__(self, compiled: CompiledIntViT, meta: dict):
        self.compiled, self.meta = compiled, meta
        self._per_thread = threading.local()
        self._spare = [compiled]                      # the first worker to call runs ``compiled`` itself

    def __call__(self, images):
        return self.run(images)[0]

    def __reduce__(self):
        raise TypeError("a loaded intvit module cannot be pickled (to another process, e.g. a multiprocessing "
                        "pool): its compiled code lives in this process; call intvit.runtime.load(path) in each "
                        "process instead")

    def run(self, images):
        """Run on ``images`` in a virtual machine of its own on one of the process's module workers
        (``callers``: a fixed set of threads, one by default, so callers' threads never collect TVM pools).

        TVM's VM is not reentrant (one VM called from several threads raised
        VM errors and crashed), so every worker gets its own VM over the one
        shared library. Calls per second of the embedded model at batch 1 with
        1 / 2 / 4 / 8 caller threads, 2 cores: workers 2893 / 3541 / 3663 /
        3615, one VM behind a lock called from the callers' own threads 1849
        / 809 / 375 / 189 — each of those threads keeps a TVM pool that polls
        for work after it. Measured with ``python -m intvit.bench.runtime_threads
        model.so --calls 50``.
        """
        return on_worker(self._run_here, images)

    def _run_here(self, images):
        mine = getattr(self._per_thread, "compiled", None)
        if mine is None:
            try:
                mine = self._spare.pop()        # atomic: no lock for a fork to leave held in a child
            except IndexError:
                mine = None
            mine = self._per_thread.compiled = mine or self.compiled.replica()
        try:
            return mine(images)
        except Exception as exc:
            if "match_cast error" not in str(exc):
                raise
            raise ModuleMismatchError(         # a sidecar re-signed by hand after an edit of batch or shape
                f"this module's code takes another input shape than its sidecar's {list(self.compiled.input_shape)} "
                "(the sidecar was edited, or belongs to another build); recompile with `intvit compile`") from None

    def benchmark(self, repeat: int = 20, warmup: int = 3, seed: int = 0) -> dict:
        """Median / p90 latency (ms) of one call on random inputs of the compiled shape, timed on the worker
        that runs them (without the hand-over from the calling thread)."""
        rng = np.random.default_rng(seed)
        shape, dtype = self.compiled.input_shape, self.compiled.input_dtype
        x = (rng.integers(-128, 128, shape) if dtype == "int8" else rng.standard_normal(shape)).astype(dtype)
        return on_worker(self._benchmark_here, x, repeat, warmup)

    def _benchmark_here(self, x, repeat: int, warmup: int) -> dict:
        for _ in range(warmup):
            self._run_here(x)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            self._run_here(x)
            times.append((time.perf_counter_ns() - t0) / 1e6)
        return {**latency_summary(times), "batch": self.compiled.batch, "repeat": repeat}


def load(path) -> LoadedModule:
    """Load ``model.so`` written by ``intvit compile`` after checking its sidecar.

    The sidecar is read and the library copied into the cache under a shared lock on the folder, the lock a
    writer holds exclusively while it publishes a new pair, so a module recompiled meanwhile loads whole, old
    or new (``compile_to_file``)."""
    path = os.fsdecode(path)
    # the folder of the pair a writer publishes: a link without a sidecar of its own is read through to the
    # file it names and its sidecar, so it is that folder's lock that keeps the pair whole
    pair = os.path.realpath(path) if os.path.islink(path) and not os.path.lexists(sidecar_path(path)) else path
    with _directory_lock(os.path.dirname(os.path.abspath(pair)), shared=True):
        meta, side = _read_sidecar(path)
        _check_runnable(path, meta, side)
        library = _library(path, meta["so_sha256"])
    inp = meta["input"]
    compiled = CompiledIntViT(library, meta["batch"], inp["name"], inp["shape"], inp["dtype"],
                              device="cuda" if meta["target"] == "cuda" else "cpu", isa=meta.get("isa"))
    return LoadedModule(compiled, meta)


def _read_sidecar(path: str) -> tuple[dict, str]:
    """The checked sidecar of ``path`` and its path: beside ``path``, or for a link without one (``current.so
    -> v3.so``), beside the file the link names."""
    if os.path.isfile(path) and path.endswith(".onnx"):
        raise ModuleMismatchError(f"{path} is an ONNX file, not a compiled module; compile it first: "
                                  f"intvit compile {path} -o model.so")
    if not os.path.lexists(path):
        raise FileNotFoundError(f"no compiled module at {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a compiled module (.so from `intvit compile`)")
    check_regular_file(path, "intvit compiled module")      # a dangling or looping link, a FIFO, a device
    side = sidecar_path(path)
    if not os.path.lexists(side) and os.path.islink(path):
        side = sidecar_path(os.path.realpath(path))
    if not os.path.exists(side):
        hint = (" (it is an intvit model file: load it with intvit.load, or compile it: intvit export, then "
                "intvit compile)" if path.endswith(".safetensors") else "")
        raise ModuleMismatchError(f"{path} has no sidecar {side}{hint}; recompile it with `intvit compile`")
    try:
        meta = json.loads(read_whole(side, "intvit sidecar").decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModuleMismatchError(f"{side} is not valid UTF-8 JSON; recompile with `intvit compile`") from None
    except (RecursionError, ValueError) as exc:     # nesting too deep, a number of more than 4300 digits
        raise ModuleMismatchError(f"{side} is not a sidecar `intvit compile` writes ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:80]}); recompile with `intvit compile`") from None
    check_sidecar_fields(meta, side)
    return meta, side


def _check_runnable(path: str, meta: dict, side: str) -> None:
    """Refuse a module this process cannot run: another TVM, an unknown target, a GPU or CPU it lacks, a
    ``.so`` that is not the sidecar's (``side``), AMX the kernel will not grant."""
    import tvm
    if meta.get("tvm_version") != tvm.__version__:
        raise ModuleMismatchError(
            f"{path} was built with TVM {meta.get('tvm_version')}, this is TVM {tvm.__version__}; "
            "recompile it with `intvit compile`")
    if meta.get("target") not in ("llvm", "cuda"):
        raise ModuleMismatchError(f"{path} was built for target {meta.get('target')!r}; this runtime runs "
                                  "'llvm' (CPU) and 'cuda' (NVIDIA GPU) modules")
    if meta["target"] == "cuda":
        _check_gpu(path, meta.get("arch") or "")
    if meta.get("cpu_arch", machine_arch()) != machine_arch():
        raise ModuleMismatchError(
            f"{path} was built for {meta['cpu_arch']} CPUs ({meta.get('mcpu')!r}) and this machine is "
            f"{machine_arch()}; run it on such a machine, or compile it for this one with `intvit compile`")
    missing = [f for f in meta.get("cpu_features", []) if not host_has(f)]
    if missing:
        raise ModuleMismatchError(
            f"{path} was built for CPU {meta.get('mcpu')!r} and uses {', '.join(missing)}, which this CPU "
            f"({host_cpu()}) lacks; recompile it here with `intvit compile`")
    if file_sha256(path) != meta["so_sha256"]:
        raise ModuleMismatchError(f"{path} is not the module its sidecar {side} was written for (its SHA-256 "
                                  "differs: truncated, modified, or another model's .so); recompile with "
                                  "`intvit compile`")
    if sidecar_digest(meta) != meta["sidecar_sha256"]:
        raise ModuleMismatchError(f"{side} was changed after `intvit compile` wrote it (its fields no longer match "
                                  "their SHA-256: a hand edit or damage), so its input shape and batch cannot be "
                                  "trusted; recompile with `intvit compile`")
    if meta.get("isa") == "amx" and not request_tile_permission():
        raise ModuleMismatchError(f"{path} runs its GEMMs on Intel AMX, and Linux refused this process the AMX tile "
                                  "state (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA); recompile it here with "
                                  "`intvit compile --isa vnni`")
    if meta["target"] == "cuda":
        from .cuda import install_loader
        install_loader()              # before loading: the module's device code is read at load time


_LIBRARIES: dict[str, object] = {}        # SHA-256 → the TVM library loaded for it, once per process
_LIBRARIES_LOCK = threading.Lock()


def _release_parent_locks() -> None:
    """In a forked child: the parent's threads that were loading or publishing a module are not there, so
    what they held would stay held for the child's whole life — the library lock (every ``load`` in the
    child would wait forever) and the folder ``flock`` (a writer publishing into that folder would wait
    until the child exits). Start with a fresh lock, and close the child's copies of the folder-lock
    descriptors (the parent's own copies keep its locks until its threads finish)."""
    global _LIBRARIES_LOCK
    _LIBRARIES_LOCK = threading.Lock()
    for fd in list(_HELD_DIRECTORY_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_DIRECTORY_LOCKS.clear()


os.register_at_fork(after_in_child=_release_parent_locks)


def _library(path: str, digest: str):
    """The library of ``path`` (whose SHA-256 is ``digest``), loaded once per process and content.

    TVM keeps part of every loaded library alive (about 0.8 MB for the
    embedded model), so loading the same file again and again grew the process
    without bound; a module is now loaded once per distinct content and each
    ``LoadedModule`` makes its own virtual machine over it.
    """
    import tvm
    with _LIBRARIES_LOCK:
        if digest not in _LIBRARIES:
            copy = content_addressed_copy(path, digest)
            try:
                check_library_whole(copy)   # before mapping it: a truncated library kills the process (SIGBUS)
            except DamagedLibraryError as exc:
                raise ModuleMismatchError(f"{path} cannot be loaded as a shared library ({exc}); recompile it "
                                          "with `intvit compile`") from None
            try:
                library = tvm.runtime.load_module(copy)
            except Exception as exc:        # TVM's InternalError names the cache copy, not the user's file
                reason = str(exc).strip().splitlines()[-1].replace(f"{copy} {copy}", copy).replace(
                    copy, "the cached copy")[:160]
                if "failed to map segment" in reason or "Operation not permitted" in reason:
                    raise ModuleMismatchError(   # the .so is fine: its copy's folder forbids running code
                        f"{path} cannot run from the module cache {os.path.dirname(copy)}: its file system does "
                        f"not allow executing code (mounted noexec?) ({reason}); set INTVIT_MODULE_CACHE to a "
                        "folder on one that does") from None
                raise ModuleMismatchError(f"{path} cannot be loaded as a shared library ({reason}); recompile it "
                                          "with `intvit compile`") from None
            if not library.implements_function("vm_load_executable"):
                raise ModuleMismatchError(f"{path} is a shared library but not a module `intvit compile` wrote "
                                          "(no TVM virtual-machine code in it); recompile it with `intvit compile`")
            _LIBRARIES[digest] = library
        return _LIBRARIES[digest]


# What a sidecar must hold for ``load`` to trust it: field → (types, description for the error).
_SIDECAR_FIELDS = {"format": (str, "a string"), "tvm_version": (str, "a string"), "target": (str, "a string"),
                   "batch": (int, "a positive integer"), "input": (dict, "an object"),
                   "cpu_features": (list, "a list of names"), "so_sha256": (str, "a SHA-256 hex digest")}


def check_sidecar_fields(meta, side: str) -> None:
    """Refuse a sidecar that is not an object holding every field ``load`` reads, each of the right type:
    one ``ModuleMismatchError`` naming the field (a damaged or hand-edited file, not a crash)."""
    def bad(what: str):
        return ModuleMismatchError(f"{side}: {what}; recompile the module with `intvit compile`")
    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, found a JSON {type(meta).__name__}")
    if meta.get("format") != SIDECAR_FORMAT:
        raise ModuleMismatchError(f"{side} is not an intvit compiled-module sidecar")
    if "so_sha256" not in meta:
        raise bad("it names no digest of its .so (written by an older intvit)")
    if "sidecar_sha256" not in meta:        # without it an edited batch or shape would fail inside TVM
        raise bad("it carries no digest of its own fields (written by an older intvit, or the line was removed)")
    for field, (kind, what) in _SIDECAR_FIELDS.items():
        if not isinstance(meta.get(field), kind) or isinstance(meta.get(field), bool):
            raise bad(f"field {field!r} is missing or not {what}")
    inp = meta["input"]
    shape, batch = inp.get("shape"), meta["batch"]
    if not (isinstance(inp.get("name"), str) and inp.get("dtype") in ("float32", "int8")
            and isinstance(shape, list) and len(shape) == 4
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in shape)):
        raise bad("field 'input' must hold a name, a dtype (float32 or int8) and a shape of 4 positive integers "
                  "(each below 2**31)")
    if batch < 1 or shape[0] != batch:
        raise bad(f"batch {batch} does not match the input shape {shape}")
    if math.prod(shape) >= MAX_INPUT_VALUES:    # beyond any module intvit compiles; a call would allocate it all
        raise bad(f"its input shape {shape} holds {math.prod(shape):,} values per call, more than intvit "
                  "compiles (below 2**31)")
    if not isinstance(meta.get("output", "logits"), str):
        raise bad(f"field 'output' is {meta.get('output')!r}, not the name of what the module outputs")
    if meta.get("preprocessing") is not None and from_metadata(json.dumps(meta["preprocessing"])) is None:
        raise bad("field 'preprocessing' must hold lists of numbers 'mean' and 'std' and a list of 'labels'")
    if meta.get("gpu_gemm") not in (None, *GEMM_PATHS):
        raise bad(f"field 'gpu_gemm' is {meta.get('gpu_gemm')!r}, not one of {list(GEMM_PATHS)}")
    if meta.get("isa") not in (None, *ISAS):
        raise bad(f"field 'isa' is {meta.get('isa')!r}, not one of {list(ISAS)}")
    if not isinstance(meta.get("cpu_arch", ""), str) or not isinstance(meta.get("mcpu", ""), str):
        raise bad("fields 'cpu_arch' and 'mcpu' must be names (strings)")
    if not all(isinstance(f, str) for f in meta["cpu_features"]):
        raise bad("field 'cpu_features' must list feature names (strings)")
    if len(meta["so_sha256"]) != 64 or any(c not in "0123456789abcdef" for c in meta["so_sha256"]):
        raise bad("field 'so_sha256' is not a SHA-256 hex digest")


def _check_gpu(path: str, arch: str) -> None:
    """A CUDA module needs a GPU whose arch is at least the one it was built for (its PTX JITs forward)."""
    from .cuda import arch_number, detect_arch
    here = detect_arch()
    if here is None:
        raise NoDeviceError(f"{path} was compiled for an NVIDIA GPU ({arch}) and this machine has none TVM can "
                            "use; run it on a GPU machine, or recompile with --target llvm")
    if arch_number(here) < arch_number(arch):
        raise ModuleMismatchError(f"{path} was compiled for {arch}; this GPU is {here}; recompile it with "
                                  f"`intvit compile --target cuda --arch {here}`")
