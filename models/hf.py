"""Adapters from Hugging Face ``transformers`` vision transformers to ``ViTSpec``.

Supported (transformers 5.x module layout):

* ``ViTForImageClassification`` / ``ViTModel`` (also DeiT checkpoints loaded as ViT),
* ``DeiTForImageClassification`` / ``DeiTForImageClassificationWithTeacher`` /
  ``DeiTModel`` (the distillation token; the two heads are averaged, as HF does
  at inference, by folding them into one head over ``[cls ; dist]``),
* ``Dinov2Model`` / ``Dinov2ForImageClassification`` and their
  ``Dinov2WithRegisters…`` forms (LayerScale ``λ`` folded into ``o_proj`` and
  ``fc2``: ``λ ⊙ (W x + b) = (diag(λ) W) x + λ ⊙ b``; registers are prefix
  tokens without a position embedding),
* ``CLIPVisionModelWithProjection`` (``image_embeds``) / ``CLIPVisionModel``
  (``pooler_output``): CLIP's pre-LayerNorm and QuickGELU included.

The MLP activation is any ``hidden_act`` in ``HF_ACTIVATIONS`` (the integer
model holds it as a 256-entry table of the int8 fc1 output).

Position embeddings are resolved for the fixed input size given to the
adapter, with the model's own interpolation, so the spec needs no resampling.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import UnsupportedModelError, check_leaf_modules
from .spec import Block, Linear, Norm, ViTSpec

#: Hugging Face ``hidden_act`` names → ``ops.ACTIVATIONS`` (the MLP activation's table in the integer model)
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu",
                  "swish": "silu"}


def _lin(m: nn.Module) -> Linear:
    return Linear(m.weight.detach().clone().float(),
                  None if m.bias is None else m.bias.detach().clone().float())


def _norm(m: nn.LayerNorm) -> Norm:
    """A LayerNorm's γ, β (1 and 0 where it has none: ``elementwise_affine=False`` / ``bias=False``) and ε."""
    if not isinstance(m, nn.LayerNorm) or len(m.normalized_shape) != 1:
        raise UnsupportedModelError(f"{type(m).__name__}: only a LayerNorm over the last axis is supported as a norm")
    d = m.normalized_shape[0]
    weight = torch.ones(d) if m.weight is None else m.weight.detach().clone().float()
    bias = torch.zeros(d) if m.bias is None else m.bias.detach().clone().float()
    return Norm(weight, bias, float(m.eps))


def _classifier(model: nn.Module, attr: str = "classifier") -> tuple[Linear | None, bool]:
    """``(head, pooled_output)`` of an HF model: a base model has no ``classifier`` (it outputs its tokens); a
    classifier is a Linear, or ``Identity`` (``num_labels=0``: HF's logits are then the pooled features)."""
    head = getattr(model, attr, None)
    if head is None:
        return None, False
    if isinstance(head, nn.Linear):
        return _lin(head), False
    if isinstance(head, nn.Identity):
        return None, True
    raise UnsupportedModelError(
        f"{attr} ({type(head).__name__}): intvit quantizes a classifier that is one nn.Linear (or nn.Identity "
        f"with num_labels=0); to keep your own head in float, quantize a module of yours that holds the "
        f"{type(model).__name__.split('For')[0]}Model backbone and your head (intvit then quantizes just the "
        "backbone)")


def _fuse_qkv(attn: nn.Module) -> Linear:
    parts = [attn.q_proj, attn.k_proj, attn.v_proj]
    w = torch.cat([p.weight.detach().float() for p in parts], dim=0)
    biases = [p.bias.detach().float() if p.bias is not None else torch.zeros(p.out_features)
              for p in parts]
    return Linear(w.clone(), torch.cat(biases).clone())


def _scaled(lin: Linear, scale: torch.Tensor | None) -> Linear:
    if scale is None:
        return lin
    s = scale.detach().float()
    return Linear(lin.weight * s[:, None], None if lin.bias is None else lin.bias * s)


