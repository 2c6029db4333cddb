"""The canonical float description of a plain (pre-norm) vision transformer.

Adapters (``models.hf``, ...) turn a user's model into a ``ViTSpec``; the
quantizer only ever sees a ``ViTSpec``. ``float_forward`` is the reference
forward pass of that spec; adapter tests hold it to the source model's output.

Shape of the network::

    tokens = [prefix tokens ; patch_embed(image) + pos_patches]      # [B, T, D]
    h = LN_pre(tokens)                       # optional (CLIP's pre-LayerNorm); the residual stream starts here
    for each block:
        h = h + o_proj(attn(LN1(h)))        # LayerScale already folded into o_proj
        h = h + fc2(act(fc1(LN2(h))))       # and into fc2; act: exact GELU, or another in ops.ACTIVATIONS
    h = LN_final(h)                          # optional
    pooled = concat(selected tokens)         # 'cls' = token 0, 'mean' = mean of patch tokens
    logits = head(pooled)                    # optional; without a head the output is the tokens,
                                             # or ``pooled`` when ``pooled_output`` (timm num_classes=0)

A ``hook(name, tensor) -> tensor`` passed to ``float_forward`` sees every
quantization point by name (see ``QUANT_POINTS``); the calibrator observes
through it and fake-quant mode rounds through it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..ops.gemm import patchify
from ..ops.nonlinear import ACTIVATIONS

Hook = Callable[[str, torch.Tensor], torch.Tensor]
WeightFn = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass
class Linear:
    weight: torch.Tensor            # [out, in]
    bias: torch.Tensor | None = None


@dataclass
class Norm:
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float = 1e-6


@dataclass
class Block:
    norm1: Norm
    qkv: Linear                     # fused [3D, D]: rows q, then k, then v
    proj: Linear
    norm2: Norm
    fc1: Linear
    fc2: Linear
    num_heads: int
    source: str = ""                # module path in the user's model, for messages


@dataclass
class ViTSpec:
    image_size: tuple[int, int]
    in_chans: int
    patch_size: int
    patch_embed: Linear             # weight [D, C*P*P] in (c, ky, kx) order
    prefix_tokens: torch.Tensor     # [n_prefix, D], position embedding already added
    pos_patches: torch.Tensor       # [n_patches, D]
    blocks: list[Block]
    final_norm: Norm | None
    pool: tuple[str, ...] = ("cls",)  # each entry: 'cls', 'token<i>' or 'mean'
    head: Linear | None = None
    pooled_output: bool = False     # headless: output the pooled features [B, len(pool)*D], not the tokens
    pre_norm: Norm | None = None    # a LayerNorm on the embedded tokens before the first block (CLIP)
    act: str = "gelu"               # the MLP activation: a name in ops.ACTIVATIONS (exact erf GELU by default)
    family: str = "vit"
    source_class: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.patch_embed.weight.shape[0]

    @property
    def num_prefix(self) -> int:
        return self.prefix_tokens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.pos_patches.shape[0]

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, self.in_chans, *self.image_size)


#: families whose head projects into an embedding space instead of classifying (CLIP's ``image_embeds``)
EMBEDDING_HEAD_FAMILIES = ("hf-clip-projection",)


def check_input(spec: ViTSpec, images: torch.Tensor) -> None:
    """Raise a clear error unless ``images`` is a float ``[B, C, H, W]`` batch this spec takes."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor image batch, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images (normalised as the float model expects), got {images.dtype}")
    want = (spec.in_chans, *spec.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"expected images of shape [B, {want[0]}, {want[1]}, {want[2]}], got {list(images.shape)}: the "
            f"model is set up for {want[1]}x{want[2]} images of {want[0]} channel{'s' if want[0] != 1 else ''}")


