"""Compile an intvit integer ONNX graph with TVM and run it.

``compile_onnx(path_or_proto, target="llvm", batch=1)`` → ``CompiledIntViT``.

Pipeline: ``importer.to_relax`` → legalize → fuse (GEMM kernels are kept
whole: they are marked opaque so ``FuseOps`` does not merge neighbours into
them) → schedules → ``tvm.compile``. Targets:

* ``"llvm"``: this CPU; ``schedules.schedule_module``, with the GEMMs on the
  instruction set ``isa`` names (``ISAS``; by default AMX where this CPU and
  Linux allow it, else AVX-512 VNNI where the CPU has it, else AVX-VNNI
  on ymm, else ``vpmaddwd`` on int16 operands where it has AVX2, else
  generic);
* ``"cuda"`` (with an ``arch`` such as ``sm_90``, or the GPU's own when one is
  present; a dict target may name the host code's llvm target as ``"host"``):
  ``gpu_schedules.schedule_module_gpu``, the int8 GEMMs on tensor cores from
  sm_80 (``imma``; imported under ``gpu_gemm.imma_layout`` so that A·V is an
  int8 GEMM too), device code compiled by nvcc at build time and embedded
  (``cuda``).
"""
from __future__ import annotations

import functools
import math
import os
import threading

from ..quantize.onnx_export import read_onnx
from .arm import target_arch
from .compiled import CompiledIntViT
from .errors import IsaUnavailableError, NoDeviceError, UnknownTargetError
from .importer import to_relax

__all__ = ["CompiledIntViT", "IsaUnavailableError", "NoDeviceError", "UnknownTargetError", "compile_onnx",
           "resolve_target", "ISAS", "TARGETS"]

TARGETS = ("llvm", "cuda")
OPAQUE_PATTERN = 8          # relax OpPatternKind.kOpaque: FuseOps leaves the function alone
INJECTIVE_PATTERN = 2       # kInjective: FuseOps may merge it with the layout ops that feed it
GEMM_PREFIXES = ("int8_linear", "int16_gemm", "int16_linear", "int_bmm")
PACK_PREFIXES = ("pack_panels", "pack_values")    # index arithmetic hides that they are injective


# the CPU GEMM schedules compile_onnx(isa=...) can force: x86's, AArch64's sdot, or none
ISAS = ("amx", "vnni", "avxvnni", "avx2", "dotprod", "generic")


def resolve_target(target, arch: str | None = None, cpu: str | None = None) -> dict:
    """``"llvm"`` → this host's CPU (``mcpu`` from LLVM, all cores), or the CPU named by ``cpu`` (LLVM's
    name: ``x86-64-v3`` for any AVX2 CPU, ``skylake-avx512``, ``alderlake``, ``znver3``, ...; or an ARM64
    CPU, ``neoverse-n1``, ``apple-m1``, ..., with the AArch64 triple: ``cpu_triple``): a module for another
    machine; ``"cuda"`` → ``{"kind": "cuda", "arch": arch}`` (``arch`` checked against nvcc;
    default: this machine's GPU); a dict passes through."""
    if isinstance(target, dict):
        return target
    if target not in TARGETS:
        raise UnknownTargetError(f"unknown target {target!r}; choose one of {list(TARGETS)}")
    if cpu is not None and target != "llvm":
        raise UnknownTargetError(f"--cpu {cpu} names a CPU for --target llvm, not {target!r}")
    if target == "cuda":
        from .cuda import check_arch, detect_arch
        arch = arch or detect_arch()
        if arch is None:
            raise UnknownTargetError("no NVIDIA GPU is visible to detect the CUDA arch from; "
                                     "name it, e.g. --arch sm_90 (H100/H200) or --arch sm_80 (A100)")
        return {"kind": "cuda", "arch": check_arch(arch)}
    if arch is not None:
        raise UnknownTargetError(f"--arch {arch} applies to --target cuda, not {target!r}")
    from .x86 import host_cpu, host_extra_features, host_has, vectorize_512
    resolved = {"kind": "llvm", "mcpu": host_cpu() if cpu is None else cpu, "num-cores": os.cpu_count() or 1}
    triple = None if cpu is None else cpu_triple(cpu)
    if triple:
        resolved["mtriple"] = triple
    # this CPU: plus what it has beyond LLVM's model of it (x86.host_extra_features)
    mattr = [f"+{f}" for f in host_extra_features()] if cpu is None else []
    if host_has("amx-int8", "avx512f") if cpu is None else triple is None and vectorize_512(cpu):
        mattr.append("-prefer-256-bit")
    if mattr:
        resolved["mattr"] = mattr
    return resolved


