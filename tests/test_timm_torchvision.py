"""timm and torchvision ViTs: the adapters reproduce the float model, and the quantized model is integer-only.

Both are pinned dependencies (README, "Tested versions"), so these tests run wherever the suite does.
"""
import pytest
import torch

import intvit
from intvit.models import UnsupportedModelError, to_spec
from intvit.models.spec import float_forward
from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend.importer import to_relax
from intvit.tvm_backend.inspect_ir import float_ops_in_integer_region
from conftest import images


def _check_float_and_integer(model, size, atol=1e-4):
    x = images(4, size=size, seed=3)
    spec = to_spec(model)
    with torch.no_grad():
        assert torch.allclose(float_forward(spec, x), model(x), atol=atol)
    q = intvit.quantize(model, images(8, size=size), intvit.QuantConfig(progress=False))
    logits = q(x)
    assert logits.shape == model(x).shape and torch.isfinite(logits).all()
    assert float_ops_in_integer_region(to_relax(to_onnx(q), batch=1)) == []
    return q


def test_timm_deit_tiny_and_distilled_and_layerscale():
    import timm
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    q = _check_float_and_integer(deit, 224)
    assert q.spec.family == "timm-vit" and len(q.spec.blocks) == 12 and q.spec.blocks[0].num_heads == 3
    distilled = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=2).eval()
    assert to_spec(distilled).pool == ("token0", "token1")
    _check_float_and_integer(distilled, 224)
    scaled = timm.create_model("vit_small_patch16_224", pretrained=False, depth=2, init_values=0.1,
                               global_pool="avg", fc_norm=False).eval()
    assert to_spec(scaled).pool == ("mean",)
    _check_float_and_integer(scaled, 224)


def test_timm_unsupported_variants_are_named():
    import timm
    fc_norm = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1, global_pool="avg").eval()
    with pytest.raises(UnsupportedModelError, match="fc_norm"):
        to_spec(fc_norm)
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=1).eval()
    with pytest.raises(UnsupportedModelError, match="own input size \\(224, 224\\)"):
        to_spec(deit, image_size=112)


def test_torchvision_vit():
    import torchvision.models.vision_transformer as tv
    torch.manual_seed(0)
    model = tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                 mlp_dim=128, num_classes=10).eval()
    q = _check_float_and_integer(model, 32)
    assert q.spec.family == "torchvision-vit"
    with pytest.raises(UnsupportedModelError, match="pre_logits"):
        to_spec(tv.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=4, hidden_dim=64,
                                     mlp_dim=128, num_classes=10, representation_size=32).eval())