def check_spec(spec: ViTSpec) -> None:
    """Refuse a spec whose structure is inconsistent (a damaged file, a hand-built spec): one ``ValueError``
    naming the field. Pool entries must be ``cls``, ``mean`` or ``token<i>`` with ``i`` a prefix token."""
    d, p = spec.dim, spec.patch_size
    if p < 1 or any(side < p or side % p for side in spec.image_size):
        raise ValueError(f"image size {spec.image_size} is not a positive multiple of the patch size {p}")
    patches = (spec.image_size[0] // p) * (spec.image_size[1] // p)
    if tuple(spec.pos_patches.shape) != (patches, d):
        raise ValueError(f"position embeddings have shape {tuple(spec.pos_patches.shape)}, expected {(patches, d)}")
    if spec.prefix_tokens.dim() != 2 or spec.prefix_tokens.shape[1] != d:
        raise ValueError(f"prefix tokens have shape {tuple(spec.prefix_tokens.shape)}, expected [n, {d}]")
    if tuple(spec.patch_embed.weight.shape) != (d, spec.in_chans * p * p):
        raise ValueError(f"patch embedding weight has shape {tuple(spec.patch_embed.weight.shape)}, "
                         f"expected {(d, spec.in_chans * p * p)}")
    for i, blk in enumerate(spec.blocks):
        if blk.num_heads < 1 or d % blk.num_heads:
            raise ValueError(f"block {i}: {blk.num_heads} heads do not divide the hidden size {d}")
    valid = {"cls", "mean"} | {f"token{k}" for k in range(spec.num_prefix)}
    bad = [item for item in spec.pool if item not in valid]
    if not spec.pool or bad:
        raise ValueError(f"pooling {list(spec.pool)} is not a list of {sorted(valid)}")
    if spec.act not in ACTIVATIONS:
        raise ValueError(f"activation {spec.act!r} is not one of {', '.join(ACTIVATIONS)}")
    if spec.head is not None and spec.pooled_output:
        raise ValueError("pooled_output is for headless models: a model with a head outputs its logits")
    if spec.head is not None and spec.head.weight.shape[1] != len(spec.pool) * d:
        raise ValueError(f"the head reads {spec.head.weight.shape[1]} features, pooling gives {len(spec.pool) * d}")


def _identity(name: str, x: torch.Tensor) -> torch.Tensor:
    return x


def _weight(name: str, w: torch.Tensor) -> torch.Tensor:
    return w


def _linear(x, lin: Linear, name: str, wfn: WeightFn):
    return F.linear(x, wfn(name, lin.weight), lin.bias)


def pool_tokens(spec: ViTSpec, h: torch.Tensor) -> torch.Tensor:
    parts = []
    for item in spec.pool:
        if item == "cls":
            parts.append(h[:, 0])
        elif item.startswith("token"):
            parts.append(h[:, int(item[5:])])
        elif item == "mean":
            parts.append(h[:, spec.num_prefix:].mean(dim=1))
        else:
            raise ValueError(f"unknown pooling {item!r}")
    return torch.cat(parts, dim=-1)


def float_forward(spec: ViTSpec, images: torch.Tensor, hook: Hook = _identity,
                  wfn: WeightFn = _weight) -> torch.Tensor:
    """Reference float forward; returns logits, or without a head the tokens ``[B, T, D]`` (the pooled
    features ``[B, len(pool)·D]`` when ``spec.pooled_output``)."""
    b = images.shape[0]
    x = hook("input", images)
    tok = _linear(patchify(x, spec.patch_size), spec.patch_embed, "patch_embed", wfn)
    tok = tok + spec.pos_patches
    h = torch.cat([spec.prefix_tokens.expand(b, -1, -1), tok], dim=1)
    h = hook("embed", h)
    if spec.pre_norm is not None:
        n = spec.pre_norm
        h = hook("norm_pre", F.layer_norm(h, (spec.dim,), n.weight, n.bias, n.eps))
    for i, blk in enumerate(spec.blocks):
        p = f"blocks.{i}."
        a = hook(p + "norm1", F.layer_norm(h, (spec.dim,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps))
        qkv = _linear(a, blk.qkv, p + "qkv", wfn)
        t, d, nh = h.shape[1], spec.dim, blk.num_heads
        q, k, v = (hook(p + n, y) for n, y in zip(("q", "k", "v"), qkv.split(d, dim=-1)))
        q, k, v = (y.reshape(b, t, nh, d // nh).transpose(1, 2) for y in (q, k, v))
        logits = hook(p + "logits", (q @ k.transpose(-1, -2)) / math.sqrt(d // nh))
        ctx = hook(p + "ctx", torch.softmax(logits, dim=-1) @ v)
        ctx = ctx.transpose(1, 2).reshape(b, t, d)
        h = hook(p + "resid1", h + _linear(ctx, blk.proj, p + "proj", wfn))
        a = hook(p + "norm2", F.layer_norm(h, (d,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps))
        f = hook(p + "fc1", _linear(a, blk.fc1, p + "fc1", wfn))
        g = hook(p + "gelu", F.gelu(f) if spec.act == "gelu" else ACTIVATIONS[spec.act](f))
        h = hook(p + "resid2", h + _linear(g, blk.fc2, p + "fc2", wfn))
    if spec.final_norm is not None:
        n = spec.final_norm
        h = hook("norm", F.layer_norm(h, (spec.dim,), n.weight, n.bias, n.eps))
    if spec.head is None:
        return pool_tokens(spec, h) if spec.pooled_output else h
    return _linear(pool_tokens(spec, h), spec.head, "head", wfn)


def quant_points(spec: ViTSpec) -> list[tuple[str, int]]:
    """Every activation quantization point ``(name, bits)`` in forward order."""
    pts = [("input", 8), ("embed", 16)] + ([("norm_pre", 16)] if spec.pre_norm is not None else [])
    for i in range(len(spec.blocks)):
        p = f"blocks.{i}."
        pts += [(p + "norm1", 8), (p + "q", 8), (p + "k", 8), (p + "v", 8), (p + "logits", 16),
                (p + "ctx", 8), (p + "resid1", 16), (p + "norm2", 8), (p + "fc1", 8),
                (p + "gelu", 8), (p + "resid2", 16)]
    if spec.final_norm is not None:
        pts.append(("norm", 8))
    return pts


def select_by_patterns(patterns, names: list[str], what: str, noun: str, explain: str) -> list[str]:
    """The ``names`` matching any glob in ``patterns``, in ``names``' order. A pattern that matches none
    is a ``ValueError``: "``what`` pattern P matches no ``noun``; those are … (``explain``)" — except ``"*"``,
    "every one there is", which on no names is none (a default such as ``zero_points=("*",)`` on a model
    without such points)."""
    import fnmatch
    if isinstance(patterns, str):
        patterns = (patterns,)
    chosen = set()
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits and not (pat == "*" and not names):
            shown = f"{', '.join(names[:5])}, … {names[-1]}" if len(names) > 6 else ", ".join(names) or "none"
            raise ValueError(f"{what} pattern {pat!r} matches no {noun}; those are {shown} ({explain})")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def stream_start(spec: ViTSpec) -> str:
    """The quant point where the 16-bit residual stream starts: the pre-LayerNorm's output where the model has
    one (``norm_pre``), else the embedded tokens (``embed``)."""
    return "norm_pre" if spec.pre_norm is not None else "embed"


def layernorm_at(spec: ViTSpec, norm_point: str) -> Norm:
    """The LayerNorm whose output is the quant point ``norm_point`` (``blocks.i.norm1``/``norm2``, ``norm``,
    ``norm_pre``)."""
    if norm_point == "norm":
        return spec.final_norm
    if norm_point == "norm_pre":
        return spec.pre_norm
    _, index, which = norm_point.split(".")
    return getattr(spec.blocks[int(index)], which)


def layernorm_input_point(spec: ViTSpec, norm_point: str) -> str:
    """The 16-bit quant point a LayerNorm reads: ``blocks.i.norm1`` reads the previous block's ``resid2`` (the
    stream's start for block 0: ``stream_start``), ``blocks.i.norm2`` reads ``blocks.i.resid1``, ``norm`` the last
    stream, ``norm_pre`` the embedded tokens."""
    if norm_point == "norm_pre":
        return "embed"
    if norm_point == "norm":
        return f"blocks.{len(spec.blocks) - 1}.resid2" if spec.blocks else stream_start(spec)
    _, index, which = norm_point.split(".")
    if which == "norm2":
        return f"blocks.{index}.resid1"
    return f"blocks.{int(index) - 1}.resid2" if int(index) else stream_start(spec)


def linear_layers(spec: ViTSpec) -> dict[str, Linear]:
    """Every weight-bearing layer by name (the names ``wfn`` sees)."""
    out = {"patch_embed": spec.patch_embed}
    for i, blk in enumerate(spec.blocks):
        for n in ("qkv", "proj", "fc1", "fc2"):
            out[f"blocks.{i}.{n}"] = getattr(blk, n)
    if spec.head is not None:
        out["head"] = spec.head
    return out
