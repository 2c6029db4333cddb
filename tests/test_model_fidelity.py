"""Models the adapters used to misread without a word (a red-team round): each is now refused by name, or
read correctly and checked, and the fidelity check (``models.fidelity``) refuses what no adapter names."""
import copy
import functools

import pytest
import torch
from torch import nn

import intvit
from intvit.models import UnsupportedModelError, float_forward, to_spec
from intvit.models.fidelity import SPEC_TOLERANCE, check_spec_reproduces, relative_error

from .conftest import hf_vit, images

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

TINY = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5)
QUICK = dict(progress=False, migration=())


def _timm(**kw):
    torch.manual_seed(0)
    return VisionTransformer(**{**TINY, **kw}).eval()


def _sqnr_db(got, want):
    return float(10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum()))


@pytest.mark.parametrize("kw, phrase", [
    (dict(embed_norm_layer=nn.LayerNorm), "patch_embed.norm (LayerNorm, embed_norm_layer)"),
    (dict(scale_attn_norm=True), "blocks.0.attn.norm (LayerNorm, scale_attn_norm=True)"),
    (dict(class_token=False, global_pool="avg"), "class_token=False"),
    (dict(pos_embed="none"), "pos_embed='none'"),
    (dict(final_norm=False), "final_norm=False with a classifier head"),
    (dict(block_fn="ResPostBlock"), "blocks.0 (ResPostBlock): only timm's pre-norm Block"),
    (dict(mlp_layer="GluMlp"), "blocks.0.mlp (GluMlp): only the plain fc1"),
])
def test_timm_layers_the_adapter_does_not_map_are_refused_by_name(kw, phrase):
    from timm.models import vision_transformer as vt
    from timm.layers import GluMlp
    kw = {**kw, **({"block_fn": vt.ResPostBlock} if kw.get("block_fn") == "ResPostBlock" else {}),
          **({"mlp_layer": GluMlp} if kw.get("mlp_layer") == "GluMlp" else {})}
    with pytest.raises(UnsupportedModelError) as err:
        to_spec(_timm(**kw))
    assert phrase in str(err.value)


def test_a_head_that_is_not_one_linear_is_refused_not_dropped():
    model = _timm()
    model.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(32, 5))
    with pytest.raises(UnsupportedModelError, match=r"head \(Sequential\): intvit quantizes a classifier head that is "
                                                    "one nn.Linear, or none; .* num_classes=0"):
        to_spec(model)
    hf = hf_vit(dim=32, layers=1, heads=2, mlp=64, labels=5)
    hf.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(32, 5))
    with pytest.raises(UnsupportedModelError, match=r"classifier \(Sequential\).*ViTModel backbone"):
        to_spec(hf)


def test_norms_without_affine_or_bias_and_a_removed_torchvision_head_are_read_exactly():
    x = images(2, size=16)
    plain = _timm(norm_layer=functools.partial(nn.LayerNorm, elementwise_affine=False))
    nobias = _timm(norm_layer=functools.partial(nn.LayerNorm, bias=False))
    for model in (plain, nobias):
        with torch.no_grad():
            assert relative_error(float_forward(to_spec(model), x), model(x)) < 1e-5
    tv = pytest.importorskip("torchvision.models.vision_transformer")
    torch.manual_seed(0)
    model = tv.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32,
                                 mlp_dim=64).eval()
    model.heads = nn.Sequential()                     # emptied: torchvision then returns the class token
    with torch.no_grad():
        assert relative_error(float_forward(to_spec(model), x), model(x)) < 1e-5
    model.encoder.layers[0].mlp[1] = nn.GELU(approximate="tanh")      # one block of two activations
    model.encoder.layers.append(copy.deepcopy(model.encoder.layers[0]))
    model.encoder.layers[1].mlp[1] = nn.GELU()
    with pytest.raises(UnsupportedModelError, match="the blocks use different MLP activations \\(gelu, gelu_tanh\\)"):
        to_spec(model)


@pytest.mark.parametrize("cls_name, config_name, width", [
    ("ViTForImageClassification", "ViTConfig", 32), ("DeiTForImageClassification", "DeiTConfig", 32),
    ("Dinov2ForImageClassification", "Dinov2Config", 64)])
def test_hf_classifiers_with_num_labels_0_output_the_pooled_features_as_hf_does(cls_name, config_name, width):
    import transformers
    torch.manual_seed(0)
    cfg = getattr(transformers, config_name)(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, num_labels=0)
    model = getattr(transformers, cls_name)(cfg).eval()
    x = images(2, size=16)
    with torch.no_grad():
        want = model(x).logits
        got = float_forward(to_spec(model), x)
    assert tuple(want.shape) == tuple(got.shape) == (2, width)
    assert relative_error(got, want) < 1e-5


def test_a_hf_deit_teacher_without_heads_is_refused_by_name():
    import transformers
    cfg = transformers.DeiTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64, num_labels=0)
    with pytest.raises(UnsupportedModelError, match="cls_classifier Identity and distillation_classifier Identity"):
        to_spec(transformers.DeiTForImageClassificationWithTeacher(cfg).eval())


@pytest.mark.parametrize("where", ["model", "blocks.0.attn"])
def test_forward_hooks_that_change_the_output_are_refused_before_calibration(where):
    model = _timm()
    if where == "model":
        model.register_forward_pre_hook(lambda mod, args: (args[0] * 0.5,))
    else:
        model.blocks[0].attn.register_forward_hook(lambda mod, args, out: out * 2)
    with pytest.raises(UnsupportedModelError, match=f"does not reproduce it: relative error .* Forward hooks on "
                                                    f"{'the model' if where == 'model' else where}"):
        intvit.quantize(model, images(4, size=16), intvit.QuantConfig(**QUICK))