def cpu_triple(cpu: str) -> str | None:
    """The LLVM triple a ``--cpu`` name compiles for: None (x86-64, like this project's hosts) for an x86 CPU,
    ``arm.TRIPLE`` for an AArch64 one (``neoverse-n1``, ``apple-m1``, ...), else one clear error."""
    from . import arm, x86
    if x86.is_cpu_name(cpu):
        return None
    if arm.is_cpu_name(cpu):
        return arm.TRIPLE
    raise UnknownTargetError(
        f"unknown CPU {cpu!r} for --cpu: give LLVM's name of an x86-64 CPU, e.g. x86-64-v3 (any AVX2 CPU), "
        "x86-64-v4 (any AVX-512 CPU), skylake-avx512, icelake-server, sapphirerapids, alderlake, znver3, znver4, "
        "or of an ARM64 one, e.g. neoverse-n1 (AWS Graviton2), neoverse-v1 (Graviton3), neoverse-v2 (Graviton4), "
        "ampere1, apple-m1, cortex-a76 (`llc -mcpu=help` and `llc -mtriple=aarch64 -mcpu=help` list them all)")


def check_tune_cpu(tune: int, cpu: str | None) -> None:
    """Tuning times candidates on this CPU: refuse it for a module built for another (``--cpu``)."""
    if tune and cpu is not None and cpu != resolve_target("llvm")["mcpu"]:
        raise ValueError(f"--tune times the candidates on this CPU, so it cannot tune a module for --cpu {cpu}; "
                         "tune on that machine, or compile without --tune")


def make_target(resolved: dict):
    """A ``tvm.target.Target`` for a ``resolve_target`` dict (CUDA gets this CPU as its host)."""
    import tvm
    if resolved["kind"] == "cuda":
        host = resolved.get("host", resolve_target("llvm"))
        return tvm.target.Target({k: v for k, v in resolved.items() if k != "host"}, host=host)
    return tvm.target.Target(resolved)


def is_cuda(target) -> bool:
    return str(target.kind.name) == "cuda"


def fuse(mod, target):
    """Legalize and fuse a Relax module from ``to_relax`` (GEMM kernels kept whole: marked opaque)."""
    import tvm
    from tvm import relax

    with target:
        # first drop what the importer bypassed (casts in front of fused GEMMs), so that
        # FuseOps sees single-consumer chains
        mod = relax.transform.DeadCodeElimination()(mod)
        mod = relax.transform.LegalizeOps()(mod)
        mod = relax.transform.AnnotateTIROpPattern()(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tvm.tirx.PrimFunc) and gv.name_hint.startswith(GEMM_PREFIXES):
                mod[gv] = func.with_attr("op_pattern", OPAQUE_PATTERN)
            elif isinstance(func, tvm.tirx.PrimFunc) and gv.name_hint.startswith(PACK_PREFIXES):
                mod[gv] = func.with_attr("op_pattern", INJECTIVE_PATTERN)
        mod = relax.transform.FuseOps()(mod)
        mod = relax.transform.FuseTIR()(mod)
        return relax.transform.DeadCodeElimination()(mod)


def is_host_target(target) -> bool:
    """``target`` compiles for this machine's CPU (kind llvm, this CPU's ``mcpu``)."""
    from .x86 import host_cpu
    return str(target.kind.name) == "llvm" and str(target.attrs.get("mcpu", "")) == host_cpu()


