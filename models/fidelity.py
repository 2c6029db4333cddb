"""Does a ``ViTSpec`` compute what its source model computes? Checked before anything is quantized.

An adapter reads a model's modules by name; a layer it does not know about
(a norm timm adds with one flag, a forward hook, a head of another shape)
would otherwise be skipped without a word, and the "quantized" model would be
a quantization of another function. ``check_spec_reproduces`` runs the source
model and ``float_forward(spec)`` on a few of the user's own images and
refuses a spec whose output differs by more than float rounding:

    err = ‖spec(x) − model(x)‖₂ / ‖model(x)‖₂ ≤ SPEC_TOLERANCE

It also measures what the integer LayerNorm leaves out: I-LayerNorm (I-ViT
§3.5, ``ops.int_layernorm``) has no ε, so the same forward with every ε set
to 0 (float32's smallest normal, so a constant row stays 0) must stay within
``EPS_TOLERANCE`` of the true one; a model whose ε is not small against its
own token variances (ε = 1e-2, say) is refused, since its integer model
could not follow it.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
from torch import nn

from .errors import UnsupportedModelError
from .modes import eval_mode
from .spec import ViTSpec, float_forward

SPEC_TOLERANCE = 1e-3        # float32 rounding through a deep model stays below 1e-5 (adapter tests)
EPS_TOLERANCE = 1e-2         # an ε this large moves the float output by 1 %: the integer model would not follow
CHECK_IMAGES = 2
#: the output field a Hugging Face family's spec stands for, where it is not ``logits`` / ``last_hidden_state``
OUTPUT_FIELDS = {"hf-clip": "pooler_output", "hf-clip-projection": "image_embeds"}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``‖got − want‖₂ / ‖want‖₂`` (the absolute error where ``want`` is all zeros)."""
    got, want = got.detach(), want.detach()
    diff = float(torch.linalg.vector_norm((got - want).double()))
    norm = float(torch.linalg.vector_norm(want.double()))
    return diff / norm if norm > 0 else diff


def source_output(model: nn.Module, images: torch.Tensor, spec: ViTSpec) -> torch.Tensor:
    """What ``model`` answers on ``images``, as the tensor the spec's output stands for: the tensor itself
    (timm, torchvision), or a Hugging Face output's field (``OUTPUT_FIELDS``, else ``logits`` /
    ``last_hidden_state``)."""
    kwargs = {}
    if spec.family in ("hf-vit", "hf-deit", "hf-deit-distilled", "hf-clip", "hf-clip-projection"):
        base = getattr(model, "config", None)
        size = getattr(base, "image_size", None)
        if size is not None and tuple(spec.image_size) != ((size, size) if isinstance(size, int) else tuple(size)):
            kwargs["interpolate_pos_encoding"] = True     # the adapter resolved the position grid the same way
    out = model(images, **kwargs)
    if isinstance(out, torch.Tensor):
        return out
    for name in (OUTPUT_FIELDS.get(spec.family, "logits"), "logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"{type(model).__name__} returned {type(out).__name__}, not a tensor or model output")


@torch.no_grad()
def check_spec_reproduces(model: nn.Module, spec: ViTSpec, images: torch.Tensor) -> float:
    """Refuse (``UnsupportedModelError``) a spec that does not reproduce ``model`` on ``images`` or whose
    LayerNorm ε the integer LayerNorm could not leave out; returns the spec's relative error.

    The source model runs in eval mode, as float32 (a float32 copy when it is held in another type); the
    caller's model is left in the modes it had.
    """
    images = images[:CHECK_IMAGES].float()
    reference = model
    if any(p.dtype != torch.float32 for p in model.parameters()):
        reference = copy.deepcopy(model).float()
    try:
        with eval_mode(reference):
            want = source_output(reference, images, spec)
    except Exception as exc:                        # noqa: BLE001 — a model we cannot run is not a verdict
        warnings.warn(f"could not run {type(model).__name__} to check intvit's reading of it ({type(exc).__name__}: "
                      f"{exc}); quantizing without that check", UserWarning, stacklevel=3)
        return float("nan")
    got = float_forward(spec, images)
    if not (bool(torch.isfinite(want).all()) and bool(torch.isfinite(got).all())):
        return float("nan")                         # calibration names the point where NaN/inf appears
    name = type(model).__name__
    if tuple(got.shape) != tuple(want.shape):
        raise UnsupportedModelError(
            f"{name} answers with shape {list(want.shape)}, intvit's reading of it with {list(got.shape)}: the "
            "model holds something the adapter does not map (a replaced head or pooling?); nothing was quantized")
    err = relative_error(got, want.float())
    if not err <= SPEC_TOLERANCE:
        hooks = _hooked_modules(model)
        cause = (f"forward hooks on {', '.join(hooks[:3])} change what it computes, and intvit cannot carry hooks "
                 "into the integer graph; remove them or fold what they do into the weights or the inputs") if hooks \
            else ("it holds a layer or option the adapter does not map; please report the model's class and "
                  "configuration")
        raise UnsupportedModelError(
            f"intvit's reading of {name} does not reproduce it: relative error {err:.3g} on {images.shape[0]} "
            f"calibration image(s), float rounding stays below {SPEC_TOLERANCE:g}. {cause[0].upper()}{cause[1:]}; "
            "nothing was quantized")
    eps_err = relative_error(float_forward(_without_eps(spec), images), got)
    if not eps_err <= EPS_TOLERANCE:
        eps = sorted({n.eps for n in _norms(spec)})
        raise UnsupportedModelError(
            f"{name}'s LayerNorm eps ({', '.join(f'{e:g}' for e in eps)}) is not small against its activations: "
            f"leaving it out, as the integer LayerNorm (I-ViT) does, moves the float output by {100 * eps_err:.2g} %; "
            "intvit supports models whose eps is negligible (1e-5 or 1e-6, as trained ViTs use)")
    return err


def _norms(spec: ViTSpec):
    if spec.pre_norm is not None:
        yield spec.pre_norm
    for block in spec.blocks:
        yield block.norm1
        yield block.norm2
    if spec.final_norm is not None:
        yield spec.final_norm


def _without_eps(spec: ViTSpec) -> ViTSpec:
    """``spec`` with every LayerNorm's ε at float32's smallest normal number: none, except that a row of equal
    values stays 0 instead of 0/0 (the integer LayerNorm's ``max(σ, 1)``). The weights are shared."""
    tiny = float(torch.finfo(torch.float32).tiny)
    zero = lambda norm: dataclasses.replace(norm, eps=tiny)          # noqa: E731
    blocks = [dataclasses.replace(b, norm1=zero(b.norm1), norm2=zero(b.norm2)) for b in spec.blocks]
    return dataclasses.replace(spec, blocks=blocks,
                               final_norm=None if spec.final_norm is None else zero(spec.final_norm),
                               pre_norm=None if spec.pre_norm is None else zero(spec.pre_norm))


def _hooked_modules(model: nn.Module) -> list[str]:
    """Paths of the modules with forward or forward-pre hooks (``'model'`` for the root)."""
    return [path or "the model" for path, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
