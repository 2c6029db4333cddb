"""Per-channel scale migration (SmoothQuant-style): float-equivalent, searched, bit-exact, same graph."""
import copy

import pytest
import torch

import intvit
from intvit.calibration import calibrate
from intvit.calibration.migration import (MAX_LOG2, apply_factors, migrate, migration_pairs, output_error,
                                          search_factors)
from intvit.models import to_spec
from intvit.models.spec import float_forward
from intvit.quantize.integer_model import IntegerViT
from intvit.quantize.onnx_export import to_onnx
from conftest import assert_exact_in_ort_tvm_and_file, hf_vit, images


def outlier_vit(seed=0):
    """A tiny ViT whose first LayerNorm has two channels 40x larger than the rest (as DINOv2's do)."""
    m = hf_vit(seed=seed)
    with torch.no_grad():
        ln = m.vit.layers[0].layernorm_before
        ln.weight[3] *= 40
        ln.weight[17] *= -40
    return m


def test_migration_keeps_the_float_function_and_reduces_the_gemm_error():
    m = outlier_vit()
    spec = to_spec(m)
    batches = [images(16, seed=2)]
    migrated, report = migrate(spec, batches)
    x = images(4, seed=3)
    ref = float_forward(spec, x)
    assert torch.allclose(float_forward(migrated, x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    r = report["blocks.0.norm1"]
    assert r["alpha"] is not None and r["error_after"] < r["error_before"] / 4
    assert spec.blocks[0].norm1.weight[3] != migrated.blocks[0].norm1.weight[3]      # the source is untouched
    assert set(report) == set(migration_pairs(spec)) and "norm" in report          # a classifier: head too


def test_search_keeps_a_layer_that_migration_does_not_help():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g, dtype=torch.float64)
    w = torch.randn(8, 16, generator=g, dtype=torch.float64)
    alpha, s, err = search_factors(x, w, asymmetric=False)
    ones = torch.ones(16, dtype=torch.float64)
    assert err <= output_error(x, w, ones, False)
    if alpha is None:
        assert torch.equal(s, ones)


def test_migrated_model_with_extreme_factors_is_bit_exact_and_has_the_same_graph(tmp_path):
    """Factors of 2**8 and 2**-8 on alternate channels of every pair, including the head's pooled input."""
    m = hf_vit(seed=5)
    spec = to_spec(m)
    migrated = copy.deepcopy(spec)
    for norm, lin, parts in migration_pairs(migrated).values():
        d = norm.weight.shape[0]
        s = torch.tensor([2.0**MAX_LOG2 if i % 2 else 2.0**-MAX_LOG2 for i in range(d)], dtype=torch.float64)
        apply_factors(norm, lin, s, parts)
    x = images(8, seed=6)
    assert torch.allclose(float_forward(migrated, x), float_forward(spec, x), atol=1e-4)
    calib = images(16, seed=1)
    plain = IntegerViT(spec, calibrate(spec, calib, progress=False).amax, {"gelu": "table"})
    q = IntegerViT(migrated, calibrate(migrated, calib, progress=False).amax, {"gelu": "table"})
    assert_exact_in_ort_tvm_and_file(q, x, tmp_path / "m.safetensors")
    ops_of = lambda model: sorted(n.op_type for n in to_onnx(model).graph.node)  # noqa: E731
    assert ops_of(q) == ops_of(plain)


def test_quantize_migrates_by_default_and_patterns_choose(tiny_vit):
    m = outlier_vit(seed=1)
    q = intvit.quantize(m, images(16), intvit.QuantConfig(progress=False))
    assert q.meta["migration"]["blocks.0.norm1"]["alpha"] is not None
    none = intvit.quantize(m, images(16), intvit.QuantConfig(progress=False, migration=()))
    assert "migration" not in none.meta
    one = intvit.quantize(m, images(16), intvit.QuantConfig(progress=False, migration="blocks.0.norm1"))
    assert set(one.meta["migration"]) == {"blocks.0.norm1"}
    x = images(8, seed=4)
    with torch.no_grad():
        ref = m(x).logits
        assert not torch.equal(q.forward_int(x), none.forward_int(x))
        assert float((q(x) - ref).square().mean()) < 0.01 * float(ref.square().mean())


def test_migration_errors():
    from transformers import ViTConfig, ViTModel
    backbone = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64), add_pooling_layer=False).eval()
    with pytest.raises(ValueError, match="migration pattern 'norm' matches no LayerNorm that feeds only a linear"
                                         ".*a backbone's final norm is its output"):
        intvit.quantize(backbone, images(4), intvit.QuantConfig(progress=False, migration="norm"))
    with pytest.raises(ValueError, match=r"calibration images are 48x48, the model is set up for 32x32; .*"
                                         r"QuantConfig\(image_size=\(48, 48\)\)"):
        intvit.quantize(backbone, images(4, size=48), intvit.QuantConfig(progress=False))
    nan = images(4)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="calibration images contain NaN"):
        intvit.quantize(backbone, nan, intvit.QuantConfig(progress=False))