def resolve_isa(isa: str | None, target) -> str | None:
    """The GEMM instruction set for ``target``: ``isa`` checked, or the default (None for CUDA).

    Default: ``"amx"`` when ``target`` is this CPU and ``amx.host_has_amx()``
    (the CPU has AMX-INT8 and Linux grants the tile state), else ``"vnni"``
    where the target has AVX-512 VNNI, else ``"avxvnni"`` (VNNI on ymm) where
    it has AVX-VNNI, else ``"avx2"`` (the 16-bit form with ``vpmaddwd``,
    ``gemm.word_gemm``; 512-bit where the target has AVX-512BW) where it has
    AVX2, else ``"generic"`` (plain vectorized loops); on an AArch64 target
    ``"dotprod"`` (``sdot``, ``arm.SDOT``) where it has the dot-product
    extension, else ``"generic"``; ``x86.gemm_isa`` says
    what each runs. A forced ``"amx"`` needs a target CPU with AMX-INT8 and,
    when the target is this CPU, the tile permission (under
    ``amx_emulator.emulation()``: this CPU, with AVX-512 VNNI and VBMI); the
    others a target with their extension.
    """
    from . import amx, amx_emulator
    from .arm import is_aarch64
    from .x86 import target_has_avx2, target_has_avxvnni, target_has_dotprod, target_has_vbmi, target_has_vnni
    if is_cuda(target):
        if isa is not None:
            raise UnknownTargetError(f"isa={isa!r} chooses a CPU GEMM schedule; leave it unset for --target cuda")
        return None
    if isa is not None and isa not in ISAS:
        raise UnknownTargetError(f"unknown isa {isa!r}; choose one of {list(ISAS)} (or leave it unset)")
    if isa is None:
        if is_host_target(target) and amx.target_has_amx(target) and amx.host_has_amx():
            return "amx"
        if is_aarch64(target):
            return "dotprod" if target_has_dotprod(target) else "generic"
        return next((name for name, has in (("vnni", target_has_vnni), ("avxvnni", target_has_avxvnni),
                                            ("avx2", target_has_avx2)) if has(target)), "generic")
    best = f"leave isa unset for the best this target has ({resolve_isa(None, target)!r})"
    mcpu = str(target.attrs.get("mcpu", "")) or "(generic x86)"
    arm_isas = ("dotprod", "generic")
    if is_aarch64(target) != (isa in arm_isas) and isa != "generic":
        raise IsaUnavailableError(f"isa={isa!r} is an {'AArch64' if isa in arm_isas else 'x86'} instruction set "
                                  f"and the target CPU {mcpu} is {'AArch64' if is_aarch64(target) else 'x86'}; "
                                  f"{best}")
    if isa == "dotprod" and not target_has_dotprod(target):
        raise IsaUnavailableError(f"isa='dotprod': the target CPU {mcpu} has no dot-product extension (sdot, "
                                  f"Armv8.2-A dotprod); {best}")
    if isa == "amx" and amx_emulator.active():
        if not (is_host_target(target) and target_has_vnni(target) and target_has_vbmi(target)):
            raise IsaUnavailableError(
                f"isa='amx' under the AMX emulator builds for this CPU only, and needs AVX-512 VNNI and VBMI "
                f"for the kernels around the tiles; the target CPU {mcpu} lacks them, or is not this CPU")
        return isa
    if isa == "amx":
        if not amx.target_has_amx(target):
            raise IsaUnavailableError(
                f"isa='amx': the target CPU {mcpu} has no AMX-INT8; compile for an AMX CPU (mcpu sapphirerapids, "
                f"emeraldrapids, graniterapids), or {best}")
        if is_host_target(target) and not amx.host_has_amx():
            raise IsaUnavailableError(
                "isa='amx': Linux refused this process the AMX tile state (arch_prctl(ARCH_REQ_XCOMP_PERM, "
                "XTILEDATA) failed: a kernel older than 5.16, or AMX disabled for this VM or container), so AMX "
                f"code would die with SIGILL here; {best}, or run on a host that allows AMX")
    if isa == "vnni" and not target_has_vnni(target):
        raise IsaUnavailableError(f"isa='vnni': the target CPU {mcpu} has no AVX-512 VNNI; {best}")
    if isa == "avxvnni" and not target_has_avxvnni(target):
        raise IsaUnavailableError(f"isa='avxvnni': the target CPU {mcpu} has no AVX-VNNI; {best}")
    if isa == "avx2" and not target_has_avx2(target):
        raise IsaUnavailableError(f"isa='avx2': the target CPU {mcpu} has no AVX2; {best}")
    return isa


