"""Quantizing the backbone inside a user's own module.

A user's model often wraps a supported backbone (``self.backbone =
Dinov2Model(...)``) with its own pooling and head. ``intvit.quantize`` then
quantizes just the backbone: it runs the user's forward over the calibration
data, captures the tensors that actually reach the backbone (so any
preprocessing the wrapper does is respected), calibrates on those, and swaps
in an ``IntegerBackbone`` that answers like the Hugging Face module did
(``.last_hidden_state``, ``.pooler_output``, tuple indexing).

``pooler_output`` is what the source module returns there: DINOv2's is its
final-LayerNorm class token (integer, like the tokens); ViT's and DeiT's
pooler is ``tanh(dense(class token))``, which intvit keeps in float: it runs in
float32 on the dequantized class token, outside the integer graph (not in the
exported ONNX or the compiled module), and ``IntegerBackbone.float_modules``
names it; a ViT/DeiT built with ``add_pooling_layer=False`` returns None.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..calibration.data import CalibrationDataError, iter_batches
from ..models import UnsupportedModelError
from ..models.modes import eval_mode


class _Captured(Exception):
    pass


def capture_backbone_inputs(model: nn.Module, backbone: nn.Module, calib_data, batch_size: int = 32,
                            max_images: int | None = None) -> list[torch.Tensor]:
    """Run ``model`` on the calibration data and return what reached ``backbone``."""
    captured: list[torch.Tensor] = []

    def pre_hook(module, args, kwargs):
        x = kwargs.get("pixel_values", args[0] if args else None)
        if not isinstance(x, torch.Tensor):
            raise CalibrationDataError("the backbone was called without an image tensor")
        check_call_options(type(model).__name__, args[1:], {k: v for k, v in kwargs.items() if k != "pixel_values"})
        captured.append(x.detach().clone())
        raise _Captured

    handle = backbone.register_forward_pre_hook(pre_hook, with_kwargs=True)
    seen = 0
    try:
        with torch.no_grad():
            for batch in iter_batches(calib_data, batch_size):
                try:
                    model(batch)
                except _Captured:
                    pass
                else:
                    raise CalibrationDataError(
                        f"{type(model).__name__}.forward never called its backbone ({type(backbone).__name__}) on a "
                        "calibration batch; intvit replaces the backbone's forward, so call the backbone module "
                        "itself (not, say, its forward_features)")
                seen += captured[-1].shape[0]
                if max_images is not None and seen >= max_images:
                    break
    finally:
        handle.remove()
    return captured


def _shapes(value):
    """The structure of a module's answer with every tensor replaced by its shape (for comparing answers)."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):                  # Hugging Face ModelOutput is an OrderedDict
        return {k: _shapes(v) for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return [_shapes(v) for v in value]
    return type(value).__name__


def check_wrapped_answers(model: nn.Module, wrapped: nn.Module, images: torch.Tensor, answers: str) -> None:
    """Run the user's module and its quantized copy on ``images``: the copy must run and answer with tensors of
    the same shapes. A module that reads what the integer backbone does not compute (CLIP's tokens, say)
    fails here, with ``answers`` (what the integer backbone returns) in the message, instead of later."""
    owner = type(model).__name__
    with torch.no_grad(), eval_mode(model, wrapped):
        want = model(images)
        try:
            got = wrapped(images)
        except Exception as exc:                # noqa: BLE001 — any failure here is the user's module on ours
            raise UnsupportedModelError(
                f"{owner} does not run on its quantized backbone ({type(exc).__name__}: {exc}); the integer "
                f"backbone answers with {answers}") from None
    if _shapes(got) != _shapes(want):
        raise UnsupportedModelError(
            f"{owner} answers with {_shapes(got)} on its quantized backbone but {_shapes(want)} on the float one; "
            f"the integer backbone answers with {answers}, so read that")


def backbone_answers(spec) -> str:
    """What an ``IntegerBackbone`` over ``spec`` returns, in words (``IntegerBackbone.forward``)."""
    if spec.family == "hf-clip-projection":
        return "image_embeds only (CLIP's tokens are not computed)"
    if spec.family == "hf-clip":
        return "pooler_output only (CLIP's tokens are not computed)"
    if not spec.family.startswith("hf-"):
        return "a tensor, as the source model returned"
    if spec.head is not None or spec.pooled_output:
        return "an output with .logits"
    return "last_hidden_state and pooler_output"


#: keyword values a backbone call may carry: the integer backbone answers them as the float one did (its
#: position embeddings are already resolved for the size it was quantized at)
_NEUTRAL_OPTIONS = {"return_dict": (None, True), "output_hidden_states": (None, False),
                    "output_attentions": (None, False), "interpolate_pos_encoding": (None, False, True),
                    "bool_masked_pos": (None,), "head_mask": (None,)}


def check_call_options(owner: str, extra_args: tuple, options: dict) -> None:
    """Refuse a backbone call whose extra arguments ask for something the integer backbone does not return
    (hidden states of every layer, attention maps, masks): the user's code would fail, or be wrong, later."""
    if extra_args:
        raise UnsupportedModelError(f"{owner} calls its backbone with {len(extra_args)} positional argument(s) "
                                    "after the images; the integer backbone takes the images only")
    for key, value in options.items():
        if key not in _NEUTRAL_OPTIONS or not any(value is v for v in _NEUTRAL_OPTIONS[key]):
            raise UnsupportedModelError(
                f"{owner} calls its backbone with {key}={value!r}; the integer backbone returns the last hidden "
                "state (and pooler output, or the logits) only, so call it with the images alone")


def float_pooler_of(backbone: nn.Module) -> nn.Module | None:
    """The HF ViT/DeiT pooler (``dense`` + ``tanh``) of ``backbone``, or None (DINOv2, or built without one)."""
    pooler = getattr(backbone, "pooler", None)
    return pooler if isinstance(pooler, nn.Module) else None


def warn_float_pooler(backbone: nn.Module, wrapped: bool) -> None:
    """Say once per quantize that a ViT/DeiT pooler is not in the integer graph, and where it runs instead."""
    if float_pooler_of(backbone) is None:
        return
    name = type(backbone).__name__
    where = ("pooler_output is computed in float32 from the integer tokens (IntegerBackbone.float_modules); "
             "it is not in the exported ONNX or the compiled module") if wrapped else \
        ("the integer model returns last_hidden_state only; to keep pooler_output, quantize a module that wraps "
         f"the {name} (its pooler then runs in float32 on the integer tokens)")
    warnings.warn(f"{name}.pooler (dense + tanh) stays float: {where}. Build the model with "
                  "add_pooling_layer=False if nothing reads pooler_output.", UserWarning, stacklevel=3)


class IntegerBackbone(nn.Module):
    """Drop-in replacement for a Hugging Face backbone, running the integer model.

    Called as the backbone was, it returns the head's logits (a model with a head) or a
    ``BaseModelOutputWithPooling`` whose ``last_hidden_state`` is the dequantized integer tokens and whose
    ``pooler_output`` follows the source model (module docstring).
    """

    def __init__(self, integer_model: nn.Module, pooler: nn.Module | None = None):
        super().__init__()
        self.integer_model = integer_model
        self.pooler = copy.deepcopy(pooler) if pooler is not None else None

    @property
    def float_modules(self) -> list[str]:
        """The submodules that run in float outside the integer graph."""
        return ["pooler"] if self.pooler is not None else []

    def save(self, path, include_float: bool = False) -> None:
        """The backbone's integer model to one file (``IntegerViT.save``)."""
        self.integer_model.save(path, include_float=include_float)

    def export_onnx(self, path, integer_input: bool = False) -> str:
        """The backbone's integer ONNX graph (``IntegerViT.export_onnx``)."""
        return self.integer_model.export_onnx(path, integer_input=integer_input)

    def forward(self, pixel_values=None, *args, **kwargs):
        """Answer as the source backbone did: timm and torchvision models return a tensor (logits, pooled
        features or tokens); a Hugging Face classifier an output with ``.logits``; a Hugging Face base model a
        ``BaseModelOutputWithPooling``; CLIP its ``image_embeds`` (with projection) or ``pooler_output`` only."""
        check_call_options(type(self).__name__, args, kwargs)
        out = self.integer_model(pixel_values)
        spec = self.integer_model.spec
        if not spec.family.startswith("hf-"):
            return out
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        if spec.family == "hf-clip-projection":     # CLIP's image embeddings; its tokens are not computed
            from transformers.models.clip.modeling_clip import CLIPVisionModelOutput
            return CLIPVisionModelOutput(image_embeds=out)
        if spec.family == "hf-clip":
            return BaseModelOutputWithPooling(pooler_output=out)
        if self.integer_model.has_head or spec.pooled_output:
            from transformers.modeling_outputs import ImageClassifierOutput
            return ImageClassifierOutput(logits=out)
        if self.pooler is not None:
            pooled = self.pooler(out)
        elif spec.family == "hf-dinov2":
            pooled = out[:, 0]
        else:
            pooled = None
        return BaseModelOutputWithPooling(last_hidden_state=out, pooler_output=pooled)
