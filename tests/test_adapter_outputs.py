"""Quantized models answer like their source: HF ``.last_hidden_state`` / ``.pooler_output``, timm and
torchvision headless models' pooled features (issue 17, item 1).

Each adapter is held to its source twice: in the integer model's float mode (the adapter's semantics,
to 1e-5) and in integer mode (the quantized answer: same shape, close, and bit-exact across torch, ONNX
Runtime and TVM where the graph changed).
"""
import pytest
import torch
from torch import nn

import intvit
from intvit.models import UnsupportedModelError, to_spec
from intvit.models.spec import float_forward
from conftest import assert_exact_in_ort_tvm_and_file, images, sqnr_db


def _hf(cls_name, config_name, **kw):
    import transformers
    torch.manual_seed(0)
    cfg = getattr(transformers, config_name)(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64)
    model = getattr(transformers, cls_name)(cfg, **kw).eval()
    with torch.no_grad():                      # HF initialises the pooler and biases tiny; make them matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


class ReadsPooler(nn.Module):
    """A user's module whose head reads the backbone's ``pooler_output``."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 3)

    def forward(self, x):
        return self.head(self.backbone(x).pooler_output)


def _quantized_wrapper(backbone):
    user = ReadsPooler(backbone).eval()
    with pytest.warns(UserWarning, match="pooler \\(dense \\+ tanh\\) stays float: pooler_output is computed"):
        q = intvit.quantize(user, images(16, size=28), intvit.QuantConfig(progress=False))
    return user, q


@pytest.mark.parametrize("cls_name,config_name", [("ViTModel", "ViTConfig"), ("DeiTModel", "DeiTConfig")])
def test_hf_pooler_output_is_the_source_pooler_on_the_integer_tokens(cls_name, config_name):
    user, q = _quantized_wrapper(_hf(cls_name, config_name))
    x = images(6, size=28, seed=5)
    ref = user.backbone(x)
    backbone = q.backbone
    assert backbone.float_modules == ["pooler"]
    backbone.integer_model.mode = "float"                       # the adapter's semantics, no rounding
    out = backbone(x)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.pooler_output, ref.pooler_output, atol=1e-5)
    backbone.integer_model.mode = "int"
    out = backbone(x)
    assert out.pooler_output.shape == ref.pooler_output.shape
    assert torch.equal(out.pooler_output, user.backbone.pooler(out.last_hidden_state))
    assert sqnr_db(out.pooler_output, ref.pooler_output) > 15
    assert sqnr_db(q(x), user(x)) > 15


def test_without_a_pooler_hf_returns_none_and_dinov2_its_class_token():
    import transformers
    vit = _hf("ViTModel", "ViTConfig", add_pooling_layer=False)
    x = images(4, size=28, seed=5)
    q = intvit.quantize(nn.Sequential(vit), images(16, size=28), intvit.QuantConfig(progress=False))
    out = q[0](x)
    assert out.pooler_output is None and vit(x).pooler_output is None and q[0].float_modules == []
    torch.manual_seed(0)
    dino = transformers.Dinov2Model(transformers.Dinov2Config(
        image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)).eval()
    q = intvit.quantize(nn.Sequential(dino), images(16, size=28), intvit.QuantConfig(progress=False))
    q[0].integer_model.mode = "float"
    out, ref = q[0](x), dino(x)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.pooler_output, ref.pooler_output, atol=1e-5)


def test_quantizing_a_vit_model_with_a_pooler_directly_says_the_pooler_is_left_out():
    vit = _hf("ViTModel", "ViTConfig")
    with pytest.warns(UserWarning, match="returns last_hidden_state only; to keep pooler_output, quantize a module"):
        q = intvit.quantize(vit, images(16, size=28), intvit.QuantConfig(progress=False))
    x = images(2, size=28)
    assert q(x).shape == vit(x).last_hidden_state.shape


def _timm(name, **kw):
    import timm
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, depth=2, img_size=32, patch_size=8, embed_dim=64,
                             num_heads=2, **kw).eval()


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_headless_timm_returns_the_pooled_features_as_timm_does(pool, tmp_path):
    model = _timm("vit_small_patch16_224", num_classes=0, global_pool=pool, fc_norm=False)
    x = images(3, size=32, seed=4)
    spec = to_spec(model)
    assert spec.pooled_output and spec.pool == (("cls",) if pool == "token" else ("mean",))
    with torch.no_grad():
        ref = model(x)
    assert ref.shape == (3, 64) and torch.allclose(float_forward(spec, x), ref, atol=1e-5)
    q = intvit.quantize(model, images(16, size=32), intvit.QuantConfig(progress=False))
    assert q(x).shape == ref.shape and sqnr_db(q(x), ref) > 15
    _, again = assert_exact_in_ort_tvm_and_file(q, x, tmp_path / "m.safetensors")
    assert again.spec.pooled_output and again(x).shape == ref.shape


def test_timm_without_pooling_returns_tokens_and_a_headless_distilled_deit_is_refused():
    model = _timm("vit_small_patch16_224", num_classes=0, global_pool="")
    x = images(2, size=32)
    spec = to_spec(model)
    assert not spec.pooled_output
    with torch.no_grad():
        assert torch.allclose(float_forward(spec, x), model(x), atol=1e-5)
    with pytest.raises(UnsupportedModelError, match="global_pool=''.*or '' without a head"):
        to_spec(_timm("vit_small_patch16_224", num_classes=5, global_pool=""))
    with pytest.raises(UnsupportedModelError, match="returns the average of its class and distillation tokens"):
        to_spec(_timm("deit_tiny_distilled_patch16_224", num_classes=0))


def test_torchvision_without_its_head_returns_the_class_token():
    import torchvision.models.vision_transformer as tv
    torch.manual_seed(0)
    model = tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                 mlp_dim=128, num_classes=10).eval()
    x = images(2, size=32)
    model.heads = nn.Identity()
    spec = to_spec(model)
    with torch.no_grad():
        assert spec.pooled_output and torch.allclose(float_forward(spec, x), model(x), atol=1e-5)
    model.heads = nn.Linear(64, 7)                                  # a bare Linear as the head
    with torch.no_grad():
        assert torch.allclose(float_forward(to_spec(model), x), model(x), atol=1e-5)
    model.heads = nn.Sequential(nn.Dropout(0.1), nn.Linear(64, 7))
    with pytest.raises(UnsupportedModelError, match="only one Linear \\(heads.head\\) or no head"):
        to_spec(model)


def test_intvit_run_prints_features_of_a_headless_module_not_classes(tmp_path, capsys):
    import numpy as np

    from intvit.cli import main
    from intvit.tvm_backend.runtime import compile_to_file
    model = _timm("vit_small_patch16_224", num_classes=0, global_pool="token")
    q = intvit.quantize(model, images(16, size=32), intvit.QuantConfig(progress=False))
    compile_to_file(q.export_onnx(tmp_path / "m.onnx"), tmp_path / "m.so")
    x = images(2, size=32, seed=8)
    np.save(tmp_path / "x.npy", x[:1].numpy())
    assert main(["run", str(tmp_path / "m.so"), "--input", str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out
    first = ", ".join(f"{v:.3f}" for v in q(x[:1])[0, :5].tolist())
    assert "image 0: features [64], L2 norm" in out and f"first values {first}" in out