def schedule(mod, target, database=None, isa: str | None = None):
    """Schedule every kernel of a fused module for ``target``; GEMMs that ``database`` (a MetaSchedule
    database from ``tuning.tune_gemms``) has a tuned record for get that schedule instead.

    ``isa`` (``ISAS``, checked by ``resolve_isa``) picks the CPU GEMM
    schedule; None keeps VNNI where the target has it (AMX needs a module
    imported under ``gemm.amx_layout()``: ``compile_onnx`` does both).
    """
    if is_cuda(target):
        from .gpu_schedules import schedule_module_gpu
        return schedule_module_gpu(mod, str(target.attrs["arch"]) if "arch" in target.attrs else None)
    from .schedules import schedule_module
    from .x86 import gemm_isa, target_has_vnni
    if database is not None:
        from .tuning import schedule_with_database
        mod = schedule_with_database(mod, database, target)
    if isa is None:
        return schedule_module(mod, target_has_vnni(target))
    return schedule_module(mod, isa in ("amx", "vnni") and target_has_vnni(target), amx=isa == "amx",
                           dots=gemm_isa(isa, target).dots)


def lower(mod, target):
    """Fuse and schedule a Relax module from ``to_relax``; returns the module ``tvm.compile`` takes."""
    return schedule(fuse(mod, target), target)


def _one_at_a_time(compile_fn):
    """TVM's Relax ``BlockBuilder`` keeps one process-wide stack: two imports at once on two threads broke
    each other (``AssertionError`` in ``to_relax``), so this process compiles one model at a time."""
    @functools.wraps(compile_fn)
    def serialised(*args, **kwargs):
        with _COMPILING:
            return compile_fn(*args, **kwargs)
    return serialised


_COMPILING = threading.RLock()


def _fresh_compile_lock() -> None:
    """In a forked child the thread that was compiling is not there: a held lock would block every compile."""
    global _COMPILING
    _COMPILING = threading.RLock()


os.register_at_fork(after_in_child=_fresh_compile_lock)


MAX_INPUT_VALUES = 2**31      # a module's input holds fewer values per call (its indices are int32)


