"""The ``tvm_fp32`` CPU baseline (``bench.tvm_float_cpu``): scheduled like intvit's graph, and still the float model.

Scheduling only moves loops, so the compiled float module must give ONNX
Runtime's float logits up to float32 rounding and TVM's fast exp/erf.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

from intvit.bench.onnx_float import export_float_onnx
from intvit.bench.models import build_model
from intvit.bench.tvm_float import import_float_onnx
from intvit.bench.tvm_float_cpu import MATMUL_BLOCK, build_float_cpu, lower_float_cpu, patchify_convolutions
from intvit.tvm_backend.build import make_target, resolve_target
from intvit.tvm_backend.schedules import SCHEDULED_ATTR, block_names


def _ort_logits(path, input_name, x):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {input_name: x})[0]


def _run(executable, x):
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x, tvm.cpu()))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


@pytest.mark.parametrize("name, batch", [("tiny", 3), ("fmnist", 2)])
def test_scheduled_float_module_gives_onnx_runtime_logits(tmp_path, capfd, name, batch):
    """tiny: 197-like odd widths (17 tokens, 10 classes: padded tiles); fmnist: 1 channel, patch 7, trained weights.
    The build prints no TOPI warning (the class-token gathers are bounds-clipped: ``bench.tvm_float.clip_takes``)."""
    bm = build_model(name)
    path = str(tmp_path / "float.onnx")
    export_float_onnx(bm.model, bm.channels, bm.image, path)
    x = np.random.default_rng(0).standard_normal((batch, bm.channels, bm.image, bm.image)).astype(np.float32)
    ref = _ort_logits(path, bm.input_name, x)
    capfd.readouterr()
    got = _run(build_float_cpu(path, bm.input_name, list(x.shape)), x)
    assert "Fast mode segfaults" not in capfd.readouterr().err
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())), rtol=0)


def test_every_kernel_is_scheduled_and_the_patch_convolution_is_a_gemm(tmp_path):
    bm = build_model("tiny")
    path = str(tmp_path / "float.onnx")
    export_float_onnx(bm.model, bm.channels, bm.image, path)
    target = make_target(resolve_target("llvm"))
    mod = lower_float_cpu(import_float_onnx(path, bm.input_name, [2, 3, 32, 32]), target)
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert all(SCHEDULED_ATTR in f.attrs for f in funcs.values())
    assert not any("conv2d" in name for name in funcs)
    # decompose_reduction splits the matmul block into its init and update
    gemms = {n: f for n, f in funcs.items() if MATMUL_BLOCK + "_update" in block_names(tvm.s_tir.Schedule(f))}
    # one function per GEMM shape: patch embedding, q/k/v, attention output + residual, fc1 + GELU,
    # fc2 + residual, Q·Kᵀ, A·V, classifier
    assert len(gemms) == 8 and {n for n in funcs if "matmul" in n} == set(gemms)
    # the six by a constant weight read it packed into panels (pack_constant_weights); Q·Kᵀ and A·V do not
    assert sum("packed_matmul" in n for n in gemms) == 6
    for f in gemms.values():
        script = f.script()
        assert "T.parallel" in script and "T.vectorized" in script


def _conv_module(stride: int, pads: int):
    side = (4 + 2 * pads - 2) // stride + 1
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2, 2, 2], np.arange(32, dtype=np.float32) / 32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[2, 2], strides=[stride, stride],
                            pads=[pads] * 4)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, side, side])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    from tvm.relax.frontend.onnx import from_onnx
    return proto, from_onnx(proto, keep_params_in_input=False)


def test_patchify_rewrites_only_non_overlapping_unpadded_convolutions(tmp_path):
    for stride, pads, rewritten in ((2, 0, True), (1, 0, False), (2, 1, False)):
        proto, mod = _conv_module(stride, pads)
        out = patchify_convolutions(mod)
        assert ("conv2d" not in out.script()) == rewritten, (stride, pads)
        if rewritten:
            path = str(tmp_path / "conv.onnx")
            onnx.save(proto, path)
            x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
            target = make_target(resolve_target("llvm"))
            got = _run(tvm.compile(lower_float_cpu(mod, target), target=target), x)
            np.testing.assert_allclose(got, _ort_logits(path, "x", x), atol=1e-5)
