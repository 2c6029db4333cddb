"""TVM backend (first slice): the compiled module equals the torch integer model and ORT, bit for bit."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import intvit
from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend.build import UnknownTargetError, compile_onnx
from intvit.tvm_backend.importer import UnsupportedGraphError, to_relax
from intvit.tvm_backend.inspect_ir import float_ops_in_integer_region
from conftest import assert_matches_reference, images
from test_onnx_export import adversarial_inputs, session


def assert_tvm_exact(q, x, batches=(1, 8)):
    """TVM == torch integer model, and ORT == torch on the same inputs (so all three agree)."""
    proto = to_onnx(q)
    s = session(proto)
    assert_matches_reference(q, x, lambda batch: lambda xb: s.run(None, {"images": xb.numpy()}), (8,))
    assert_matches_reference(q, x, lambda batch: compile_onnx(proto, "llvm", batch=batch), batches)


def test_tiny_vit_tvm_equals_torch_and_ort(tiny_qvit):
    assert_tvm_exact(tiny_qvit, adversarial_inputs(24, 3, 32, tiny_qvit.scales["input"]))


def test_embedded_model_tvm_equals_torch_and_ort(embedded_qvit):
    from intvit.models import fmnist
    q = embedded_qvit
    x, _ = fmnist.load_test_set(60)
    assert_tvm_exact(q, torch.cat([x, adversarial_inputs(4, 1, 28, q.scales["input"])]), batches=(8,))


def test_shiftgelu_model_tvm_equals_torch_and_ort(tiny_qvit_shiftgelu):
    """I-ViT's ShiftGELU (``gelu="shift"``) stays a supported form: its chain is tabulated in the fc1
    epilogue like the GELU table, and all three backends agree."""
    q = tiny_qvit_shiftgelu
    assert "blocks.0.gelu.x0" in q.integer_params() and "blocks.0.gelu.table" not in q.integer_params()
    assert_tvm_exact(q, adversarial_inputs(16, 3, 32, q.scales["input"]), batches=(8,))


def test_gelu_table_is_fused_into_the_fc1_gemm(tiny_qvit):
    """The default GELU is a stored table (an ONNX ``Lookup``), and TVM folds the lookup into fc1's epilogue."""
    proto = to_onnx(tiny_qvit)
    assert sum(n.op_type == "Lookup" for n in proto.graph.node) == len(tiny_qvit.spec.blocks)
    assert not any(n.op_type == "ShiftGELU" for n in proto.graph.node)
    names = [gv.name_hint for gv in to_relax(proto, batch=1).functions]
    assert any("_requant_table" in name for name in names)         # kernels equal up to constants are shared
    assert not any(name.startswith("lookup") for name in names)


def test_attention_logits_are_computed_on_whole_vectors(tiny_qvit):
    """``Q·Kᵀ`` over 17 tokens writes its logits 32 columns wide (its key panels' width), so that its
    requant epilogue runs on whole 16-lane vectors; Shiftmax reads the first 17 columns in place and no
    slice kernel is left. (Bit-exactness of the same module: the tests above.)"""
    import tvm
    from intvit.tvm_backend.build import fuse, make_target, resolve_target
    fused = fuse(to_relax(to_onnx(tiny_qvit), batch=2), make_target(resolve_target("llvm")))
    shapes = {gv.name_hint: [[int(d) for d in p.ty.shape] for p in f.params]
              for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    logits = [s[-1] for name, s in shapes.items() if name.startswith("int8_linear") and len(s[-1]) == 4]
    softmax = [s for name, s in shapes.items() if "shiftmax" in name]
    assert logits and softmax
    tokens = softmax[0][-1][-1]
    assert tokens == 17
    assert all(shape[-2:] == [tokens, 32] for shape in logits)
    assert all(s[0][-1] == 32 and s[-1][-2:] == [tokens, tokens] for s in softmax)
    assert not any("strided_slice" in name and not name.startswith("fused") for name in shapes)


def test_six_head_distilled_deit_tvm_equals_torch():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher
    torch.manual_seed(2)
    deit = DeiTForImageClassificationWithTeacher(DeiTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
        intermediate_size=96, num_labels=7)).eval()
    q = intvit.quantize(deit, images(16), intvit.QuantConfig(progress=False))
    assert_tvm_exact(q, adversarial_inputs(16, 3, 32, q.scales["input"]), batches=(8,))


