"""Adapters from timm and torchvision vision transformers to ``ViTSpec``.

Supported:

* timm ``VisionTransformer`` (ViT, DeiT, DeiT III and others whose position
  embedding leaves the class token out (``no_embed_class``), register tokens,
  CLIP ViTs with ``pre_norm`` and QuickGELU, and LayerScale variants: ``ls1``/``ls2``
  ``γ`` folded into ``proj``/``fc2`` as for DINOv2), with ``global_pool``
  ``'token'`` or ``'avg'`` (without ``fc_norm``); headless (``num_classes=0``)
  it outputs the pooled features ``[B, D]`` as timm does (all tokens with
  ``global_pool=''``), and
  ``VisionTransformerDistilled`` (DeiT distilled: the two heads averaged, as
  timm does at inference, folded into one head over ``[cls ; dist]``);
* torchvision ``VisionTransformer`` (``vit_b_16`` style: ``conv_proj``,
  ``encoder.layers[i]`` with ``nn.MultiheadAttention``, ``heads.head``; with
  the head removed it outputs the class token ``[B, D]``, as torchvision does).

Neither library is a dependency: the adapters read the modules' attributes
and never import timm or torchvision. Both need the model's own input size
(the position embeddings are used as stored).
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import UnsupportedModelError, check_leaf_modules
from .hf import _lin, _norm, _patch_linear, _scaled
from .spec import Block, Linear, ViTSpec


def _native_size(size, image_size, path: str) -> tuple[int, int]:
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if image_size is not None:
        want = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if tuple(want) != size:
            raise UnsupportedModelError(f"{path}: this adapter uses the model's own input size {size}, "
                                        f"not {tuple(want)}; quantize at {size}")
    return size


def _layer_scale(ls: nn.Module):
    return getattr(ls, "gamma", None) if not isinstance(ls, nn.Identity) else None


def _check_timm_structure(model: nn.Module, name: str) -> None:
    """Refuse, by name, what timm's ``VisionTransformer`` can hold but this adapter does not map: each of
    these layers would otherwise be skipped without a word and the integer model would compute another
    function."""
    if getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(f"{name}: class_token=False (e.g. vit_*_gap models) is not supported; intvit "
                                    "needs the class token as the first token")
    if getattr(model, "pos_embed", None) is None:
        raise UnsupportedModelError(f"{name}: pos_embed='none' (no learned position embedding) is not supported")
    norm = model.get_submodule("patch_embed.norm") if _has_path(model, "patch_embed.norm") else nn.Identity()
    if not isinstance(norm, nn.Identity):
        raise UnsupportedModelError(f"patch_embed.norm ({type(norm).__name__}, embed_norm_layer): a norm on the "
                                    "patch embeddings before the position embedding is not supported")
    if not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity):
        raise UnsupportedModelError(f"fc_norm ({type(model.fc_norm).__name__}): a norm after pooling is not "
                                    "supported; use a model with the final norm before pooling")
    if isinstance(model.norm, nn.Identity) and not isinstance(model.head, nn.Identity):
        raise UnsupportedModelError(f"{name}: final_norm=False with a classifier head: intvit needs the final "
                                    "LayerNorm before a head (its int8 input); keep final_norm, or remove the head")
    if not isinstance(model.norm, (nn.LayerNorm, nn.Identity)):
        raise UnsupportedModelError(f"norm ({type(model.norm).__name__}): only a LayerNorm (or none) is supported "
                                    "as the final norm")
    for i, blk in enumerate(model.blocks):
        if type(blk).__name__ != "Block":
            raise UnsupportedModelError(f"blocks.{i} ({type(blk).__name__}): only timm's pre-norm Block is "
                                        "supported (not post-norm ResPostBlock or parallel blocks)")
        if type(blk.mlp).__name__ != "Mlp" or blk.mlp.fc1.out_features != blk.mlp.fc2.in_features:
            raise UnsupportedModelError(f"blocks.{i}.mlp ({type(blk.mlp).__name__}): only the plain fc1 → GELU → "
                                        "fc2 MLP is supported (not gated MLPs such as GluMlp / SwiGLU)")
        if not isinstance(getattr(blk.attn, "norm", nn.Identity()), nn.Identity):
            raise UnsupportedModelError(f"blocks.{i}.attn.norm ({type(blk.attn.norm).__name__}, scale_attn_norm="
                                        "True): a norm inside attention is not supported")
        if not isinstance(blk.attn.q_norm, nn.Identity) or not isinstance(getattr(blk.mlp, "norm", nn.Identity()),
                                                                          nn.Identity):
            raise UnsupportedModelError(f"blocks.{i}: QK-norm / MLP norm layers are not supported")


def activation(module: nn.Module, path: str) -> str:
    """The ``ops.ACTIVATIONS`` name of an MLP activation module (exact or tanh GELU, timm's QuickGELU, ReLU,
    SiLU); one clear error for any other."""
    if isinstance(module, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_tanh"}[module.approximate]
    named = {nn.ReLU: "relu", nn.SiLU: "silu"}
    for cls, name in named.items():
        if isinstance(module, cls):
            return name
    by_name = {"QuickGELU": "quick_gelu", "GELU": "gelu", "GELUTanh": "gelu_tanh"}   # timm's own classes
    if type(module).__name__ in by_name:                # (act_layer='quick_gelu' / 'gelu' / 'gelu_tanh')
        return by_name[type(module).__name__]
    raise UnsupportedModelError(f"{path} ({type(module).__name__}): the MLP activation must be GELU (exact or tanh), "
                                "QuickGELU, ReLU or SiLU")


def _one_activation(acts: list[str], where: str) -> str:
    if len(set(acts)) > 1:
        raise UnsupportedModelError(f"{where}: the blocks use different MLP activations ({', '.join(sorted(set(acts)))}); "
                                    "intvit takes one per model")
    return acts[0] if acts else "gelu"


def _has_path(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _timm_head(model: nn.Module, attr: str, name: str) -> nn.Linear | None:
    """``model.<attr>``: a Linear, or None where the head is removed (``Identity``, ``num_classes=0``)."""
    head = getattr(model, attr)
    if isinstance(head, (nn.Linear, nn.Identity)):
        return head if isinstance(head, nn.Linear) else None
    raise UnsupportedModelError(
        f"{attr} ({type(head).__name__}): intvit quantizes a classifier head that is one nn.Linear, or none; to "
        f"keep your own head in float, build the {name} with num_classes=0 and quantize a module of yours that "
        "holds it and your head (intvit then quantizes just the backbone)")


def timm_vit_spec(model: nn.Module, image_size=None) -> ViTSpec:
    """timm ``VisionTransformer`` / ``VisionTransformerDistilled`` → ``ViTSpec``."""
    name = type(model).__name__
    _check_timm_structure(model, name)
    act = _one_activation([activation(b.mlp.act, f"blocks.{i}.mlp.act") for i, b in enumerate(model.blocks)], name)
    head_module = _timm_head(model, "head", name)
    headless = head_module is None
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", "avg", "") or \
            (model.global_pool == "" and not headless):
        raise UnsupportedModelError(f"{name}: global_pool={model.global_pool!r} is not supported "
                                    "(use 'token' or 'avg', or '' without a head)")
    if getattr(model, "pool_include_prefix", False) and model.global_pool == "avg":
        raise UnsupportedModelError(f"{name}: pool_include_prefix=True (averaging the class token in) is not "
                                    "supported; intvit's 'avg' pooling averages the patch tokens")
    check_leaf_modules(model)
    size = _native_size(model.patch_embed.img_size, image_size, "patch_embed")
    pe, p = _patch_linear(model.patch_embed.proj, "patch_embed.proj")
    n_prefix = model.num_prefix_tokens
    pos = model.pos_embed.detach().float()[0]
    tokens = [model.cls_token.detach().float()[0, 0]]
    dist = getattr(model, "dist_token", None)
    if dist is not None:
        tokens.append(dist.detach().float()[0, 0])
    registers = getattr(model, "reg_token", None)           # register tokens (``reg_tokens=``), after the class token
    if registers is not None:
        tokens += list(registers.detach().float()[0])
    if getattr(model, "no_embed_class", False):              # DeiT III, big_vision: the position embedding
        prefix_pos, pos = torch.zeros(n_prefix, pos.shape[-1]), torch.cat([torch.zeros(n_prefix, pos.shape[-1]), pos])
    else:                                                    # covers the patches only
        prefix_pos = pos[:n_prefix]
    blocks = [Block(norm1=_norm(b.norm1), qkv=_lin(b.attn.qkv), proj=_scaled(_lin(b.attn.proj), _layer_scale(b.ls1)),
                    norm2=_norm(b.norm2), fc1=_lin(b.mlp.fc1), fc2=_scaled(_lin(b.mlp.fc2), _layer_scale(b.ls2)),
                    num_heads=b.attn.num_heads, source=f"blocks.{i}") for i, b in enumerate(model.blocks)]
    head, pool = (None if headless else _lin(head_module)), (("mean",) if model.global_pool == "avg" else ("cls",))
    if dist is not None:
        head_dist = _timm_head(model, "head_dist", name)
        if headless or head_dist is None:
            raise UnsupportedModelError(f"{name} without heads (num_classes=0) returns the average of its class "
                                        "and distillation tokens, which intvit does not pool; keep the heads")
        d = _lin(head_dist)
        head = Linear(torch.cat([head.weight, d.weight], dim=1) / 2, (head.bias + d.bias) / 2)
        pool = ("token0", "token1")
    return ViTSpec(
        image_size=size, in_chans=model.patch_embed.proj.in_channels, patch_size=p, patch_embed=pe,
        prefix_tokens=torch.stack(tokens) + prefix_pos, pos_patches=pos[n_prefix:].clone(),
        blocks=blocks, final_norm=None if isinstance(model.norm, nn.Identity) else _norm(model.norm), pool=pool,
        head=head, pre_norm=None if isinstance(model.norm_pre, nn.Identity) else _norm(model.norm_pre),
        act=act,
        pooled_output=headless and model.global_pool != "",
        family="timm-deit-distilled" if dist is not None else "timm-vit", source_class=name)


def _split_mha(mha: nn.MultiheadAttention) -> tuple[Linear, Linear]:
    if not getattr(mha, "_qkv_same_embed_dim", True) or not mha.batch_first:
        raise UnsupportedModelError("MultiheadAttention with separate q/k/v weights or batch_first=False "
                                    "is not supported")
    qkv = Linear(mha.in_proj_weight.detach().float().clone(),
                 mha.in_proj_bias.detach().float().clone() if mha.in_proj_bias is not None else None)
    return qkv, _lin(mha.out_proj)


def _torchvision_head(heads: nn.Module) -> nn.Linear | None:
    """torchvision's ``heads``: ``Sequential(head=Linear)`` as built, a bare ``Linear``, or removed
    (``Identity`` / empty ``Sequential``: the model then returns the class token)."""
    if isinstance(heads, nn.Linear):
        return heads
    if isinstance(heads, nn.Identity) or (isinstance(heads, nn.Sequential) and len(heads) == 0):
        return None
    if isinstance(heads, nn.Sequential) and list(heads._modules) == ["head"] and isinstance(heads.head, nn.Linear):
        return heads.head
    raise UnsupportedModelError(f"heads ({type(heads).__name__}: {', '.join(heads._modules) or 'no children'}): "
                                "only one Linear (heads.head) or no head is supported")


def torchvision_vit_spec(model: nn.Module, image_size=None) -> ViTSpec:
    """torchvision ``VisionTransformer`` (``vit_b_16`` etc.) → ``ViTSpec``."""
    if getattr(model, "representation_size", None):
        raise UnsupportedModelError("heads.pre_logits (representation_size): a tanh pre-logits layer is "
                                    "not supported")
    check_leaf_modules(model)
    size = _native_size(model.image_size, image_size, "image_size")
    pe, p = _patch_linear(model.conv_proj, "conv_proj")
    pos = model.encoder.pos_embedding.detach().float()[0]
    blocks, acts = [], []
    for i, layer in enumerate(model.encoder.layers):
        qkv, proj = _split_mha(layer.self_attention)
        fc1, act, fc2 = layer.mlp[0], layer.mlp[1], layer.mlp[3]
        acts.append(activation(act, f"encoder.layers.{i}.mlp.1"))
        blocks.append(Block(norm1=_norm(layer.ln_1), qkv=qkv, proj=proj, norm2=_norm(layer.ln_2),
                            fc1=_lin(fc1), fc2=_lin(fc2), num_heads=layer.self_attention.num_heads,
                            source=f"encoder.layers.{i}"))
    head = _torchvision_head(model.heads)
    return ViTSpec(
        image_size=size, in_chans=model.conv_proj.in_channels, patch_size=p, patch_embed=pe,
        prefix_tokens=(model.class_token.detach().float()[0, 0] + pos[0])[None], pos_patches=pos[1:].clone(),
        blocks=blocks, final_norm=_norm(model.encoder.ln), pool=("cls",),
        head=None if head is None else _lin(head), pooled_output=head is None,
        act=_one_activation(acts, type(model).__name__), family="torchvision-vit", source_class=type(model).__name__)


ADAPTERS = {
    "timm.VisionTransformer": timm_vit_spec,
    "timm.VisionTransformerDistilled": timm_vit_spec,
    "torchvision.VisionTransformer": torchvision_vit_spec,
}