@_one_at_a_time
def compile_onnx(model, target="llvm", batch: int = 1, arch: str | None = None, tune: int = 0,
                 tuning_dir: str | None = None, progress=None, isa: str | None = None,
                 lift_weights: int | None = None, cpu: str | None = None) -> CompiledIntViT:
    """Compile an intvit integer ONNX graph (a path or a ``ModelProto``) for ``target`` at a fixed ``batch``.

    ``tune=N`` (CPU only) first tunes the GEMM kernels with MetaSchedule, N
    measured candidates per GEMM shape, with the database in ``tuning_dir``
    (records already there are reused; see ``tuning``), then checks the tuned
    module against ONNX Runtime on the same graph: on any difference the
    tuned schedules are dropped with a warning and the hand schedules used.
    The result's ``tuning`` holds what was done (None without tuning).

    ``isa`` (CPU targets): the GEMMs' instruction set, one of ``ISAS``, or
    None for the best this target allows (``resolve_isa``: AMX when the
    target is this CPU and it can run AMX). Forcing one the target lacks, or
    ``"amx"`` where Linux refuses the tile state, raises
    ``IsaUnavailableError``. With ``"amx"`` the u8 × s8 GEMMs are imported in
    the AMX layout and keep the AMX schedule even with ``tune``, which then
    tunes the remaining (VNNI) GEMMs. The result's ``isa`` records the choice.

    ``cpu`` (``target="llvm"``): build for that x86 CPU instead of this one
    (``resolve_target``); such a module runs only where the CPU has every
    extension it uses, and tuning, which times candidates here, is refused.

    ``lift_weights=N``: every constant of at least N bytes becomes an input of
    the module's ``main`` after the images (``lift.lift_large_constants``), so
    the library holds no weights; the result's ``lifted`` lists them (and
    ``lifted_values`` holds their values). Such a module is run through its
    VM (``main(images, *weights)``), not by calling the result.
    """
    import contextlib

    import tvm
    proto = read_onnx(model) if isinstance(model, (str, os.PathLike)) else model
    image = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    if batch * math.prod(image) >= MAX_INPUT_VALUES:
        raise ValueError(f"batch {batch} of {'x'.join(map(str, image))} images is {batch * math.prod(image):,} "
                         "input values per call, beyond what a module takes (below 2**31); choose a smaller batch "
                         "and run more calls (a module runs any number of images in calls of its batch)")
    resolved = resolve_target(target, arch, cpu)
    tgt = make_target(resolved)
    cuda = is_cuda(tgt)
    check_tune_cpu(tune, cpu)
    if isinstance(tune, bool) or not isinstance(tune, int) or tune < 0:
        raise ValueError(f"--tune must be a non-negative number of trials, got {tune!r}")
    if tune and cuda:
        raise ValueError("--tune tunes the CPU kernels: use it with --target llvm (the CUDA schedules are fixed)")
    if tune and not tuning_dir:
        raise ValueError("tune=N needs tuning_dir, the directory for the tuning database")
    if tune and lift_weights is not None:
        raise ValueError("tune=N checks the tuned module by running it, which a module with lifted weights "
                         "cannot do alone; use tune or lift_weights, not both")
    isa = resolve_isa(isa, tgt)

    def fused_module():
        from .gemm import amx_layout, gemm_vectors, int8_gemm, vbmi_lookup
        from .gpu_gemm import imma_layout
        from .imma import imma_arch
        from .x86 import gemm_isa, target_has_vbmi
        plan = gemm_isa(isa, tgt)
        with amx_layout(isa == "amx"), vbmi_lookup(isa == "vnni" and target_has_vbmi(tgt)), \
                int8_gemm(plan.int8_dot), gemm_vectors(plan.vectors), \
                imma_layout(cuda and imma_arch(resolved["arch"])):
            mod = fuse(to_relax(proto, batch, gemm_form="tiled" if cuda else "vnni"), tgt)
        if isa == "amx":
            from . import amx
            from .schedules import schedule_amx_gemms
            amx.request_tile_permission()
            mod = schedule_amx_gemms(mod)    # fixed schedule: tuning leaves these kernels alone
        return mod
    fused = fused_module()
    database = summary = None
    if tune:
        from .tuning import tune_gemms
        from .x86 import gemm_isa
        database, summary = tune_gemms(fused, tgt, tune, tuning_dir, vnni=isa in ("amx", "vnni"),
                                       progress=progress, dots=gemm_isa(isa, tgt).dots)
    if cuda:
        from .cuda import embedding
        build_scope = contextlib.ExitStack()
        build_scope.enter_context(embedding(resolved["arch"]))
        # the tensor-core GEMMs' operand copies, marked async (imma.ASYNC_COPY), become cp.async (sm_80+)
        build_scope.enter_context(tvm.transform.PassContext(config={"tirx.use_async_copy": True}))
    else:
        build_scope = contextlib.nullcontext()
    scheduled, lifted, lifted_values = schedule(fused, tgt, database, isa), [], []
    if lift_weights is not None:
        from .lift import lift_large_constants
        scheduled, lifted, lifted_values = lift_large_constants(scheduled, lift_weights)
    with build_scope:
        ex = tvm.compile(scheduled, target=tgt)
    compiled = wrap_executable(ex, proto, batch, device="cuda" if cuda else "cpu", isa=isa,
                               cpu_arch=None if cuda else target_arch(resolved))
    if isa == "amx":
        from . import amx_emulator
        compiled.amx_emulated = amx_emulator.active()
    compiled.lifted, compiled.lifted_values = lifted, lifted_values
    if summary is not None:
        from .tuning import differs_from_onnx_runtime
        summary.verified = not differs_from_onnx_runtime(compiled, proto)
        if not summary.verified:
            import warnings
            warnings.warn("the tuned module's outputs differ from ONNX Runtime's on the same graph; using the "
                          "hand schedules instead (please report this with the tuning database)", stacklevel=2)
            with build_scope:     # from a fresh import: scheduling rewrote ``fused``'s kernels
                compiled.executable = tvm.compile(schedule(fused_module(), tgt, isa=isa), target=tgt)
    compiled.tuning = summary
    return compiled


def wrap_executable(ex, proto, batch: int, device: str = "cpu", isa: str | None = None,
                    cpu_arch: str | None = None) -> CompiledIntViT:
    """``ex`` (the ``tvm.compile`` of ``proto`` at ``batch``) as a ``CompiledIntViT`` taking ``proto``'s input;
    ``cpu_arch``: the CPU architecture its code is for (None: this machine's)."""
    inp = proto.graph.input[0]
    dtype = "int8" if inp.name == "images_int8" else "float32"
    shape = [batch] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    return CompiledIntViT(ex, batch, inp.name, shape, dtype, device=device, isa=isa, cpu_arch=cpu_arch)