def test_lowered_module_is_integer_only_between_quantizer_and_dequantize(tiny_qvit):
    assert float_ops_in_integer_region(to_relax(to_onnx(tiny_qvit), batch=2)) == []


def test_lowered_module_check_catches_a_float_op(tiny_qvit):
    proto = to_onnx(tiny_qvit)
    g = proto.graph
    idx = next(i for i, n in enumerate(g.node) if n.op_type == "Add" and "resid1" in n.name)
    out = g.node[idx].output[0]
    g.node.insert(idx + 1, helper.make_node("Cast", [out], ["sneaky_f"], to=TensorProto.FLOAT, name="sneaky/f"))
    g.node.insert(idx + 2, helper.make_node("Cast", ["sneaky_f"], ["sneaky_i"], to=TensorProto.INT64, name="sneaky/i"))
    for n in g.node[idx + 3:]:
        for k, name in enumerate(n.input):
            if name == out:
                n.input[k] = "sneaky_i"
    assert float_ops_in_integer_region(to_relax(proto, batch=1))


@pytest.mark.parametrize("shape,perm", [((8, 6, 197, 64), (0, 2, 1, 3)), ((2, 3, 17, 32), (0, 2, 1, 3)),
                                         ((4, 5, 7), (0, 2, 1))])
def test_layout_kernels_copy_whole_vector_runs_and_stay_exact(shape, perm):
    """A transpose + reshape (attention's heads back to channels) is scheduled by ``schedule_rowwise`` with
    its innermost axis vectorized in runs of 64/32/16 (``_vectorize_layout_copy``): vector loads, not
    bytes inserted one by one, and the same bytes as numpy."""
    import tvm
    from tvm import te, topi
    from intvit.tvm_backend.build import make_target, resolve_target
    from intvit.tvm_backend.schedules import schedule_rowwise
    x = te.placeholder(shape, "int8", name="x")
    moved = topi.transpose(x, perm)
    out_shape = (*[shape[p] for p in perm][:-2], shape[perm[-2]] * shape[perm[-1]])
    func = te.create_prim_func([x, topi.reshape(moved, out_shape)])
    scheduled = schedule_rowwise(func)
    lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}),
                      target=make_target(resolve_target("llvm")))
    if out_shape[-1] % 16 == 0:
        assert "T.vectorized" in scheduled.script() and "vpinsrb" not in lib.mod.inspect_source("asm")
    a = np.random.default_rng(0).integers(-128, 128, shape).astype(np.int8)
    got = tvm.runtime.tensor(np.zeros(out_shape, np.int8))
    lib["main"](tvm.runtime.tensor(a), got)
    assert np.array_equal(got.numpy(), a.transpose(perm).reshape(out_shape))


def test_round_half_even_kernel_matches_torch_round():
    import tvm
    from tvm import relax
    from intvit.tvm_backend.importer import _round_half_even_te
    vals = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.49999997, 126.5, 127.5, -128.5,
                     3.4999998, 1e9, -7.0], np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([len(vals)], "float32"))
    with bb.function("main", [x]):
        out = bb.emit_te(_round_half_even_te, x)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(vals, tvm.cpu())).numpy()
    assert got.tolist() == torch.round(torch.from_numpy(vals)).tolist()


def test_errors(tiny_qvit, tmp_path):
    proto = to_onnx(tiny_qvit)
    with pytest.raises(UnknownTargetError, match="unknown target 'vulkan-int4'"):
        compile_onnx(proto, "vulkan-int4")
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    with pytest.raises(UnsupportedGraphError, match="not an intvit integer graph"):
        compile_onnx(plain)
    tampered = to_onnx(tiny_qvit)
    pow2e = next(t for t in tampered.graph.initializer if t.name.endswith("qkv.rq.pow2e"))
    pow2e.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(pow2e) + 1, pow2e.name))
    with pytest.raises(UnsupportedGraphError, match="must hold powers of two"):
        compile_onnx(tampered)
    module = compile_onnx(proto, batch=2)
    with pytest.raises(ValueError, match="expected input shape \\['N', 3, 32, 32\\] \\(any number N"):
        module(images(2, size=16))


