"""Integer ONNX export: ONNX Runtime == the torch integer model, element for element."""
import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import intvit
from intvit import ops
from intvit.quantize.onnx_export import FLOAT_NODE_PREFIXES, OnnxExportError, export_onnx, to_onnx
from intvit.quantize.onnx_functions import DOMAIN, OPSET, all_functions
from conftest import assert_matches_reference, images

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def session(proto):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_function(fname, *arrays):
    """Run one intvit-domain function alone in ORT on int64 inputs."""
    names = [f"i{k}" for k in range(len(arrays))]
    node = helper.make_node(fname, names, ["y"], domain=DOMAIN)
    graph = helper.make_graph([node], "f", [helper.make_tensor_value_info(n, TensorProto.INT64, list(a.shape))
                                             for n, a in zip(names, arrays)],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph, functions=all_functions(),
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 10
    return session(model).run(None, dict(zip(names, [np.asarray(a, np.int64) for a in arrays])))[0]


# ------------------------------------------------------------- the domain functions alone
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=50), st.integers(1, 2**20))
def test_floordiv_is_floor_at_negative_ties(xs, d):
    xs = xs + [-d, -2 * d, -d + 1, -1, 0, d - 1]           # exact negative multiples and near-ties
    x = np.array(xs, np.int64)
    got = run_function("FloorDiv", x, np.array(d, np.int64))
    assert got.tolist() == ops.floor_div(torch.tensor(xs), d).tolist()


def test_saturate_is_exact_where_onnxruntime_int64_clip_is_not():
    # onnxruntime 1.31's int64 Clip/Min/Max get some values just past ±2**31 and 2**32 wrong.
    x = np.array([-(2**31) - 3, 2**31 + 3, 2**32 - 3, -(2**32) + 3, -(2**62), 2**62, -129, 128, 5], np.int64)
    got = run_function("Saturate", x, np.array(-128), np.array(127))
    assert got.tolist() == ops.saturate(torch.from_numpy(x), 8).tolist()


def test_requant_rescale_match_ops_including_negative_ties():
    z = np.array([-6, -10, -2, 2, 6, -(2**31), 2**31 - 1, 12345, -12345], np.int64)
    for r in (0.25, 0.5, 2.0**-20, 0.37, 1.0, 300.0):
        m, e = ops.dyadic_multiplier([r])
        off = ops.offset_for(-3.5, e)
        args = (m.numpy(), (1 << e).numpy(), (1 << (e - 1)).numpy())
        got = run_function("Requant", z, *args, off.numpy(), np.array(-128), np.array(127))
        want = ops.requantize(torch.from_numpy(z), m, e, 8, off)
        assert got.tolist() == want.tolist()
        assert run_function("Rescale", z, *args).tolist() == ops.rescale(torch.from_numpy(z), m, e).tolist()


@pytest.mark.parametrize("scale", [2.0**-15, 0.0031, 0.05, 1.0])
def test_shiftmax_function_matches_ops_on_extreme_rows(scale):
    rows = np.array([[32767] + [-32768] * 63, [-32768] * 64, list(range(-32768, 32768, 1024)),
                     [5] * 64], np.int64)
    x0 = ops.shiftexp_x0(scale)
    got = run_function("Shiftmax", rows, np.array(x0), np.array(15 * x0), np.array(15), np.array(1 << 47))
    assert got.tolist() == ops.shiftmax(torch.from_numpy(rows), x0, 16).tolist()
    single = np.array([[7]], np.int64)
    assert run_function("Shiftmax", single, np.array(x0), np.array(15 * x0), np.array(15),
                        np.array(1 << 47)).tolist() == [[32767]]


@pytest.mark.parametrize("scale", [0.0047, 0.05, 0.5])
def test_shift_gelu_function_matches_ops(scale):
    x = np.array([list(range(-128, 128))], np.int64)
    x0 = ops.shiftexp_x0(ops.GELU_SIGMOID_COEF * scale)
    got = run_function("ShiftGELU", x, np.array(x0), np.array(23 * x0), np.array(23), np.array(1 << 55))
    assert got.tolist() == ops.shift_gelu(torch.from_numpy(x), x0).tolist()


