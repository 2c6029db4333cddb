"""CLIP image encoders (a LayerNorm before the first block, QuickGELU) and the other MLP activations a table
holds: each read exactly from its source, quantized, and bit-exact in torch, ONNX Runtime and TVM."""
import math

import pytest
import torch

import intvit
from intvit import ops
from intvit.models import float_forward, to_spec
from intvit.models.fidelity import relative_error

from .conftest import assert_exact_in_ort_tvm_and_file, images
from .test_onnx_export import float_nodes
from .test_integer_only import float_ops

transformers = pytest.importorskip("transformers")
CALIB = dict(progress=False)


def _clip(cls_name: str, act: str = "quick_gelu"):
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64, projection_dim=24, hidden_act=act)
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():                        # off the initialisation's symmetric values
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _sqnr_db(got, want):
    return float(10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum()))


@pytest.mark.parametrize("cls_name, field", [("CLIPVisionModelWithProjection", "image_embeds"),
                                             ("CLIPVisionModel", "pooler_output")])
def test_hf_clip_image_encoders_give_their_embedding_integer_only_and_bit_exact(cls_name, field, tmp_path):
    model, x = _clip(cls_name), images(2, size=16, seed=4)
    spec = to_spec(model)
    assert spec.pre_norm is not None and spec.act == "quick_gelu" and spec.pool == ("cls",)
    with torch.no_grad():
        want = getattr(model(x), field)
        assert relative_error(float_forward(spec, x), want) < 1e-5
    q = intvit.quantize(model, images(32, size=16), intvit.QuantConfig(**CALIB))
    with torch.no_grad():
        assert q(x).shape == want.shape and _sqnr_db(q(x), want) > 20
    proto, _ = assert_exact_in_ort_tvm_and_file(q, x, tmp_path / "clip.safetensors")
    assert float_nodes(proto)[1] == [] and float_ops(q, x)[1] == []
    assert sum(n.name.startswith("norm_pre/ilayernorm") for n in proto.graph.node) == 1


def test_a_timm_clip_vit_with_pre_norm_and_quickgelu_is_read_and_saved_with_both(tmp_path):
    from timm.layers import QuickGELU
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5,
                              pre_norm=True, act_layer=QuickGELU).eval()
    x = images(2, size=16, seed=4)
    spec = to_spec(model)
    assert spec.pre_norm is not None and spec.act == "quick_gelu"
    with torch.no_grad():
        assert relative_error(float_forward(spec, x), model(x)) < 1e-5
    q = intvit.quantize(model, images(32, size=16), intvit.QuantConfig(**CALIB))
    assert_exact_in_ort_tvm_and_file(q, x, tmp_path / "timm_clip.safetensors")
    q.save(tmp_path / "with_float.safetensors", include_float=True)
    again = intvit.load(tmp_path / "with_float.safetensors")
    assert again.spec.act == "quick_gelu" and torch.equal(again.spec.pre_norm.weight, spec.pre_norm.weight)
    assert torch.equal(again.forward_int(x), q.forward_int(x))


@pytest.mark.parametrize("hidden_act, act", [("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh"),
                                             ("quick_gelu", "quick_gelu"), ("relu", "relu"), ("silu", "silu")])
def test_each_hf_activation_becomes_its_table(hidden_act, act):
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_labels=5, hidden_act=hidden_act)).eval()
    x = images(2, size=16, seed=4)
    spec = to_spec(model)
    assert spec.act == act
    with torch.no_grad():
        assert relative_error(float_forward(spec, x), model(x).logits) < 1e-5
    q = intvit.quantize(model, images(16, size=16), intvit.QuantConfig(**CALIB))
    table = q.p("blocks.0.gelu.table")
    want = ops.gelu_table(q.scales["blocks.0.fc1"], q.scales["blocks.0.gelu"], 8, q.zeros["blocks.0.gelu"],
                          zero_in=q.zeros["blocks.0.fc1"], act=act)
    assert torch.equal(table, want) and len(set(table.tolist())) > 16
    with pytest.raises(ValueError, match=f"ShiftGELU \\(gelu='shift'\\) approximates the exact GELU; this model's "
                                         f"activation is {act}"):
        intvit.quantize(model, images(16, size=16), intvit.QuantConfig(**CALIB, gelu="shift"))


def test_activation_tables_hold_each_function_rounded_to_the_output_grid():
    s_in, s_out = 0.05, 0.02
    v = torch.arange(-128, 128, dtype=torch.float64) * s_in
    formulas = {"gelu": 0.5 * v * (1 + torch.special.erf(v / math.sqrt(2))),
                "gelu_tanh": 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))),
                "quick_gelu": v / (1 + torch.exp(-1.702 * v)), "relu": v.clamp(min=0), "silu": v / (1 + torch.exp(-v))}
    assert set(formulas) == set(ops.ACTIVATIONS)
    for act, f in formulas.items():
        want = torch.clamp(torch.round(f / s_out), -128, 127).to(torch.int64)
        assert torch.equal(ops.gelu_table(s_in, s_out, act=act), want), act
    assert torch.equal(ops.gelu_table(s_in, s_out), ops.gelu_table(s_in, s_out, act="gelu"))
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        ops.gelu_table(s_in, s_out, act="mish")


def test_timm_and_torchvision_activation_modules_are_named_or_refused():
    from torch import nn

    from intvit.models import UnsupportedModelError
    from intvit.models.timm_tv import activation
    assert [activation(m, "a") for m in (nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU(), nn.SiLU())] == \
        ["gelu", "gelu_tanh", "relu", "silu"]
    with pytest.raises(UnsupportedModelError, match="blocks.3.mlp.act \\(Mish\\): the MLP activation must be"):
        activation(nn.Mish(), "blocks.3.mlp.act")


def test_intvit_quantize_reads_a_clip_checkpoint_folder_as_its_image_encoder(tmp_path, capsys):
    import numpy as np

    from intvit.cli import main
    torch.manual_seed(0)
    text = transformers.CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=8)
    vision = transformers.CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=64, projection_dim=12)
    full = transformers.CLIPModel(transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                          projection_dim=12)).eval()
    full.save_pretrained(tmp_path / "clip")
    np.savez(tmp_path / "calib.npz", images=images(16, size=16).numpy())
    out = tmp_path / "clip.int8.safetensors"
    assert main(["quantize", str(tmp_path / "clip"), "--calib", str(tmp_path / "calib.npz"), "-o", str(out),
                 "--quiet"]) == 0
    q = intvit.load(out)
    x = images(2, size=16, seed=4)
    with torch.no_grad():
        want = full.visual_projection(full.vision_model(pixel_values=x).pooler_output)   # CLIP's image features
    assert q.spec.family == "hf-clip-projection" and q(x).shape == want.shape == (2, 12)
    assert _sqnr_db(q(x), want) > 15
    # export, compile and run it: the module's output is named embeddings, and run prints them, not classes
    assert main(["export", str(out), "-o", str(tmp_path / "clip.onnx")]) == 0
    assert main(["compile", str(tmp_path / "clip.onnx"), "--batch", "2", "-o", str(tmp_path / "clip.so")]) == 0
    np.save(tmp_path / "x.npy", x.numpy())
    capsys.readouterr()
    assert main(["run", str(tmp_path / "clip.so"), "--input", str(tmp_path / "x.npy")]) == 0
    printed = capsys.readouterr().out
    assert "image 0: embeddings [12], L2 norm" in printed and "top-5" not in printed
