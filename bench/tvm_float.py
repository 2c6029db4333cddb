"""The float ONNX compiled by TVM for an NVIDIA GPU: the ``tvm_fp32`` and ``tvm_fp16`` baselines of ``--target cuda``.

Pipeline, for one fixed input shape:

1. ``tvm.relax.frontend.onnx.from_onnx`` with the weights as constants;
2. ``tvm_fp16`` only: ``relax.transform.ToMixedPrecision`` (TVM's default
   ``out_dtype="float16"``: matmuls take and accumulate float16, the function
   still takes float32 images and returns float32 logits), then
   ``FoldConstant`` so that the weights are stored as float16;
3. legalize, fuse, and dlight's GPU rules — ``Matmul`` (tensor cores through
   WMMA for float16 matmuls of sm_70 and newer whose dimensions all exceed 64),
   ``GEMV``, ``Reduction``, ``GeneralReduction``, ``Fallback`` — the rules TVM
   0.27's own CUDA pipeline applies, so the float model gets TVM's default GPU
   schedule effort, as intvit's integer graph gets its own schedules;
4. ``tvm.compile`` under ``tvm_backend.cuda.embedding``: the device code is
   compiled by nvcc at build time and embedded, exactly like intvit's module,
   so a build error shows here and a GPU is not needed to build.
"""
from __future__ import annotations

DTYPES = ("float32", "float16")


def import_float_onnx(path: str, input_name: str, shape: list[int]):
    """The float ONNX at ``path`` as a Relax module for the fixed input ``shape`` (weights as constants), its
    gathers bounds-clipped (``clip_takes``)."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx
    return clip_takes(from_onnx(onnx.load(path), keep_params_in_input=False, shape_dict={input_name: list(shape)}))


def clip_takes(mod):
    """Every ``relax.take`` (ONNX ``Gather``: the class token) in ``mode="clip"`` instead of the importer's
    ``"fast"``, whose lowering prints TOPI's "Fast mode segfaults when there are out-of-bounds indices" on every
    build. The two agree on in-bounds indices — these are constants in range — so the baseline computes the
    same; ``clip`` just never reads out of bounds."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard
    pattern = is_op("relax.take")(wildcard(), wildcard())

    def rewrite(expr, matches):
        call = matches[pattern]
        if call.attrs.mode == "clip":
            return expr
        return relax.op.take(call.args[0], call.args[1], axis=call.attrs.axis, mode="clip")

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pattern, rewrite, func)
    return mod


def to_float16(mod):
    """TVM's mixed-precision rewrite to float16 compute, with the converted weights folded to float16 constants."""
    from tvm import relax
    mod = relax.transform.ToMixedPrecision(out_dtype="float16")(mod)
    return relax.transform.FoldConstant()(mod)


def schedule_gpu(mod, target, tensor_cores: bool = False):
    """Legalize, fuse and schedule ``mod`` with dlight's default GPU rules (inside ``target``).

    ``tensor_cores``: the module has float16 matmuls that ``dl.gpu.Matmul`` may
    put on tensor cores; its WMMA intrinsics are then imported beforehand the
    fast way (``tvm_backend.fastparse``: 3 s instead of 30).
    """
    from tvm import relax
    from tvm.s_tir import dlight as dl

    if tensor_cores:
        from ..tvm_backend.fastparse import import_tensor_intrinsics
        import_tensor_intrinsics()
    with target:
        for transform in (relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                          relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()):
            mod = transform(mod)
        rules = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                        dl.gpu.GeneralReduction(), dl.gpu.Fallback())
        return rules(mod)


def build_float_cuda(path: str, input_name: str, shape: list[int], dtype: str, arch: str,
                     host: dict | None = None, lift_weights: int | None = None):
    """Compile the float ONNX at ``path`` for CUDA ``arch`` in ``dtype`` (``float32`` or ``float16``).

    Returns the ``tvm.compile`` executable, its device code nvcc-compiled and
    embedded (``tvm_backend.cuda.device_code`` reads it back). ``host``: the
    host code's llvm target (default this CPU). ``lift_weights=N``: returns
    ``(executable, [LiftedInput])`` instead, every constant of at least N
    bytes an input of ``main`` after the images (``tvm_backend.lift``).
    """
    import tvm

    from ..tvm_backend.build import make_target, resolve_target
    from ..tvm_backend.cuda import embedding
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    resolved = resolve_target("cuda", arch)
    target = make_target({**resolved, "host": host} if host else resolved)
    mod = import_float_onnx(path, input_name, shape)
    if dtype == "float16":
        mod = to_float16(mod)
    mod = schedule_gpu(mod, target, tensor_cores=dtype == "float16")
    lifted = None
    if lift_weights is not None:
        from ..tvm_backend.lift import lift_large_constants
        mod, lifted, _ = lift_large_constants(mod, lift_weights)
    with embedding(arch):
        executable = tvm.compile(mod, target=target)
    return executable if lifted is None else (executable, lifted)
