"""Optional MetaSchedule tuning of the CPU GEMM kernels (``intvit compile --tune N``).

What is searched. MetaSchedule's generic rules would re-derive the GEMM's
tiling and tensorization, and on our layouts its auto-tensorize is known to
give silently wrong kernels (``../shared/tvm-recipes``). So the design space
here is our own hand schedule (``schedules.apply_gemm_schedule``) with its
free knobs exposed as sampled decisions: how register tiles group into cache
blocks (panels × row tiles, ``sample_perfect_tile``), in which order
(``BLOCK_ORDERS``: one design space each) and how far the K loop unrolls. The
VNNI tensorization, the operand layouts and the fused epilogue are the same
in every candidate, and the compiled module is checked against ONNX Runtime
before it is accepted (``build.compile_onnx``).

Which kernels. Every GEMM PrimFunc of the fused module. Layers of the same
shape differ only in their requant constants, so tasks are keyed by their
*anchor block* (the ``int_gemm_acc`` reduction, MetaSchedule's
``module_equality="anchor-block"``): one task per distinct GEMM shape, and
the best trace of a task is replayed on every kernel with that shape.

The database. A MetaSchedule ``JSONDatabase`` directory (``database_workload.json``,
``database_tuning_record.json``) beside the compiled module. A later compile
with the same directory reuses its records: only shapes without a record
are tuned.

How candidates are measured. Built and timed in this process
(``_in_process_builder_and_runner``), on zero-filled arguments, by
MetaSchedule's evolutionary search with a random cost model (the space is
small; the XGBoost model would add a 130 MB dependency).
"""
from __future__ import annotations

import dataclasses
import os
import time

from .gemm import ACC_BLOCK
from .gpu_gemm import LHS_BLOCK
from .schedules import BLOCK_ORDERS, SCHEDULED_ATTR, block_names, apply_gemm_schedule

MODULE_EQUALITY = "anchor-block"
WORKLOAD = "main"


class TuningError(RuntimeError):
    """Tuning found no working candidate for some GEMM shape."""


@dataclasses.dataclass
class TuningSummary:
    """What ``tune_gemms`` did, for the module's sidecar."""
    database: str
    trials_per_kernel: int
    kernels: int               # GEMM kernels in the module
    shapes: int                # distinct GEMM shapes (tuning tasks)
    tuned: int                 # shapes tuned in this run
    reused: int                # shapes whose records came from the database
    tune_wall_s: float
    verified: bool | None = None    # the tuned module equalled ONNX Runtime (build.compile_onnx checks)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def workload(func):
    """The PrimFunc as MetaSchedule's workload: an IRModule whose ``main`` is the kernel."""
    import tvm
    return tvm.IRModule({WORKLOAD: func.with_attr("global_symbol", WORKLOAD)})


def design_space(vnni: bool, dots: dict | None = None):
    """``ScheduleFn`` body: one design space per ``BLOCK_ORDERS`` entry, knobs sampled in each (``dots``: the
    instruction set's tensor intrinsics, ``schedules.apply_gemm_schedule``)."""
    def spaces(sch):
        out = []
        for order in BLOCK_ORDERS:
            s = sch.copy()
            s.seed(len(out) + 1)
            apply_gemm_schedule(s, vnni, blocking=order, dots=dots)
            out.append(s)
        return out
    return spaces


def gemm_functions(mod) -> dict:
    """``{GlobalVar: PrimFunc}`` for the unscheduled GEMM kernels of a fused module."""
    import tvm
    out = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and SCHEDULED_ATTR in func.attrs):
            continue
        names = block_names(tvm.s_tir.Schedule(func))
        if ACC_BLOCK in names and LHS_BLOCK not in names:        # the tiled int64 GEMMs keep their schedule
            out[gv] = func
    return out


def open_database(path: str):
    """The MetaSchedule database in directory ``path`` (created if missing)."""
    from tvm.s_tir import meta_schedule as ms
    from .x86 import ALL_DOTS, register_dot_intrinsic
    for dot in ALL_DOTS:     # loading replays the recorded traces, whose Tensorize steps name them
        register_dot_intrinsic(dot)
    os.makedirs(path, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=path, module_equality=MODULE_EQUALITY)


