"""Adapters reproduce their source models; unsupported models get errors naming the module."""
import pytest
import torch
from torch import nn

import intvit
from intvit.models import float_forward, to_spec
from conftest import hf_vit, images, sqnr_db


def _cfg(cls, **kw):
    base = dict(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    base.update(kw)
    return cls(**base)


def _perturbed(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def test_hf_vit_adapter_matches():
    m = hf_vit(image=28, patch=7, dim=32, heads=2, channels=1, labels=3)
    x = images(2, channels=1, size=28)
    assert torch.allclose(float_forward(to_spec(m), x), m(x).logits, atol=1e-5)


def test_hf_vit_adapter_resolves_position_embeddings_for_another_input_size():
    m = hf_vit(image=32, patch=8)
    x = images(2, size=48)
    ref = m(x, interpolate_pos_encoding=True).logits
    assert torch.allclose(float_forward(to_spec(m, image_size=48), x), ref, atol=1e-5)


def test_dinov2_adapter_folds_layerscale_and_interpolates_position():
    from transformers import Dinov2Config, Dinov2Model
    m = _perturbed(Dinov2Model(_cfg(Dinov2Config, layerscale_value=0.3)))
    x = images(2, size=28)
    assert torch.allclose(float_forward(to_spec(m), x), m(x).last_hidden_state, atol=1e-5)
    x42 = images(1, size=42)
    assert torch.allclose(float_forward(to_spec(m, image_size=42), x42), m(x42).last_hidden_state, atol=1e-5)


def test_dinov2_classifier_and_deit_distilled_heads():
    from transformers import (DeiTConfig, DeiTForImageClassificationWithTeacher, Dinov2Config,
                              Dinov2ForImageClassification)
    x = images(2, size=28)
    d = _perturbed(Dinov2ForImageClassification(_cfg(Dinov2Config, num_labels=4)))
    assert torch.allclose(float_forward(to_spec(d), x), d(x).logits, atol=1e-5)
    t = _perturbed(DeiTForImageClassificationWithTeacher(_cfg(DeiTConfig, intermediate_size=64, num_labels=5)))
    spec = to_spec(t)
    assert spec.num_prefix == 2 and spec.pool == ("token0", "token1")
    assert torch.allclose(float_forward(spec, x), t(x).logits, atol=1e-5)
    q = intvit.quantize(t, images(16, size=28), intvit.QuantConfig(progress=False))
    assert sqnr_db(q(x), t(x).logits) > 12


def test_unsupported_activation_names_the_module():
    from transformers import ViTConfig, ViTForImageClassification
    m = ViTForImageClassification(_cfg(ViTConfig, hidden_act="mish", num_channels=1)).eval()
    with pytest.raises(intvit.UnsupportedModelError, match="vit.encoder: activation 'mish' is not supported; intvit's "
                                                           "integer MLP activation is a table of one of"):
        to_spec(m)


def test_unsupported_layer_is_named_by_path_and_type():
    m = hf_vit(image=28, patch=7, dim=32, heads=2, channels=1)
    m.vit.layers[1].mlp.fc1 = nn.Sequential(nn.Linear(32, 128), nn.BatchNorm1d(128))
    with pytest.raises(intvit.UnsupportedModelError, match=r"'vit.layers.1.mlp.fc1.1' of type BatchNorm1d"):
        to_spec(m)


def test_unsupported_model_type():
    with pytest.raises(intvit.UnsupportedModelError, match="Sequential is not supported"):
        intvit.quantize(nn.Sequential(nn.Linear(4, 4)), torch.zeros(1, 4))


class UserModel(nn.Module):
    """A user's module: a DINOv2 backbone, their own pooling and head, and a preprocessing step."""

    def __init__(self):
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model
        self.backbone = _perturbed(Dinov2Model(_cfg(Dinov2Config)))
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        tokens = self.backbone(x * 2.0).last_hidden_state
        return self.head(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1))


def test_user_wrapper_gets_its_backbone_quantized_and_keeps_its_forward():
    torch.manual_seed(0)
    user = UserModel().eval()
    calib = images(24, size=28)
    q = intvit.quantize(user, calib, intvit.QuantConfig(progress=False))
    assert type(q.backbone).__name__ == "IntegerBackbone" and type(user.backbone).__name__ == "Dinov2Model"
    # calibration saw the wrapper's preprocessing (x * 2), not the raw images
    assert abs(q.backbone.integer_model.amax["input"] - float((calib * 2).abs().max())) < 1e-4
    x = images(8, size=28, seed=4)
    assert sqnr_db(q(x), user(x)) > 12


def test_a_wrapped_model_saves_and_exports_its_integer_backbone(tmp_path):
    import numpy as np
    import onnxruntime as ort
    torch.manual_seed(0)
    q = intvit.quantize(UserModel().eval(), images(16, size=28), intvit.QuantConfig(progress=False))
    backbone = q.backbone.integer_model
    x = images(2, size=28, seed=6) * 2.0                  # what the wrapper feeds its backbone
    intvit.save(q, tmp_path / "b.safetensors")
    assert torch.equal(intvit.load(tmp_path / "b.safetensors").forward_int(x), backbone.forward_int(x))
    path = intvit.export_onnx(q, tmp_path / "b.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"images": x.numpy()})[1], backbone.forward_int(x).numpy())
    q.backbone.save(tmp_path / "c.safetensors")
    assert torch.equal(intvit.load(tmp_path / "c.safetensors").forward_int(x), backbone.forward_int(x))
    with pytest.raises(TypeError, match="holds no integer model; quantize it first"):
        intvit.save(UserModel(), tmp_path / "x.safetensors")


def test_empty_and_misshapen_calibration_data(tiny_vit):
    cfg = intvit.QuantConfig(progress=False)
    with pytest.raises(intvit.CalibrationDataError, match="empty"):
        intvit.quantize(tiny_vit, [], cfg)
    with pytest.raises(intvit.CalibrationDataError, match="no calibration data"):
        intvit.quantize(tiny_vit, None, cfg)
    with pytest.raises(intvit.CalibrationDataError, match=r"images are 28x28, the model is set up for 32x32.*"
                                                          r"image_size=\(28, 28\)"):
        intvit.quantize(tiny_vit, torch.zeros(4, 3, 28, 28), cfg)
    with pytest.raises(intvit.CalibrationDataError, match=r"shape \[4, 1, 32, 32\].*\[B, 3, 32, 32\]"):
        intvit.quantize(tiny_vit, torch.zeros(4, 1, 32, 32), cfg)
    with pytest.raises(intvit.CalibrationDataError, match="NaN"):
        intvit.quantize(tiny_vit, torch.full((2, 3, 32, 32), float("nan")), cfg)


def test_nan_inside_the_float_model_names_the_point():
    m = hf_vit()
    with torch.no_grad():
        m.vit.layers[0].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="blocks.0.fc1"):
        intvit.quantize(m, images(4), intvit.QuantConfig(progress=False))
