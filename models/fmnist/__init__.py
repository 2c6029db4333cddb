"""Embedded Fashion-MNIST vision transformer and data for offline demos and tests.

This package ships a small, real, FP32 Hugging Face
:class:`transformers.ViTForImageClassification` trained from scratch on
Fashion-MNIST, together with a slice of the dataset, so that the
quantization pipeline can be exercised end to end with no network access.

Shipped files (next to this module):

* ``config.json`` -- the :class:`transformers.ViTConfig` (``config.to_dict()``).
* ``vit_fmnist.safetensors`` -- the model ``state_dict`` in float32.
* ``data.npz`` -- ``test_images`` / ``test_labels`` (the first 2000 images of
  the official test set) and ``calib_images`` / ``calib_labels`` (512 images
  drawn from the train set with a fixed seed), all ``uint8``.

They are produced by::

    python -m intvit.models.fmnist.train --epochs 10 --out <repo>/models/fmnist

Images are preprocessed as ``(uint8 / 255 - MEAN) / STD`` into float32
tensors of shape ``[N, 1, 28, 28]`` (see :func:`preprocess`).

Fashion-MNIST is (c) 2017 Zalando SE, MIT license,
https://github.com/zalandoresearch/fashion-mnist
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "MEAN",
    "STD",
    "CLASS_NAMES",
    "PACKAGE_DIR",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "DATA_FILE",
    "TRAIN_COMMAND",
    "preprocess",
    "load_model",
    "load_test_set",
    "load_calibration_set",
]

#: Mean of Fashion-MNIST train pixels scaled to [0, 1].
MEAN: float = 0.2860
#: Standard deviation of Fashion-MNIST train pixels scaled to [0, 1].
STD: float = 0.3530

#: Class names, indexed by label id (0..9).
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

PACKAGE_DIR: Path = Path(__file__).resolve().parent
CONFIG_FILE: str = "config.json"
WEIGHTS_FILE: str = "vit_fmnist.safetensors"
DATA_FILE: str = "data.npz"
TRAIN_COMMAND: str = "python -m intvit.models.fmnist.train --epochs 10 --out " + str(PACKAGE_DIR)


def _require(name: str) -> Path:
    path = PACKAGE_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"intvit.models.fmnist: shipped file {name!r} is missing (looked for {path}). "
            f"Regenerate the model and data with: {TRAIN_COMMAND}"
        )
    return path


def preprocess(images_uint8: np.ndarray) -> torch.Tensor:
    """Normalize raw Fashion-MNIST images for the model.

    Args:
        images_uint8: ``uint8`` array (or tensor) of shape ``[N, 28, 28]`` or
            ``[N, 1, 28, 28]`` with pixel values in 0..255.

    Returns:
        float32 tensor of shape ``[N, 1, 28, 28]`` equal to
        ``(images / 255 - MEAN) / STD``.
    """
    if isinstance(images_uint8, torch.Tensor):
        x = images_uint8.detach().cpu()
    else:
        x = torch.from_numpy(np.ascontiguousarray(images_uint8))
    if x.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"preprocess expects [N,28,28] or [N,1,28,28], got {tuple(x.shape)}")
    return (x.to(torch.float32) / 255.0 - MEAN) / STD


def load_config():
    """Return the shipped :class:`transformers.ViTConfig`."""
    from transformers import ViTConfig

    with open(_require(CONFIG_FILE), encoding="utf-8") as f:
        cfg = json.load(f)
    return ViTConfig.from_dict(cfg)


def load_model():
    """Load the shipped FP32 ViT classifier, offline.

    Returns:
        :class:`transformers.ViTForImageClassification` in eval mode, float32,
        on CPU. Calling it on ``preprocess(images)`` yields ``.logits`` of
        shape ``[N, 10]``.

    Raises:
        FileNotFoundError: if ``config.json`` or ``vit_fmnist.safetensors`` is
            missing; the message names the file and the training command.
    """
    from safetensors.torch import load_file
    from transformers import ViTForImageClassification

    config = load_config()
    state = load_file(str(_require(WEIGHTS_FILE)))
    model = ViTForImageClassification(config)
    model.load_state_dict(state, strict=True)
    model.to(torch.float32)
    model.eval()
    return model


def _load_npz() -> dict[str, np.ndarray]:
    with np.load(_require(DATA_FILE)) as z:
        return {k: z[k] for k in z.files}


def load_test_set(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the shipped test images (first 2000 of the official test set).

    Args:
        n: if given, only the first ``n`` images (``n <= 2000``).

    Returns:
        ``(images, labels)``: preprocessed float32 ``[n, 1, 28, 28]`` and int64
        ``[n]`` labels.
    """
    d = _load_npz()
    images, labels = d["test_images"], d["test_labels"]
    if n is not None:
        if n < 0 or n > len(images):
            raise ValueError(f"n must be in [0, {len(images)}], got {n}")
        images, labels = images[:n], labels[:n]
    return preprocess(images), torch.from_numpy(labels.astype(np.int64))


def load_calibration_set(n: int | None = None) -> torch.Tensor:
    """Return the shipped calibration images (512 fixed, seeded train images).

    Args:
        n: if given, only the first ``n`` images (``n <= 512``).

    Returns:
        preprocessed float32 tensor ``[n, 1, 28, 28]``.
    """
    images = _load_npz()["calib_images"]
    if n is not None:
        if n < 0 or n > len(images):
            raise ValueError(f"n must be in [0, {len(images)}], got {n}")
        images = images[:n]
    return preprocess(images)