def _same_target(record_target, target) -> bool:
    return str(record_target.kind.name) == str(target.kind.name) and \
        str(record_target.attrs.get("mcpu", "")) == str(target.attrs.get("mcpu", ""))


def best_trace(database, func, target):
    """The fastest recorded trace for ``func``'s GEMM shape on ``target``, or None."""
    mod = workload(func)
    if not database.has_workload(mod):
        return None
    records = [r for r in database.get_top_k(database.commit_workload(mod), 16)
               if r.run_secs and _same_target(r.target, target)]
    return records[0].trace if records else None


def apply_trace(func, trace):
    """``func`` scheduled by replaying a tuned trace (recorded on a kernel of the same shape)."""
    import tvm
    # replaying a trace can rewrite the statements it shares with ``func`` in place: work on a deep copy
    sch = tvm.s_tir.Schedule(tvm.ir.load_json(tvm.ir.save_json(workload(func))))
    trace.apply_to_schedule(sch, remove_postproc=False)
    out = sch.mod[WORKLOAD]
    attrs = dict(func.attrs) if func.attrs else {}
    out = out.without_attr("global_symbol") if "global_symbol" not in attrs else out
    return out.with_attr(SCHEDULED_ATTR, True)


def tune_gemms(mod, target, trials: int, database_dir: str, vnni: bool, progress=None,
               dots: dict | None = None) -> tuple:
    """Tune the GEMM shapes of ``mod`` that ``database_dir`` has no record for.

    Returns ``(database, TuningSummary)``. ``trials`` candidates are measured
    per shape (MetaSchedule's evolutionary search with a random cost model:
    the space is small, and the XGBoost model would add a large dependency).
    """
    from tvm.s_tir import meta_schedule as ms

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    database = open_database(database_dir)
    kernels = gemm_functions(mod)
    shapes: dict = {}               # one representative kernel per anchor block
    for gv, func in kernels.items():
        shapes.setdefault(anchor_key(func), []).append((gv, func))
    todo = [(members[0][1], len(members)) for members in shapes.values()
            if best_trace(database, members[0][1], target) is None]
    say(f"tuning {len(todo)} of {len(shapes)} GEMM shapes ({len(kernels)} kernels), {trials} trials each"
        + (f"; {len(shapes) - len(todo)} reused from {database_dir}" if len(todo) < len(shapes) else ""))
    if todo:
        from tvm.s_tir.meta_schedule.mutator import MutateTileSize

        from .fastparse import import_tensor_intrinsics
        import_tensor_intrinsics()      # TuneContext imports the library; 3 s this way instead of 15-30
        tasks = [ms.TuneContext(
            mod=workload(func), target=target,
            space_generator=ms.space_generator.ScheduleFn(design_space(vnni, dots), sch_rules=[], postprocs=[],
                                                          mutator_probs={MutateTileSize(): 1.0}),
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=64, init_min_unmeasured=16, genetic_num_iters=2),
            task_name=f"gemm{i}", num_threads=os.cpu_count() or 1) for i, (func, _) in enumerate(todo)]
        builder, runner = _in_process_builder_and_runner()
        with _quiet_meta_schedule():
            ms.tune_tasks(
                tasks=tasks, task_weights=[float(n) for _, n in todo], work_dir=database_dir,
                max_trials_global=trials * len(tasks), max_trials_per_task=trials,
                num_trials_per_iter=min(trials, 16),
                builder=builder, runner=runner,
                # not the default RemoveBuildArtifact: our candidates are kept in memory, not on disk
                measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()],
                database=database, cost_model="random", task_scheduler="round-robin",
                module_equality=MODULE_EQUALITY)
    missing = [i for i, (func, _) in enumerate(todo) if best_trace(database, func, target) is None]
    if missing:
        raise TuningError(f"tuning measured no working candidate for {len(missing)} GEMM shape(s) (every candidate "
                          "failed to build or run); compile without --tune to use the hand schedules")
    summary = TuningSummary(database_dir, trials, len(kernels), len(shapes), len(todo), len(shapes) - len(todo),
                            round(time.perf_counter() - t0, 1))
    say(f"tuning done in {summary.tune_wall_s:.0f} s")
    return database, summary


