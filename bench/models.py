"""The float models ``intvit bench`` measures: named shapes, the embedded model, or a float ViT ONNX file.

Named models are real Hugging Face ``ViTForImageClassification`` architectures
of the published shapes with seeded random weights (nothing is downloaded;
latency does not depend on the weights' values). ``fmnist`` is the embedded
trained Fashion-MNIST ViT. A path ending in ``.onnx`` is rebuilt as the HF
model it was exported from (``bench.onnx_vit``); its float backends run the
file itself. Calibration images (16) are random for every model but
``fmnist``: they set intvit's and ORT's quantization scales, which change
accuracy, not latency.
"""
from __future__ import annotations

import dataclasses
import os

import torch

SHAPES = {  # name: (image, patch, dim, layers, heads, mlp, labels)
    "tiny": (32, 8, 64, 2, 4, 128, 10),
    "deit_tiny": (224, 16, 192, 12, 3, 768, 1000),
    "deit_small": (224, 16, 384, 12, 6, 1536, 1000),
    "vit_base": (224, 16, 768, 12, 12, 3072, 1000),
}
NAMES = ("deit_tiny", "deit_small", "vit_base", "tiny", "fmnist")


class UnknownBenchModelError(ValueError):
    """Neither a known model name nor a path ending in .onnx."""


@dataclasses.dataclass
class BenchModel:
    name: str                       # as given on the command line
    model: torch.nn.Module          # the float HF model, eval mode
    calib: torch.Tensor             # [16, C, H, W] float32 calibration images
    channels: int
    image: int
    description: str
    onnx_path: str | None = None    # the user's float ONNX file, run as given by the ONNX backends
    input_name: str = "pixel_values"
    fixed_batch: int | None = None  # the ONNX file's batch size when it is not symbolic

    @property
    def label(self) -> str:
        return os.path.basename(self.name)


def is_onnx_path(name: str) -> bool:
    return name.endswith(".onnx") or os.sep in name


def check_model_name(name: str) -> None:
    """Raise ``UnknownBenchModelError`` unless ``name`` is a known model or looks like an ONNX path."""
    if name not in NAMES and not is_onnx_path(name):
        raise UnknownBenchModelError(f"unknown model {name!r}; choose one of {list(NAMES)} or give the path "
                                     "of a float ViT .onnx file")


def _random_images(n, channels, image):
    return torch.randn(n, channels, image, image, generator=torch.Generator().manual_seed(1))


def build_model(name: str) -> BenchModel:
    """The float model named ``name`` (see the module docstring); raises ``ValueError`` on a bad name or file."""
    check_model_name(name)
    if is_onnx_path(name):
        from .onnx_vit import load_float_vit
        fv = load_float_vit(name)
        cfg = fv.model.config
        return BenchModel(name, fv.model, _random_images(16, fv.channels, fv.image), fv.channels, fv.image,
                          f"{name}: float ViT rebuilt from ONNX ({cfg.hidden_size}-d, {cfg.num_hidden_layers} "
                          f"layers, {cfg.num_attention_heads} heads, {fv.image} px)",
                          onnx_path=os.path.abspath(name), input_name=fv.input_name, fixed_batch=fv.fixed_batch)
    if name == "fmnist":
        from ..models import fmnist
        return BenchModel(name, fmnist.load_model(), fmnist.load_calibration_set(16), 1, 28,
                          "embedded Fashion-MNIST ViT (trained weights, 28 px, 1 channel)")
    from transformers import ViTConfig, ViTForImageClassification
    image, patch, dim, layers, heads, mlp, labels = SHAPES[name]
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=image, patch_size=patch, hidden_size=dim, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=mlp, num_labels=labels)).eval()
    return BenchModel(name, model, _random_images(16, 3, image), 3, image,
                      f"HF ViT with random weights: {dim}-d, {layers} layers, {heads} heads, MLP {mlp}, "
                      f"{image} px, patch {patch}, {labels} classes")
