"""Errors raised by adapters, and the check that every layer is one intvit knows."""
from __future__ import annotations

from torch import nn


class UnsupportedModelError(ValueError):
    """The model (or one of its modules, named by path and type) cannot be quantized."""


# Leaf modules an adapter maps onto the integer graph (or that are no-ops at inference).
SUPPORTED_LEAVES = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Dropout, nn.Identity, nn.GELU, nn.ReLU, nn.SiLU,
                    nn.Embedding)
SUPPORTED_LEAF_NAMES = {"GELUActivation", "NewGELUActivation", "GELUTanh", "FastGELUActivation", "QuickGELUActivation",
                        "SiLUActivation", "QuickGELU", "GELU", "Dinov2LayerScale", "Dinov2WithRegistersLayerScale",
                        "Dinov2WithRegistersDropPath", "Dinov2DropPath", "DropPath", "LayerScale"}


def check_leaf_modules(model: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """Raise ``UnsupportedModelError`` naming the first leaf module intvit cannot lower."""
    for path, mod in model.named_modules():
        if any(path == s or path.startswith(s + ".") for s in skip):
            continue
        if list(mod.children()) or (isinstance(mod, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and not len(mod)):
            continue                                # a container, or an emptied one (a removed head)
        if isinstance(mod, SUPPORTED_LEAVES) or type(mod).__name__ in SUPPORTED_LEAF_NAMES:
            continue
        raise UnsupportedModelError(
            f"module '{path}' of type {type(mod).__name__} is not supported by intvit; "
            "supported layers: Linear, patch Conv2d, LayerNorm, GELU (and its tanh and quick forms), ReLU, SiLU, "
            "Dropout/DropPath, LayerScale")