def test_the_check_passes_a_faithful_reading_and_leaves_the_modes_alone():
    model = _timm().train()
    model.blocks[0].eval()
    err = check_spec_reproduces(model, to_spec(model), images(2, size=16))
    assert err < SPEC_TOLERANCE
    assert model.training and not model.blocks[0].training and model.head.training


def test_a_layernorm_eps_the_integer_layernorm_cannot_leave_out_is_refused():
    loud = hf_vit(image=16, dim=32, layers=1, heads=2, mlp=64, labels=5)
    for m in loud.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = 0.1
    with pytest.raises(UnsupportedModelError, match=r"LayerNorm eps \(0.1\) is not small against its activations"):
        intvit.quantize(loud, images(4, size=16), intvit.QuantConfig(**QUICK))


def test_torch_compile_wrappers_are_refused_not_returned_running_float():
    model = _timm()
    with pytest.raises(UnsupportedModelError, match="the model is wrapped by torch.compile"):
        intvit.quantize(torch.compile(model), images(4, size=16), intvit.QuantConfig(**QUICK))
    user = nn.Sequential(torch.compile(model))
    with pytest.raises(UnsupportedModelError, match="^0 is wrapped by torch.compile"):
        intvit.quantize(user, images(4, size=16), intvit.QuantConfig(**QUICK))


def test_weights_on_the_meta_device_are_refused():
    with torch.device("meta"):
        model = VisionTransformer(**TINY)
    with pytest.raises(UnsupportedModelError, match="on the meta device"):
        to_spec(model)


def test_a_wrapped_headless_timm_vit_and_a_wrapped_hf_classifier_answer_as_their_sources():
    torch.manual_seed(0)
    user = nn.Sequential(VisionTransformer(**{**TINY, "num_classes": 0}), nn.Linear(32, 3)).train()
    calib, x = images(16, size=16), images(4, size=16, seed=9)
    q = intvit.quantize(user, calib, intvit.QuantConfig(**QUICK))
    assert user.training, "the caller's model keeps its mode"
    with torch.no_grad():
        user.eval()
        assert _sqnr_db(q.eval()(x), user(x)) > 15

    class ReadsLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = hf_vit(image=16, dim=32, layers=1, heads=2, mlp=64, labels=5)

        def forward(self, x):
            return self.model(pixel_values=x).logits.softmax(-1)

    user = ReadsLogits().eval()
    q = intvit.quantize(user, calib, intvit.QuantConfig(**QUICK))
    with torch.no_grad():
        assert q(x).shape == (4, 5) and _sqnr_db(q(x), user(x)) > 15


class _WrapsAViT(nn.Module):
    """A user's module around a small HF ``ViTModel`` (``self.vit``), whose forward is ``body(vit, x)``."""

    def __init__(self, body):
        super().__init__()
        self.vit, self.body = hf_vit(image=16, dim=32, layers=1, heads=2, mlp=64, labels=5).vit, body

    def forward(self, x):
        return self.body(self.vit, x)


def test_a_wrapper_asking_its_backbone_for_more_than_it_returns_is_refused():
    hidden_states = _WrapsAViT(lambda vit, x: vit(x, output_hidden_states=True).hidden_states[-1][:, 0])
    with pytest.raises(UnsupportedModelError, match="calls its backbone with output_hidden_states=True"):
        intvit.quantize(hidden_states.eval(), images(4, size=16), intvit.QuantConfig(**QUICK))
    positional = _WrapsAViT(lambda vit, x: vit(x, None).last_hidden_state[:, 0])      # bool_masked_pos=None
    with pytest.raises(UnsupportedModelError, match="1 positional argument\\(s\\) after the images"):
        intvit.quantize(positional.eval(), images(4, size=16), intvit.QuantConfig(**QUICK))

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = _timm()

        def forward(self, x):
            return self.vit.forward_features(x)[:, 0]

    with pytest.raises(Exception, match="never called its backbone \\(VisionTransformer\\).*forward_features"):
        intvit.quantize(Features().eval(), images(4, size=16), intvit.QuantConfig(**QUICK))


def test_a_hf_dinov2_classifier_without_labels_quantizes_bit_exactly_to_its_pooled_features(tmp_path):
    import transformers

    from .conftest import assert_exact_in_ort_tvm_and_file
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=0)
    model = transformers.Dinov2ForImageClassification(cfg).eval()
    q = intvit.quantize(model, images(16, size=16), intvit.QuantConfig(**QUICK))
    x = images(2, size=16, seed=3)
    with torch.no_grad():
        assert q(x).shape == model(x).logits.shape == (2, 64)
        assert _sqnr_db(q(x), model(x).logits) > 15
    assert_exact_in_ort_tvm_and_file(q, x, tmp_path / "q.safetensors")


def test_a_wrapper_running_its_backbone_at_another_size_is_quantized_for_that_size():
    user = _WrapsAViT(lambda vit, x: vit(x, interpolate_pos_encoding=True).last_hidden_state[:, 0]).eval()
    x = images(2, size=24, seed=3)
    q = intvit.quantize(user, images(16, size=24), intvit.QuantConfig(**QUICK, image_size=24))
    with torch.no_grad():
        assert q(x).shape == user(x).shape == (2, 32) and _sqnr_db(q(x), user(x)) > 15
