"""Register tokens (DINOv2 with registers, timm ``reg_tokens``) and position embeddings that leave the class
token out (timm ``no_embed_class``: DeiT III): extra prefix tokens, read exactly and bit-exact when quantized."""
import pytest
import torch

import intvit
from intvit.models import float_forward, to_spec
from intvit.models.fidelity import relative_error

from .conftest import assert_exact_in_ort_tvm_and_file, images

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


def _perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():                        # off the initialisation's zeros (tokens, LayerScale)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("kw", [dict(reg_tokens=4), dict(no_embed_class=True, init_values=0.1),
                                dict(no_embed_class=True, reg_tokens=2, num_classes=0)])
def test_timm_register_tokens_and_patch_only_position_embeddings_are_read_exactly(kw):
    from timm.models.vision_transformer import VisionTransformer
    model = _perturbed(VisionTransformer(**{**dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                                   num_classes=5), **kw}))
    x = images(2, size=16)
    spec = to_spec(model)
    assert spec.num_prefix == 1 + kw.get("reg_tokens", 0)
    with torch.no_grad():
        assert relative_error(float_forward(spec, x), model(x)) < 1e-5


def test_deit3_quantizes_bit_exactly(tmp_path):
    model = _perturbed(timm.create_model("deit3_small_patch16_224", pretrained=False, img_size=32, num_classes=7,
                                         depth=2))
    x = images(2, size=32, seed=3)
    q = intvit.quantize(model, images(16, size=32), intvit.QuantConfig(progress=False))
    with torch.no_grad():
        want = model(x)
        assert float(10 * torch.log10(want.pow(2).sum() / (q(x) - want).pow(2).sum())) > 20
    assert_exact_in_ort_tvm_and_file(q, x, tmp_path / "deit3.safetensors")


def test_hf_dinov2_with_registers_pools_past_its_registers_and_quantizes_bit_exactly(tmp_path):
    cfg = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, num_register_tokens=4)
    classifier = _perturbed(transformers.Dinov2WithRegistersForImageClassification(
        transformers.Dinov2WithRegistersConfig(**cfg, num_labels=5)))
    x = images(2, size=16, seed=3)
    spec = to_spec(classifier)
    assert spec.num_prefix == 5 and spec.pool == ("cls", "mean")
    with torch.no_grad():
        assert relative_error(float_forward(spec, x), classifier(x).logits) < 1e-5
    q = intvit.quantize(classifier, images(16, size=16), intvit.QuantConfig(progress=False))
    assert_exact_in_ort_tvm_and_file(q, x, tmp_path / "dinov2reg.safetensors")

    class ReadsPooler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = _perturbed(transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**cfg)))

        def forward(self, x):
            return self.backbone(pixel_values=x).pooler_output

    user = ReadsPooler().eval()
    wrapped = intvit.quantize(user, images(16, size=16), intvit.QuantConfig(progress=False))
    with torch.no_grad():
        want = user(x)
        assert float(10 * torch.log10(want.pow(2).sum() / (wrapped(x) - want).pow(2).sum())) > 20
