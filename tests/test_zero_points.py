"""Zero points on the int8 GEMM inputs: asymmetric grids folded into requant offsets and biases,
bit-exact in torch, ONNX Runtime and TVM, including the extreme zero points."""
import copy

import numpy as np
import pytest
import torch

import intvit
from intvit import ops
from intvit.quantize.layout import zero_point_points
from conftest import assert_exact_in_ort_tvm_and_file, hf_vit, images


def test_asymmetric_grid_hand_values():
    assert ops.asymmetric_grid(0.0, 2.55) == (pytest.approx(0.01), -128)        # u8 zero point 0
    assert ops.asymmetric_grid(-2.55, 0.0) == (pytest.approx(0.01), 127)        # u8 zero point 255
    s, z = ops.asymmetric_grid(-0.17, 2.38)
    assert s == pytest.approx(0.01) and z == 17 - 128
    assert ops.asymmetric_grid(0.5, 2.55)[1] == -128                            # the range always holds 0.0
    x = torch.tensor([-0.17, 0.0, 0.004, 0.006, 2.38, 9.0], dtype=torch.float64)
    assert ops.quantize_float(x, s, 8, z).tolist() == [-128, -111, -111, -110, 127, 127]


def test_zero_point_correction_makes_the_gemm_multiply_x_minus_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (5, 7), generator=g)
    w = torch.randint(-127, 128, (3, 7), generator=g)
    for zero in (-128, -17, 0, 127):
        assert torch.equal(ops.int_linear(x, w, ops.zero_point_correction(w, zero)), ops.int_linear(x - zero, w))


def _with_ranges(q, ranges):
    """A copy of ``q`` whose asymmetric ranges are ``ranges``, refrozen."""
    q = copy.deepcopy(q)
    q.meta["asymmetric"] = {**q.meta.get("asymmetric", {}), **ranges}
    q.refreeze()
    return q


def test_default_quantize_gives_every_eligible_point_a_zero_point(tiny_qvit):
    assert set(tiny_qvit.meta["asymmetric"]) == set(zero_point_points(tiny_qvit.spec))
    gelu = tiny_qvit.meta["asymmetric"]["blocks.0.gelu"]
    assert gelu[0] < 0 < gelu[1] and -gelu[0] < 0.2                     # GELU output: one-sided
    assert tiny_qvit.zeros["blocks.0.gelu"] < -40 and tiny_qvit.zeros["blocks.0.q"] == 0


def test_extreme_zero_points_are_bit_exact_in_ort_tvm_and_file(tiny_qvit, tmp_path):
    """u8 zero points 0 and 255 (−128 and 127 here) on a LayerNorm output, ctx, the GELU table and the
    head's input: everything clips on one side, and the three backends still agree exactly."""
    norm1 = tiny_qvit.meta["asymmetric"]["blocks.0.norm1"]
    q = _with_ranges(tiny_qvit, {"blocks.0.norm1": [0.0, norm1[1]], "blocks.1.norm2": [-3.0, 0.0],
                                 "blocks.0.gelu": [0.0, 2.0], "blocks.1.ctx": [-1.0, 0.0], "norm": [0.0, 4.0],
                                 "blocks.0.fc1": [-3.0, 0.0], "blocks.1.fc1": [0.0, 3.0]})
    points = ("blocks.0.norm1", "blocks.1.norm2", "blocks.0.gelu", "blocks.1.ctx", "norm", "blocks.0.fc1",
              "blocks.1.fc1")
    assert [q.zeros[p] for p in points] == [-128, 127, -128, 127, -128, 127, -128]
    x = images(8, seed=5)
    _, again = assert_exact_in_ort_tvm_and_file(q, x, tmp_path / "z.safetensors")
    assert again.zeros == q.zeros


def test_headless_output_dequantize_subtracts_the_zero_point(tmp_path):
    """A backbone's tokens carry the final norm's zero point; the dequantize (torch, ONNX, TVM) removes it."""
    from transformers import ViTConfig, ViTModel

    from intvit.quantize.onnx_export import to_onnx
    from intvit.tvm_backend.build import compile_onnx
    from test_onnx_export import session
    torch.manual_seed(1)
    model = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=96), add_pooling_layer=False).eval()
    q = intvit.quantize(model, images(16), intvit.QuantConfig(progress=False))
    q = _with_ranges(q, {"norm": [-1.0, 6.0]})
    assert q.zeros["norm"] != 0
    x = images(4, seed=3)
    ref_int = q.forward_int(x)
    ref = q.dequantize(ref_int)
    # still the backbone's tokens (clipped to the forced range); without the zero point's removal every
    # element would be off by 92 steps (2.5)
    assert (ref - model(x).last_hidden_state).abs().mean() < 0.1
    proto = to_onnx(q)
    logits, int_logits = session(proto).run(None, {"images": x.numpy()})
    assert np.array_equal(int_logits, ref_int.numpy()) and np.array_equal(logits, ref.numpy())
    logits, int_logits = compile_onnx(proto, "llvm", batch=4)(x)
    assert np.array_equal(int_logits, ref_int.numpy()) and np.array_equal(logits, ref.numpy())


def test_symmetric_option_and_zero_point_errors(tiny_vit, tiny_qvit):
    sym = intvit.quantize(tiny_vit, images(8), intvit.QuantConfig(progress=False, zero_points=()))
    assert sym.meta.get("asymmetric", {}) == {} and set(sym.zeros.values()) == {0}
    some = intvit.quantize(tiny_vit, images(8), intvit.QuantConfig(progress=False, zero_points="blocks.*.gelu"))
    assert set(some.meta["asymmetric"]) == {"blocks.0.gelu", "blocks.1.gelu"}
    with pytest.raises(ValueError, match="'blocks.0.q' matches no point that can take a zero point.*q/k/v"):
        intvit.quantize(tiny_vit, images(8), intvit.QuantConfig(progress=False, zero_points=("blocks.0.q",)))
    with pytest.raises(ValueError, match="'blocks.0.logits' cannot take a zero point"):
        _with_ranges(tiny_qvit, {"blocks.0.logits": [-1.0, 1.0]})
    shift = intvit.quantize(tiny_vit, images(8), intvit.QuantConfig(progress=False, gelu="shift"))
    assert "blocks.0.fc1" not in shift.meta["asymmetric"] and "blocks.0.gelu" in shift.meta["asymmetric"]
    with pytest.raises(ValueError, match="'blocks.0.fc1' cannot take a zero point .*only with the GELU table"):
        _with_ranges(shift, {"blocks.0.fc1": [-1.0, 1.0]})
    wide = copy.deepcopy(tiny_qvit)
    wide.meta["layout"] = {"blocks.0.gelu": 16}
    with pytest.raises(ValueError, match="16-bit point; zero points are for 8-bit points only"):
        wide.refreeze()


def test_widening_a_point_drops_its_zero_point(tiny_vit):
    q = intvit.quantize(tiny_vit, images(16), intvit.QuantConfig(progress=False, auto_int16=2, matching_images=8))
    assert q.meta["auto_int16"] and not set(q.meta["auto_int16"]) & set(q.meta["asymmetric"])
    assert all(q.zeros[p] == 0 for p in q.meta["auto_int16"])
