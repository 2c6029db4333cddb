"""What an image goes through before the model, recorded when quantizing and carried to every later step.

``x = (pixels / 255 − mean) / std`` per channel, at the model's input size
and channel count, plus the class names of the output. ``quantize`` records
it in ``meta["preprocessing"]`` from ``QuantConfig(mean=, std=, labels=)``,
else from the model: a timm model's ``pretrained_cfg`` (mean, std), a Hugging
Face model's ``config.id2label`` (labels, unless they are the generic
``LABEL_i``). The integer ONNX carries it as the metadata property
``intvit.preprocessing``, ``intvit compile`` copies it into the sidecar, and
``intvit run`` uses it by default and prints label names. So the numbers a
model was calibrated with are the ones an image is run with.

``check_calibration_scale`` guards the other end: float calibration images
that still look like 0–255 pixels are warned about (``calibration.data``
refuses uint8 ones).
"""
from __future__ import annotations

import json
import math
import warnings

import torch

from ..calibration.data import check_mean_std

METADATA_KEY = "intvit.preprocessing"
UNNORMALISED_MAX = 20.0      # non-negative images above this were not divided by 255 (normalised ones stay far below)


def resolve(config, model, channels: int, classes: int | None = None) -> dict:
    """The preprocessing to record: ``config``'s mean/std/labels where given, else what ``model`` says.

    ``classes`` is the model's number of output classes (None when it has no head): a label list of
    another length is refused; a mean above 1 (the 0–255 scale: it applies after ``/255``) is refused too, since ``intvit run`` would normalise every image with it."""
    prep = {}
    mean, std = config.mean, config.std
    if mean is None and std is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean"), cfg.get("std")
    if (mean is None) != (std is None):
        raise ValueError("QuantConfig: give both mean and std (per channel, after /255), or neither")
    if mean is not None:
        prep["mean"], prep["std"] = check_mean_std(mean, std, channels)     # one rule with load_image
    labels = list(config.labels) if config.labels is not None else model_labels(model)
    if labels and config.labels is not None and classes != len(labels):
        raise ValueError(f"QuantConfig(labels=...) names {len(labels)} classes, the model "
                         + (f"outputs {classes}" if classes else "has no classifier head") +
                         "; give one name per output class, in order")
    if labels:
        prep["labels"] = [str(label) for label in labels]
    return prep


def model_labels(model) -> list[str] | None:
    """A Hugging Face model's ``config.id2label`` in class order, unless it holds only ``LABEL_i`` names."""
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not id2label:
        return None
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return None if all(label == f"LABEL_{i}" for i, label in enumerate(labels)) else labels


def to_metadata(prep: dict) -> str:
    return json.dumps(prep, sort_keys=True)


def from_metadata(text: str | None) -> dict | None:
    """The recorded preprocessing from its JSON (ONNX metadata or sidecar); None when absent or malformed."""
    if not text:
        return None
    try:
        prep = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(prep, dict):
        return None
    ok = all(isinstance(prep.get(k), list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   and math.isfinite(v) for v in prep[k])
             for k in ("mean", "std") if k in prep)
    # a mean needs its std (and the reverse), one value per channel each, and no std of 0
    ok = ok and ("mean" in prep) == ("std" in prep) and (
        "std" not in prep or (len(prep["mean"]) == len(prep["std"]) and all(v > 0 for v in prep["std"])))
    ok = ok and ("labels" not in prep or (isinstance(prep["labels"], list)
                                          and all(isinstance(v, str) for v in prep["labels"])))
    return prep if ok else None


def check_calibration_scale(batch: torch.Tensor, prep: dict | None = None) -> None:
    """Warn about calibration images that look like raw 0–255 pixels (``calibration.data`` refuses uint8 ones)."""
    expected = (f"(x / 255 − {prep['mean']}) / {prep['std']}" if prep and "mean" in prep
                else "(x / 255 − mean) / std with the model's own mean and std")
    if batch.is_floating_point() and batch.numel() and float(batch.min()) >= 0 \
            and float(batch.max()) > UNNORMALISED_MAX:
        warnings.warn(f"calibration images range over [{float(batch.min()):g}, {float(batch.max()):g}], like raw "
                      f"0–255 pixels; the float model expects {expected}", stacklevel=3)