def anchor_key(func) -> int:
    """A hash of the GEMM's reduction block, buffers mapped by position: equal for kernels of one
    shape whatever their epilogue (the grouping MetaSchedule's anchor-block equality makes)."""
    import tvm
    import tvm_ffi
    sch = tvm.s_tir.Schedule(func)
    return tvm_ffi.structural_hash(sch.get(sch.get_sblock(ACC_BLOCK)), map_free_vars=True)


def schedule_with_database(mod, database, target):
    """Replace each unscheduled GEMM of ``mod`` by its tuned schedule, where ``database`` has one."""
    for gv, func in gemm_functions(mod).items():
        trace = best_trace(database, func, target)
        if trace is not None:
            mod[gv] = apply_trace(func, trace)
    return mod


class _quiet_meta_schedule:
    """MetaSchedule logs every iteration's table at INFO; keep them out of the user's terminal."""

    def __enter__(self):
        import logging
        self.logger = logging.getLogger("tvm.s_tir.meta_schedule")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _in_process_builder_and_runner(repeat_ms: int = 20):
    """A MetaSchedule builder and runner that work in this process.

    MetaSchedule's local builder and runner start worker processes (a fresh
    ``import tvm`` and torch in each, seconds per batch of candidates, and its
    default build imports ``tvm.s_tir.tensor_intrin``, 15–30 s of TVMScript
    parsing). Our candidates come from a space whose schedules are valid by
    construction, so building and timing them here is safe and several times
    faster. The runner times each kernel with ``time_evaluator`` on
    zero-filled arguments: random requant shifts would be undefined behaviour,
    and an integer kernel's speed does not depend on its values.
    """
    import numpy as np
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    built: dict[str, object] = {}

    @derived_object
    class Builder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    key = f"intvit-candidate-{len(built)}"
                    built[key] = tvm.tirx.build(item.mod, target=item.target)
                    results.append(BuilderResult(key, None))
                except Exception as exc:         # an invalid candidate is a failed trial, not a failed tune
                    results.append(BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    @derived_object
    class Done(PyRunnerFuture):
        def __init__(self, secs, error):
            super().__init__()
            self.secs, self.error = secs, error

        def done(self):
            return True

        def result(self):
            return RunnerResult(self.secs, self.error)

    @derived_object
    class Runner(PyRunner):
        def run(self, runner_inputs):
            dev = tvm.cpu()
            futures = []
            for item in runner_inputs:
                module = built.pop(item.artifact_path)
                try:
                    args = [tvm.runtime.tensor(np.zeros([int(d) for d in shape], dtype), dev)
                            for _, dtype, shape in (info.as_json() for info in item.args_info)]
                    timer = module.time_evaluator(module.entry_name, dev, number=3, repeat=1,
                                                  min_repeat_ms=repeat_ms)
                    futures.append(Done([float(t) for t in timer(*args).results], None))
                except Exception as exc:
                    futures.append(Done(None, f"{type(exc).__name__}: {exc}"))
            return futures

    return Builder(), Runner()


def differs_from_onnx_runtime(compiled, proto, batches: int = 2, seed: int = 0) -> bool:
    """Whether ``compiled`` (built from ``proto``) gives other integer outputs than ONNX Runtime running
    ``proto`` on ``batches`` batches of random inputs (the exactness contract, checked after tuning).

    It runs an exported copy: running the executable itself would record its
    memory scopes in it, which its later ``export_library`` logs as a
    warning per scope.
    """
    import tempfile

    import numpy as np
    import onnxruntime as ort
    import tvm

    from .compiled import CompiledIntViT
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="intvit-verify-") as tmp:
        path = os.path.join(tmp, "tuned.so")
        compiled.executable.export_library(path)
        copy = CompiledIntViT(tvm.runtime.load_module(path), compiled.batch, compiled.input_name,
                              compiled.input_shape, compiled.input_dtype, compiled.device)
        for _ in range(batches):
            if compiled.input_dtype == "int8":
                x = rng.integers(-128, 128, compiled.input_shape).astype(np.int8)
            else:
                x = rng.standard_normal(compiled.input_shape).astype(np.float32)
            if not np.array_equal(copy(x)[1], session.run(None, {compiled.input_name: x})[1]):
                return True
    return False