@pytest.mark.parametrize("count", [1, 3, 5])
def test_any_number_of_images_runs_in_compiled_batches(tiny_qvit, count):
    """A batch-2 module takes 1, 3 or 5 images: ceil(N/2) calls, the last filled up; each image's integer
    output is the PyTorch integer model's, whatever else shared its call."""
    module = compile_onnx(to_onnx(tiny_qvit), batch=2)
    x = images(count, seed=11)
    logits, ints = module(x.numpy())
    assert ints.shape[0] == logits.shape[0] == count
    assert np.array_equal(ints, tiny_qvit.forward_int(x).numpy())
    assert np.array_equal(logits, tiny_qvit(x).numpy())


def test_compile_cli_runtime_load_and_run(tiny_qvit, tmp_path, capsys):
    import json

    from intvit.cli import main
    from intvit.runtime import ModuleMismatchError, load
    onnx_path, so = tmp_path / "m.onnx", tmp_path / "m.so"
    tiny_qvit.export_onnx(onnx_path)
    assert main(["compile", str(onnx_path), "--batch", "2", "-o", str(so)]) == 0
    module = load(so)
    x = images(2, seed=4)
    assert np.array_equal(module.run(x)[1], tiny_qvit.forward_int(x).numpy())
    assert np.array_equal(module(x.numpy()), tiny_qvit(x).numpy())
    bench = module.benchmark(repeat=3, warmup=1)
    assert bench["batch"] == 2 and bench["median_ms"] > 0
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["run", str(so), "--input", str(tmp_path / "x.npy")]) == 0
    top = int(np.argmax(tiny_qvit(x).numpy()[0]))
    assert capsys.readouterr().out.splitlines()[-2].startswith(f"image 0: {top} (")
    # one image file: converted, scaled (x/255 − mean)/std, repeated to fill the compiled batch
    from PIL import Image
    pixels = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img.png")
    assert main(["run", str(so), "--input", str(tmp_path / "img.png"), "--mean", "0.5", "--std", "0.25"]) == 0
    x_png = torch.from_numpy(((pixels.astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)[None].copy())
    top = int(np.argmax(tiny_qvit(x_png).numpy()[0]))
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith(f"{tmp_path / 'img.png'}: {top} (") and "image 1" not in "\n".join(printed)
    assert main(["run", str(so), "--input", str(tmp_path / "missing.png")]) == 2
    assert "no image at" in capsys.readouterr().err
    # three images on a batch-2 module: two calls, one line per image
    np.save(tmp_path / "x3.npy", images(3, seed=5).numpy())
    assert main(["run", str(so), "--input", str(tmp_path / "x3.npy")]) == 0
    tops = np.argmax(tiny_qvit(images(3, seed=5)).numpy(), axis=1)
    printed = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split(" (")[0] for line in printed] == [f"image {i}: {t}" for i, t in enumerate(tops)]
    # several image files
    assert main(["run", str(so), "--input", str(tmp_path / "img.png"), str(tmp_path / "img.png"),
                 str(tmp_path / "img.png"), "--mean", "0.5", "--std", "0.25"]) == 0
    assert capsys.readouterr().out.count(f"{tmp_path / 'img.png'}: {top} (") == 3
    # bad inputs: unknown target, missing sidecar, another TVM version
    assert main(["compile", str(onnx_path), "--target", "cuda-int9", "-o", str(tmp_path / "c.so")]) == 2
    assert "unknown target" in capsys.readouterr().err and not (tmp_path / "c.so").exists()
    meta = json.loads((tmp_path / "m.so.json").read_text())
    assert meta["mcpu"] and "avx2" in meta["cpu_features"]
    (tmp_path / "m.so.json").write_text(json.dumps({**meta, "cpu_features": ["avx2", "intvit-unknown-isa"]}))
    with pytest.raises(ModuleMismatchError, match="uses intvit-unknown-isa, which this CPU .* lacks"):
        load(so)
    meta["tvm_version"] = "0.19.0"
    (tmp_path / "m.so.json").write_text(json.dumps(meta))
    with pytest.raises(ModuleMismatchError, match="built with TVM 0.19.0"):
        load(so)
    (tmp_path / "m.so.json").unlink()
    with pytest.raises(ModuleMismatchError, match="no sidecar"):
        load(so)
