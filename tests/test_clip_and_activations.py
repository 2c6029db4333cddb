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


def test_the_pre_norm_eps_counts_and_attribution_runs_on_a_pre_norm_model():
    from intvit.models import UnsupportedModelError
    from intvit.quantize.attribution import attribute
    loud = _clip("CLIPVisionModelWithProjection")
    for m in loud.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 0.01
    with pytest.raises(UnsupportedModelError, match=r"LayerNorm eps \(0.01\) is not small"):
        intvit.quantize(loud, images(16, size=16), intvit.QuantConfig(**CALIB))
    q = intvit.quantize(_clip("CLIPVisionModelWithProjection"), images(16, size=16), intvit.QuantConfig(**CALIB))
    report = attribute(q, images(4, size=16, seed=2))
    names = [row["name"] for row in report["take_one_out"]]
    assert "I-LayerNorm → float LayerNorm" in names and not any("residual stream" in n for n in names)
    residual = next(r for r in report["add_one_in"] if r["name"] == "residual stream (16-bit)")
    assert residual["points"] == 2 + 2 * 2                  # embed, norm_pre and two per block


def test_timm_activation_strings_name_timm_classes_that_are_read():
    from timm.models.vision_transformer import VisionTransformer
    for act_layer, act in (("gelu", "gelu"), ("gelu_tanh", "gelu_tanh"), ("quick_gelu", "quick_gelu")):
        torch.manual_seed(0)
        model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5,
                                  act_layer=act_layer).eval()
        x = images(2, size=16)
        assert to_spec(model).act == act
        with torch.no_grad():
            assert relative_error(float_forward(to_spec(model), x), model(x)) < 1e-5


def test_wrappers_reading_what_the_integer_clip_does_not_compute_and_a_whole_clipmodel_are_refused():
    from torch import nn

    from intvit.models import UnsupportedModelError

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = _clip("CLIPVisionModel")

        def forward(self, x):
            return self.clip(pixel_values=x).last_hidden_state

    with pytest.raises(UnsupportedModelError, match="Tokens answers with NoneType on its quantized backbone but "
                                                    "\\(2, 5, 32\\) on the float one; the integer backbone answers "
                                                    "with pooler_output only"):
        intvit.quantize(Tokens().eval(), images(8, size=16), intvit.QuantConfig(**CALIB))
    text = transformers.CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=8)
    vision = transformers.CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=64)
    whole = transformers.CLIPModel(transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))
    with pytest.raises(UnsupportedModelError, match="CLIPModel holds a text and an image encoder.*"
                                                    "CLIPVisionModelWithProjection.from_pretrained"):
        intvit.quantize(whole.eval(), images(8, size=16), intvit.QuantConfig(**CALIB))


def test_qat_refuses_an_embedding_head_and_trains_the_pre_norm():
    from timm.models.vision_transformer import VisionTransformer

    from intvit.quantize.qat import trainable_tensors
    q = intvit.quantize(_clip("CLIPVisionModelWithProjection"), images(16, size=16), intvit.QuantConfig(**CALIB))
    with pytest.raises(ValueError, match="projects into an embedding space"):
        intvit.qat(q, images(8, size=16), epochs=1, progress=False)
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5,
                              pre_norm=True).eval()
    spec = to_spec(model)
    assert any(t is spec.pre_norm.weight for t in trainable_tensors(spec))
    assert any(t is spec.pre_norm.bias for t in trainable_tensors(spec))


def test_intvit_quantize_takes_a_folder_as_the_class_its_config_names_and_refuses_missing_weights(tmp_path, capsys):
    import json

    import numpy as np

    from intvit.cli import main
    torch.manual_seed(0)
    np.savez(tmp_path / "calib.npz", images=images(16, size=16).numpy())
    _clip("CLIPVisionModel").save_pretrained(tmp_path / "vision")
    assert main(["quantize", str(tmp_path / "vision"), "--calib", str(tmp_path / "calib.npz"),
                 "-o", str(tmp_path / "v.safetensors"), "--quiet"]) == 0
    assert intvit.load(tmp_path / "v.safetensors").spec.family == "hf-clip"        # pooler_output, no projection
    base = transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=32,
                                                        num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=64), add_pooling_layer=False)
    base.save_pretrained(tmp_path / "base")
    assert main(["quantize", str(tmp_path / "base"), "--calib", str(tmp_path / "calib.npz"),
                 "-o", str(tmp_path / "b.safetensors"), "--quiet"]) == 0
    assert intvit.load(tmp_path / "b.safetensors").spec.head is None              # its tokens, not a random head
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    (tmp_path / "base" / "config.json").write_text(json.dumps({**config, "architectures": ["ViTForImageClassification"]}))
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "base"), "--calib", str(tmp_path / "calib.npz"),
                 "-o", str(tmp_path / "c.safetensors"), "--quiet"]) == 2
    assert "lacks 2 weight(s) of ViTForImageClassification (classifier." in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()