def test_lookup_function_matches_ops():
    table = ops.gelu_table(0.07, 0.03, zero_out=-90)
    x = np.array([list(range(-128, 128))], np.int64)
    got = run_function("Lookup", x, table.numpy(), np.array(-128))
    assert got.tolist() == ops.lookup(torch.from_numpy(x), table, -128).tolist()


@pytest.mark.parametrize("d", [1, 2, 192, 768])
def test_int_layernorm_function_matches_ops(d):
    g = torch.Generator().manual_seed(d)
    rows = torch.cat([torch.randint(-(2**15), 2**15, (3, d), generator=g), torch.full((1, d), 32767),
                      torch.tensor([[-32768 if i % 2 else 32767 for i in range(d)]])])
    assert run_function("IntLayerNorm", rows.numpy()).tolist() == ops.int_layernorm(rows).tolist()


# ------------------------------------------------------------- whole models
def adversarial_inputs(n, channels, size, scale):
    x = images(n - 4, channels=channels, size=size, seed=21)
    extremes = torch.stack([torch.zeros(channels, size, size), torch.full((channels, size, size), 1e3),
                            torch.full((channels, size, size), -1e3),
                            torch.full((channels, size, size), 3.0 * scale)])   # constant image
    return torch.cat([x, extremes])


def assert_bit_exact(q, x):
    proto = to_onnx(q)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version <= 13 and all(o.version <= 26 for o in proto.opset_import if o.domain == "")
    s = session(proto)
    assert_matches_reference(q, x, lambda batch: lambda xb: s.run(None, {"images": xb.numpy()}))


def test_tiny_vit_ort_equals_torch_integer_model(tiny_qvit):
    assert_bit_exact(tiny_qvit, adversarial_inputs(64, 3, 32, tiny_qvit.scales["input"]))


def test_embedded_model_ort_equals_torch_integer_model(embedded_qvit):
    from intvit.models import fmnist
    q = embedded_qvit
    x, _ = fmnist.load_test_set(60)
    assert_bit_exact(q, torch.cat([x, adversarial_inputs(4, 1, 28, q.scales["input"])]))


def test_deit_tiny_shaped_model_ort_equals_torch_integer_model(deit_tiny_qvit):
    q = deit_tiny_qvit
    assert_bit_exact(q, adversarial_inputs(64, 3, 224, q.scales["input"]))


def test_other_depth_heads_and_heads_ort_equals_torch():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, Dinov2Config, Dinov2Model
    torch.manual_seed(2)
    deit = DeiTForImageClassificationWithTeacher(DeiTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
        intermediate_size=96, num_labels=7)).eval()
    q = intvit.quantize(deit, images(16), intvit.QuantConfig(progress=False, recipe="percentile"))
    assert_bit_exact(q, adversarial_inputs(64, 3, 32, q.scales["input"]))
    dino = Dinov2Model(Dinov2Config(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2)).eval()
    q = intvit.quantize(dino, images(8, size=28), intvit.QuantConfig(progress=False))
    assert_bit_exact(q, adversarial_inputs(8, 3, 28, q.scales["input"]))        # headless: tokens out


def test_integer_input_variant(tiny_qvit):
    """The int8-input graph says in its metadata how to make its input: the rule applied by the caller
    reproduces the model's own input quantizer and its outputs."""
    import json
    proto = to_onnx(tiny_qvit, integer_input=True)
    s = session(proto)
    x = images(3)
    x8 = tiny_qvit.quantize_input(x).numpy().astype(np.int8)
    assert np.array_equal(s.run(None, {"images_int8": x8})[1], tiny_qvit.forward_int(x).numpy())
    rule = json.loads({p.key: p.value for p in proto.metadata_props}["intvit.input_quantizer"])
    assert rule["scale"] == float(tiny_qvit.scales["input"]) and rule["zero_point"] == 0 and not rule["in_graph"]
    by_rule = np.clip(np.round(x.numpy() / np.float32(rule["scale"])), -128, 127).astype(np.int8)
    assert np.array_equal(by_rule, x8)


