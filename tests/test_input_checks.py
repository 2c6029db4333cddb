"""Every entry checks its input, the backends agree on any finite input, and the ops assert their ranges
(issue 15, findings 4, 6, 7, 8, 11, 14)."""
import os
import warnings

import numpy as np
import pytest
import torch

import intvit
from intvit import ops
from intvit.quantize.onnx_export import to_onnx
from intvit.quantize.sanity import OUTPUT, POOLED, degenerate_points
from intvit.runtime import load
from intvit.tvm_backend.build import compile_onnx
from intvit.tvm_backend.runtime import compile_to_file
from conftest import hf_vit, images
from test_onnx_export import session


def fuzz_images(n, shape, seed):
    """Finite float32 images of every magnitude from 1e-6 to 1e30 (random sign), plus the float32
    extremes: max, the smallest subnormal, −0.0, ±1e30 everywhere."""
    rng = np.random.default_rng(seed)
    x = (rng.choice([-1.0, 1.0], (n, *shape)) * 10.0 ** rng.uniform(-6, 30, (n, *shape))).astype(np.float32)
    specials = [np.finfo(np.float32).max, -np.finfo(np.float32).max, 1e30, -1e30, 1e-45, -0.0]
    for i, v in enumerate(specials[:n]):
        x[i] = v
    x[len(specials) % n, 0, 0, 0] = 2.0**63                 # x/s ≥ 2**63: wrapped to −128 in torch before
    return x


@pytest.fixture(scope="module")
def three_backends(tiny_qvit):
    proto = to_onnx(tiny_qvit)
    return tiny_qvit, session(proto), compile_onnx(proto, "llvm", batch=8)


def test_fuzzed_finite_inputs_agree_in_torch_ort_and_tvm(three_backends):
    q, ort_session, tvm_module = three_backends
    for seed in range(3):
        x = fuzz_images(8, (3, 32, 32), seed)
        ref = q.forward_int(torch.from_numpy(x)).numpy()
        assert np.array_equal(ort_session.run(None, {"images": x})[1], ref)
        assert np.array_equal(tvm_module(x)[1], ref)