def _activation(config, path: str) -> str:
    """The ``ops.ACTIVATIONS`` name of ``config.hidden_act``; one clear error for any other."""
    act = getattr(config, "hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise UnsupportedModelError(
            f"{path}: activation {act!r} is not supported; intvit's integer MLP activation is a table of one of "
            f"{', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[act]


def _patch_linear(conv: nn.Conv2d, path: str) -> tuple[Linear, int]:
    p = conv.kernel_size[0]
    if conv.kernel_size != (p, p) or conv.stride != (p, p) or conv.padding not in ((0, 0), 0):
        raise UnsupportedModelError(
            f"{path} (Conv2d): only non-overlapping square patch convolutions (kernel == stride, "
            f"no padding) are supported, got kernel {conv.kernel_size} stride {conv.stride}")
    w = conv.weight.detach().float().reshape(conv.out_channels, -1).clone()
    b = conv.bias.detach().float().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
    return Linear(w, b), p


def _image_size(config, image_size) -> tuple[int, int]:
    size = image_size if image_size is not None else config.image_size
    if isinstance(size, int):
        return (size, size)
    return tuple(int(s) for s in size)


def _blocks(layers, prefix: str, heads: int, layer_scale: bool) -> list[Block]:
    out = []
    for i, layer in enumerate(layers):
        norm1 = getattr(layer, "norm1", None) or getattr(layer, "layernorm_before")
        norm2 = getattr(layer, "norm2", None) or getattr(layer, "layernorm_after")
        attn = layer.attention
        o_proj = attn.o_proj if hasattr(attn, "o_proj") else attn.output.dense
        ls1 = layer.layer_scale1.lambda1 if layer_scale else None
        ls2 = layer.layer_scale2.lambda1 if layer_scale else None
        out.append(Block(norm1=_norm(norm1), qkv=_fuse_qkv(attn), proj=_scaled(_lin(o_proj), ls1),
                         norm2=_norm(norm2), fc1=_lin(layer.mlp.fc1),
                         fc2=_scaled(_lin(layer.mlp.fc2), ls2), num_heads=heads,
                         source=f"{prefix}.{i}"))
    return out


@torch.no_grad()
def _resolved_pos(embeddings, size: tuple[int, int], patch: int, n_prefix: int, resample: bool) -> torch.Tensor:
    """Position embeddings ``[n_prefix + n_patches, D]`` for input ``size``: the stored ones, or with
    ``resample`` what the model's own ``interpolate_pos_encoding`` gives for that size — as the model does
    (HF ViT and DeiT call it at any size but their configured one, when asked; DINOv2 on every call; it
    resamples whenever the patch count changes or the image is not square)."""
    pos = embeddings.position_embeddings.detach().float()
    if not resample:
        return pos[0]
    n_patches = (size[0] // patch) * (size[1] // patch)
    dummy = torch.zeros(1, n_prefix + n_patches, pos.shape[-1])
    try:
        pos = embeddings.interpolate_pos_encoding(dummy, size[0], size[1]).detach().float()
    except Exception as exc:                        # noqa: BLE001 — the model's own code refuses this size
        raise UnsupportedModelError(
            f"{type(embeddings).__name__}.interpolate_pos_encoding cannot resample the model's position embeddings "
            f"to {size[0]}x{size[1]} ({type(exc).__name__}: {exc}); quantize it at its own input size or one the "
            "model itself can run at") from None
    return pos[0]


def vit_spec(model: nn.Module, image_size=None) -> ViTSpec:
    """``ViTModel`` / ``ViTForImageClassification`` → ``ViTSpec``."""
    base = model.vit if hasattr(model, "vit") else model
    prefix = "vit." if hasattr(model, "vit") else ""
    return _vit_like_spec(model, base, prefix, _classifier(model), n_prefix=1, family="hf-vit", image_size=image_size)


def deit_spec(model: nn.Module, image_size=None) -> ViTSpec:
    """HF DeiT models; the teacher variant averages its two heads."""
    base = model.deit if hasattr(model, "deit") else model
    prefix = "deit." if hasattr(model, "deit") else ""
    n_prefix = 2 if getattr(base.embeddings, "distillation_token", None) is not None else 1
    if hasattr(model, "cls_classifier"):
        c, d = model.cls_classifier, model.distillation_classifier
        if not (isinstance(c, nn.Linear) and isinstance(d, nn.Linear)):
            raise UnsupportedModelError(
                f"{type(model).__name__} with cls_classifier {type(c).__name__} and distillation_classifier "
                f"{type(d).__name__}: only two Linear heads are supported (without them HF returns the average of "
                "the class and distillation tokens, which intvit does not pool)")
        w = torch.cat([c.weight, d.weight], dim=1).detach().float() / 2
        b = (c.bias + d.bias).detach().float() / 2
        spec = _vit_like_spec(model, base, prefix, (None, False), n_prefix, "hf-deit-distilled", image_size)
        spec.head, spec.pool = Linear(w, b), ("token0", "token1")
        return spec
    return _vit_like_spec(model, base, prefix, _classifier(model), n_prefix, "hf-deit", image_size)


def _vit_like_spec(model, base, prefix, classifier, n_prefix, family, image_size) -> ViTSpec:
    """The spec of an HF ViT or DeiT; ``classifier`` is ``_classifier``'s ``(head, pooled_output)``."""
    cfg = base.config
    act = _activation(cfg, prefix + "encoder")
    check_leaf_modules(model, skip=(prefix + "pooler",))
    size = _image_size(cfg, image_size)
    emb = base.embeddings
    pe, p = _patch_linear(emb.patch_embeddings.projection, prefix + "embeddings.patch_embeddings.projection")
    prefix_tok = [emb.cls_token.detach().float()[0, 0]]
    if n_prefix == 2:
        prefix_tok.append(emb.distillation_token.detach().float()[0, 0])
    pos = _resolved_pos(emb, size, p, n_prefix, resample=size != _image_size(cfg, None))
    layers = base.encoder.layer if hasattr(base, "encoder") else base.layers
    layer_prefix = prefix + ("encoder.layer" if hasattr(base, "encoder") else "layers")
    return ViTSpec(
        image_size=size, in_chans=cfg.num_channels, patch_size=p, patch_embed=pe,
        prefix_tokens=torch.stack(prefix_tok) + pos[:n_prefix], pos_patches=pos[n_prefix:].clone(),
        blocks=_blocks(layers, layer_prefix, cfg.num_attention_heads, layer_scale=False),
        final_norm=_norm(base.layernorm), pool=("cls",), head=classifier[0], pooled_output=classifier[1], act=act,
        family=family, source_class=type(model).__name__)


def dinov2_spec(model: nn.Module, image_size=None) -> ViTSpec:
    """``Dinov2Model`` / ``Dinov2ForImageClassification`` and their ``WithRegisters`` forms → ``ViTSpec``
    (LayerScale folded; the register tokens are prefix tokens, which pooling leaves out as DINOv2 does)."""
    attr = "dinov2_with_registers" if hasattr(model, "dinov2_with_registers") else "dinov2"
    base = getattr(model, attr) if hasattr(model, attr) else model
    prefix = f"{attr}." if hasattr(model, attr) else ""
    cfg = base.config
    if getattr(cfg, "use_swiglu_ffn", False):
        raise UnsupportedModelError(f"{prefix}encoder.layer.0.mlp (SwiGLUFFN): SwiGLU MLPs are not supported")
    act = _activation(cfg, prefix + "encoder")
    check_leaf_modules(model)
    size = _image_size(cfg, image_size)
    emb = base.embeddings
    pe, p = _patch_linear(emb.patch_embeddings.projection, prefix + "embeddings.patch_embeddings.projection")
    pos = _resolved_pos(emb, size, p, 1, resample=True)
    head, pooled = _classifier(model)
    prefix_tokens = (emb.cls_token.detach().float()[0, 0] + pos[0])[None]
    registers = getattr(emb, "register_tokens", None)       # DINOv2 with registers: after the class token,
    if registers is not None:                                # without a position embedding
        prefix_tokens = torch.cat([prefix_tokens, registers.detach().float()[0]])
    return ViTSpec(
        image_size=size, in_chans=cfg.num_channels, patch_size=p, patch_embed=pe,
        prefix_tokens=prefix_tokens, pos_patches=pos[1:].clone(),
        blocks=_blocks(base.encoder.layer, prefix + "encoder.layer", cfg.num_attention_heads,
                       layer_scale=True),
        final_norm=_norm(base.layernorm), pool=("cls", "mean"), head=head, pooled_output=pooled, act=act,
        family="hf-dinov2", source_class=type(model).__name__)


@torch.no_grad()
def clip_vision_spec(model: nn.Module, image_size=None) -> ViTSpec:
    """``CLIPVisionModelWithProjection`` → its ``image_embeds`` (the projected, final-norm class token, what
    CLIP compares with text); ``CLIPVisionModel`` → its ``pooler_output`` (the final-norm class token).

    CLIP normalises the embedded tokens before the first block (``pre_layrnorm``: the spec's ``pre_norm``)
    and applies ``post_layernorm`` to the class token only, which is the final norm followed by ``cls``
    pooling; its ``last_hidden_state`` (without that norm) is not an output of the integer model.
    """
    base = model.vision_model if hasattr(model, "vision_model") else model
    prefix = "vision_model." if hasattr(model, "vision_model") else ""
    cfg = base.config
    act = _activation(cfg, prefix + "encoder")
    check_leaf_modules(model)
    size = _image_size(cfg, image_size)
    emb = base.embeddings
    pe, p = _patch_linear(emb.patch_embedding, prefix + "embeddings.patch_embedding")
    n_patches = (size[0] // p) * (size[1] // p)
    dummy = torch.zeros(1, 1 + n_patches, cfg.hidden_size)
    pos = emb.interpolate_pos_encoding(dummy, size[0], size[1]).detach().float()[0] \
        if (size[0], size[1]) != (cfg.image_size, cfg.image_size) else emb.position_embedding.weight.detach().float()
    blocks = []
    for i, layer in enumerate(base.encoder.layers):
        attn = layer.self_attn
        blocks.append(Block(norm1=_norm(layer.layer_norm1), qkv=_fuse_qkv(attn), proj=_lin(attn.out_proj),
                            norm2=_norm(layer.layer_norm2), fc1=_lin(layer.mlp.fc1), fc2=_lin(layer.mlp.fc2),
                            num_heads=cfg.num_attention_heads, source=f"{prefix}encoder.layers.{i}"))
    projection = getattr(model, "visual_projection", None)
    if projection is not None and not isinstance(projection, nn.Linear):
        raise UnsupportedModelError(f"visual_projection ({type(projection).__name__}): only a Linear is supported")
    return ViTSpec(
        image_size=size, in_chans=cfg.num_channels, patch_size=p, patch_embed=pe,
        prefix_tokens=(emb.class_embedding.detach().float() + pos[0])[None], pos_patches=pos[1:].clone(),
        blocks=blocks, final_norm=_norm(base.post_layernorm), pool=("cls",),
        head=None if projection is None else _lin(projection), pooled_output=projection is None,
        pre_norm=_norm(base.pre_layrnorm), act=act,
        family="hf-clip-projection" if projection is not None else "hf-clip", source_class=type(model).__name__)


ADAPTERS = {
    "ViTForImageClassification": vit_spec,
    "ViTModel": vit_spec,
    "DeiTForImageClassification": deit_spec,
    "DeiTForImageClassificationWithTeacher": deit_spec,
    "DeiTModel": deit_spec,
    "Dinov2Model": dinov2_spec,
    "Dinov2ForImageClassification": dinov2_spec,
    "Dinov2WithRegistersModel": dinov2_spec,
    "Dinov2WithRegistersForImageClassification": dinov2_spec,
    "CLIPVisionModel": clip_vision_spec,
    "CLIPVisionModelWithProjection": clip_vision_spec,
}
