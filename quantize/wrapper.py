"""Quantizing the backbone inside a user's own module.

A user's model often wraps a supported backbone (``self.backbone =
Dinov2Model(...)``) with its own pooling and head. ``intvit.quantize`` then
quantizes just the backbone: it runs the user's forward over the calibration
data, captures the tensors that actually reach the backbone (so any
preprocessing the wrapper does is respected), calibrates on those, and swaps
in an ``IntegerBackbone`` that answers like the Hugging Face module did
(``.last_hidden_state``, ``.pooler_output``, tuple indexing).
"""
from __future__ import annotations

import torch
from torch import nn

from ..calibration.data import CalibrationDataError, iter_batches


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
                        f"{type(model).__name__}.forward never called its backbone on a calibration batch")
                seen += captured[-1].shape[0]
                if max_images is not None and seen >= max_images:
                    break
    finally:
        handle.remove()
    return captured


class IntegerBackbone(nn.Module):
    """Drop-in replacement for a Hugging Face backbone, running the integer model."""

    def __init__(self, integer_model: nn.Module):
        super().__init__()
        self.integer_model = integer_model

    def save(self, path, include_float: bool = False) -> None:
        """The backbone's integer model to one file (``IntegerViT.save``)."""
        self.integer_model.save(path, include_float=include_float)

    def export_onnx(self, path, integer_input: bool = False) -> str:
        """The backbone's integer ONNX graph (``IntegerViT.export_onnx``)."""
        return self.integer_model.export_onnx(path, integer_input=integer_input)

    def forward(self, pixel_values=None, *args, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        tokens = self.integer_model(pixel_values)
        if self.integer_model.has_head:
            return tokens
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens[:, 0])