def test_huge_and_infinite_values_saturate_like_onnx():
    """The input quantizer clamps before casting (as the ONNX graph's Clip then Cast)."""
    x = torch.tensor([1e30, -1e30, 2.0**63, -(2.0**64), 3e38, 1.0])
    assert ops.quantize_float(x, 0.01, 8).tolist() == [127, -128, 127, -128, 127, 100]
    assert ops.quantize_float(x, 0.01, 8, zero=-100).tolist() == [127, -128, 127, -128, 127, 0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused_by_torch_and_the_runtime(three_backends, bad):
    q, _, tvm_module = three_backends
    x = images(8).numpy()
    x[3, 1, 4, 4] = bad
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        q.forward_int(torch.from_numpy(x))
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        q(torch.from_numpy(x))
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        tvm_module(x)


def test_the_compiled_module_refuses_what_a_cast_would_change(three_backends):
    q, _, tvm_module = three_backends
    x = images(8)
    for dtype in (np.int64, np.int8, np.bool_, np.uint8):
        with pytest.raises(TypeError, match="takes float images"):
            tvm_module(x.numpy().astype(dtype))
    assert np.array_equal(tvm_module(x.numpy().astype(np.float64))[1], q.forward_int(x).numpy())


def test_an_int8_input_module_takes_int8_only(tiny_qvit, tmp_path):
    proto = to_onnx(tiny_qvit, integer_input=True)
    module = compile_onnx(proto, "llvm", batch=1)
    x8 = tiny_qvit.quantize_input(images(1))
    assert np.array_equal(module(x8.numpy().astype(np.int8))[1], tiny_qvit.forward_int_core(x8).numpy())
    with pytest.raises(TypeError, match="takes int8 images"):
        module(x8.numpy().astype(np.float32))


def test_accumulator_bound_is_the_vnni_forms():
    """``(x + 128)·w`` reaches K·255·128: int32 holds it up to K = 65 793 (not the 131 071 allowed before)."""
    assert 65793 * 255 * 128 <= 2**31 - 1 < 65794 * 255 * 128
    ops.check_accumulator_fits(65793)
    with pytest.raises(ValueError, match="K = 65794"):
        ops.check_accumulator_fits(65794)


def test_quantizing_a_layer_past_the_accumulator_bound_names_it():
    model = hf_vit(image=16, patch=8, dim=16, layers=1, heads=2, mlp=65800, labels=3)
    with pytest.raises(ValueError, match="linear layer blocks.0.fc2 reduces over K = 65800"):
        intvit.quantize(model, images(2, size=16), intvit.QuantConfig(progress=False, migration=()))


def test_a_point_made_constant_by_an_outlier_is_flagged():
    """A patch-embedding bias of 1e4 sets the residual stream's scale: the class token rounds to zero and
    the logits are 0 for every image. Quantizing warns, naming the constant points."""
    model = hf_vit()
    with torch.no_grad():
        model.vit.embeddings.patch_embeddings.projection.bias.fill_(1e4)
    with pytest.warns(UserWarning, match="constant over the calibration images .*pooled features"):
        q = intvit.quantize(model, images(16), intvit.QuantConfig(progress=False))
    assert q.meta["degenerate_points"] == [POOLED, OUTPUT]
    assert bool((q.forward_int(images(4, seed=7)) == 0).all())


def test_a_healthy_model_has_no_constant_point(tiny_vit):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = intvit.quantize(tiny_vit, images(16), intvit.QuantConfig(progress=False))
    assert q.meta["degenerate_points"] == []
    assert degenerate_points(q, images(4, seed=3)) == []


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def test_reloading_a_module_does_not_grow_the_process(tiny_qvit, tmp_path, monkeypatch):
    """TVM keeps part of every library it loads: 100 load + run + del grew the process by ~78 MB. A module
    is now loaded once per content and each load makes only its own virtual machine."""
    monkeypatch.setenv("INTVIT_MODULE_CACHE", str(tmp_path / "cache"))
    tiny_qvit.export_onnx(tmp_path / "m.onnx")
    compile_to_file(tmp_path / "m.onnx", tmp_path / "m.so")
    x = images(1)
    first = load(tmp_path / "m.so")
    first(x)
    before = _rss_mb()
    for _ in range(100):
        module = load(tmp_path / "m.so")
        module(x)
        assert module.compiled.executable is first.compiled.executable
        del module
    assert _rss_mb() - before < 10


def test_ops_assert_their_documented_ranges():
    assert ops.range_checks_enabled()          # the suite runs every op with its range checks on (conftest)
    with pytest.raises(ops.RangeError, match="requant"):
        ops.requantize(torch.tensor([2**40]), torch.tensor([2**30]), torch.tensor([8]), 8)
    with pytest.raises(ops.RangeError, match="int_layernorm"):
        ops.int_layernorm(torch.tensor([[2**32, -(2**32), 0, 1]]))
    with pytest.raises(ops.RangeError, match="shiftmax: \\|logits\\|"):
        ops.shiftmax(torch.tensor([[2**20, 0]]), -20)
    with pytest.raises(ops.RangeError, match="shift_gelu"):
        ops.shift_gelu(torch.tensor([1000]), -20)
    for bits in (0, 1, 32, 64):
        with pytest.raises(ops.RangeError, match="out_bits must be an integer in \\[2, 31\\]"):
            ops.shiftmax(torch.tensor([[1, 0]]), -20, out_bits=bits)
    ops.requantize(torch.tensor([2**31]), torch.tensor([2**31 - 1]), torch.tensor([62]), 8)   # the bound itself


def test_a_requant_ratio_out_of_range_names_its_layer():
    from intvit.quantize.qparams import _mul
    with pytest.raises(ValueError, match="requant blocks.3.fc1.rq: requantization ratio .* too large"):
        _mul("blocks.3.fc1.rq", 2.0**31, {})


def test_a_failed_save_names_the_users_path_not_a_temp_file(tiny_qvit, tmp_path):
    (tmp_path / "m.safetensors").mkdir()                 # the target is a directory: the rename fails
    with pytest.raises(OSError) as info:
        tiny_qvit.save(tmp_path / "m.safetensors")
    assert "cannot write the model to" in str(info.value) and "is a directory" in str(info.value) and ".tmp" not in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