# ------------------------------------------------------------- integer-only graph walk
def float_nodes(proto):
    """Nodes outside the input quantizer / dequantize that touch a float tensor (functions inlined)."""
    inlined = onnx.inliner.inline_local_functions(proto)
    inferred = onnx.shape_inference.infer_shapes(inlined, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    bad, unknown = [], []
    for node in inferred.graph.node:
        if node.name.startswith(FLOAT_NODE_PREFIXES):
            continue
        for v in list(node.input) + list(node.output):
            if not v:
                continue
            if v not in types:
                unknown.append(v)
            elif types[v] in FLOAT_TYPES:
                bad.append(f"{node.op_type} {node.name}")
    assert not unknown, f"untyped values after inference: {unknown[:5]}"
    return inferred, bad


def test_no_float_op_between_input_quantizer_and_dequantize(tiny_qvit):
    inferred, bad = float_nodes(to_onnx(tiny_qvit))
    assert bad == []
    assert len(inferred.graph.node) > 1000          # the walk covered the inlined function bodies
    assert sum(n.name.startswith("input_quant/") for n in inferred.graph.node) == 4


def test_graph_walk_catches_a_float_op(tiny_qvit):
    proto = to_onnx(tiny_qvit)
    g = proto.graph
    idx = next(i for i, n in enumerate(g.node) if n.op_type == "Add" and "resid1" in n.name)
    n = g.node[idx]
    f = helper.make_node("Cast", [n.output[0]], ["sneaky_f"], to=TensorProto.FLOAT, name="sneaky/cast")
    b = helper.make_node("Cast", ["sneaky_f"], ["sneaky_i"], to=TensorProto.INT64, name="sneaky/back")
    g.node.insert(idx + 1, f)
    g.node.insert(idx + 2, b)
    assert any("sneaky" in x for x in float_nodes(proto)[1])


# ------------------------------------------------------------- errors and files
def test_export_errors_leave_no_file(tiny_vit, tiny_qvit, tmp_path):
    with pytest.raises(OnnxExportError, match="needs an IntegerViT"):
        export_onnx(tiny_vit, tmp_path / "float.onnx")
    assert not (tmp_path / "float.onnx").exists()
    with pytest.raises(OnnxExportError, match="does not exist"):
        export_onnx(tiny_qvit, tmp_path / "nope" / "m.onnx")
    path = tiny_qvit.export_onnx(tmp_path / "m.onnx")
    assert onnx.load(path).graph.output[0].name == "logits"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_cli_export_and_inspect(tiny_qvit, tmp_path, capsys):
    from intvit.cli import main
    saved = tmp_path / "m.safetensors"
    tiny_qvit.save(saved)
    out = tmp_path / "m.onnx"
    assert main(["export", str(saved), "-o", str(out)]) == 0
    x = images(2)
    assert np.array_equal(session(onnx.load(out)).run(None, {"images": x.numpy()})[1],
                          tiny_qvit.forward_int(x).numpy())
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "intvit::Shiftmax" in text and "MatMulInteger" in text and "['batch', 10]" in text
    assert main(["export", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert main(["export", str(saved), "-o", str(tmp_path / "no-dir" / "x.onnx")]) == 2
    assert "no-dir does not exist" in capsys.readouterr().err
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, tmp_path / "float.safetensors")     # a float checkpoint
    assert main(["export", str(tmp_path / "float.safetensors"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "quantize it first" in capsys.readouterr().err
    assert main(["inspect", str(saved)]) == 2
    assert "not a readable ONNX file" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_threads_exporting_one_path_do_not_collide(tiny_qvit, tmp_path):
    """Exports name their temp file per writer (``intvit.files``): they shared ``<path>.tmp<pid>`` before."""
    from conftest import errors_from_threads
    assert errors_from_threads(lambda: tiny_qvit.export_onnx(tmp_path / "m.onnx")) == [] and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    x = images(2)
    assert np.array_equal(session(onnx.load(tmp_path / "m.onnx")).run(None, {"images": x.numpy()})[1],
                          tiny_qvit.forward_int(x).numpy())
