"""intvit.models: adapters from users' float ViTs to the canonical ``ViTSpec``."""
from __future__ import annotations

from torch import nn

from .errors import UnsupportedModelError
from .spec import ViTSpec, float_forward


def _adapters():
    from . import hf, timm_tv
    return {**hf.ADAPTERS, **timm_tv.ADAPTERS}


def _key(model) -> str:
    """Hugging Face classes by name; timm/torchvision ones (both have a ``VisionTransformer``) by
    ``library.ClassName``."""
    library = type(model).__module__.split(".")[0]
    name = type(model).__name__
    return f"{library}.{name}" if library in ("timm", "torchvision") else name


def is_supported(model: nn.Module) -> bool:
    return _key(model) in _adapters()


def to_spec(model: nn.Module, image_size=None) -> ViTSpec:
    """Convert a supported float model to a ``ViTSpec``; a clear error otherwise."""
    if isinstance(model, ViTSpec):
        return model
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    devices = {p.device.type for p in model.parameters()}
    if "meta" in devices:
        raise UnsupportedModelError(f"{type(model).__name__}'s weights are on the meta device (not loaded yet); "
                                    "load them before quantizing")
    if devices - {"cpu"}:
        raise UnsupportedModelError(f"{type(model).__name__} is on {', '.join(sorted(devices - {'cpu'}))}; intvit "
                                    "calibrates on the CPU: pass model.cpu()")
    adapter = _adapters().get(_key(model))
    if adapter is None:
        found = find_backbones(model)
        hint = (f"; it contains a supported backbone at '{found[0][0]}' — pass the wrapper to "
                "intvit.quantize to quantize that backbone and keep your head") if found else ""
        raise UnsupportedModelError(
            f"model of type {type(model).__name__} is not supported; supported: "
            f"{', '.join(sorted(_adapters()))}{hint}")
    return adapter(model, image_size=image_size)


def find_backbones(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Supported submodules (not the root), outermost first, for wrapper models."""
    found = []
    for path, mod in model.named_modules():
        if path and is_supported(mod) and not any(path.startswith(p + ".") for p, _ in found):
            found.append((path, mod))
    return found


__all__ = ["UnsupportedModelError", "ViTSpec", "float_forward", "find_backbones", "is_supported",
           "to_spec"]
