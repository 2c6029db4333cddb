"""``QuantConfig``: what ``intvit.quantize`` does, with defaults that work."""
from __future__ import annotations

import collections.abc
import numbers
import os
from dataclasses import dataclass

from ..calibration.headroom import DEFAULT as HEADROOM
from ..calibration.observers import OBSERVERS
from ..ops import GELU_MODES


@dataclass
class QuantConfig:
    """Post-training quantization settings.

    recipe:           activation range observer for 8-bit GEMM inputs:
                      'minmax', 'percentile' or 'omse' (the 16-bit residual stream
                      and attention logits always use min-max).
    percentile:       the percentile for recipe='percentile'.
    max_calib_images: images used from the calibration data (at most).
    batch_size:       batch size when the data is one tensor or an .npz.
    image_size:       input size to quantize for (default: the model's own).
    mean, std:        the per-channel normalisation the images get after /255
                      (``(x/255 − mean)/std``), recorded with the model and used by
                      ``intvit run`` (default: a timm model's ``pretrained_cfg``; else none).
    labels:           class names in output order, recorded likewise (default: a Hugging
                      Face model's ``config.id2label``).
    cache_path:       JSON file caching calibration ranges; reused when the model,
                      recipe and data are unchanged.
    progress:         show a progress bar while calibrating.
    attention_temperature: QuantVLA attention temperature matching (ATM): per head, scale
                      the Q·Kᵀ requant so the integer logits' spread matches the float
                      model's (``quantize.scale_matching``).
    output_balance:   QuantVLA output head balancing (OHB): per block, scale each residual
                      branch's requant so its RMS matches the float model's.
    matching_images:  calibration images ATM/OHB measure on (at most).
    int16:            glob patterns of activation points to keep at 16 bits instead of 8
                      (``quantize.layout``), e.g. ``("blocks.0.*", "norm")``; each pattern
                      must match a widenable point.
    gelu:             'table' (default): GELU of the int8 fc1 output as a 256-entry table of the exact
                      GELU, computed when the model is frozen (``ops.gelu_table``); 'shift': I-ViT's
                      ShiftGELU, x·σ(1.702x) with shift-based exponentials (less accurate on real models:
                      ``quantize.attribution``).
    zero_points:      glob patterns of the int8 GEMM inputs that get a zero point (an asymmetric
                      range [lo, hi] mapped onto all 256 levels; ``quantize.layout.zero_point_points``):
                      default every one (per block norm1, ctx, norm2, gelu, the GELU input fc1 when
                      gelu='table', and the final norm);
                      ``()`` keeps I-ViT's symmetric grids. Folded into the requants and biases: the
                      kernels and their cost do not change.
    migration:        glob patterns of the LayerNorms whose per-channel scale migrates into the linear
                      they feed (per block norm1 → qkv, norm2 → fc1; the final norm → a classifier head),
                      SmoothQuant-style with α searched per layer on the calibration images
                      (``calibration.migration``; a layer where no α helps stays as it is); folded into
                      I-LayerNorm's γ/β and the weights: no new op, the same kernels. Default every one;
                      ``()`` for none.
    norm_headroom:    widen the calibrated range of every LayerNorm output a linear layer reads by this
                      factor (>= 1), so images unlike the calibration set clip less
                      (``calibration.headroom``: on DINOv2 calibrated on another domain's images, 1.5 gave
                      back 3.6 of the 4.0 dB of token SQNR lost, for 0.1 dB on in-domain images). 1.0 keeps
                      the range as calibrated.
    output_aware:     choose each 8-bit GEMM input's range by its GEMM's output error on the calibration
                      images instead of taking the observer's (``calibration.output_ranges``); off by
                      default (no gain measured on DINOv2, README).
    bias_correction:  subtract from each block linear's bias the mean output error its quantization
                      introduces on the calibration images (``quantize.bias_correction``); off by default
                      (README).
    auto_int16:       additionally widen the k most sensitive widenable points, ranked by
                      ``quantize.sensitivity`` on up to ``matching_images`` calibration images.
    """
    recipe: str = "minmax"
    percentile: float = 99.99
    max_calib_images: int = 512
    batch_size: int = 32
    image_size: int | tuple[int, int] | None = None
    cache_path: str | None = None
    progress: bool = True
    attention_temperature: bool = False
    output_balance: bool = False
    matching_images: int = 128
    int16: tuple[str, ...] = ()
    auto_int16: int = 0
    gelu: str = "table"
    zero_points: tuple[str, ...] = ("*",)
    migration: tuple[str, ...] = ("*",)
    norm_headroom: float = HEADROOM
    output_aware: bool = False
    bias_correction: bool = False
    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.recipe not in OBSERVERS:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {sorted(OBSERVERS)}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, numbers.Real) \
                or not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"QuantConfig(percentile=...) is the percentile of |x| that recipe='percentile' keeps, "
                             f"a number in (50, 100] such as 99.99, got {self.percentile!r}")
        self.percentile = float(self.percentile)
        if self.labels is not None and (isinstance(self.labels, (str, bytes))
                                        or not isinstance(self.labels, collections.abc.Iterable)):
            raise TypeError(f"QuantConfig(labels=...) takes one name per output class, e.g. ('cat', 'dog'), got "
                            f"{self.labels!r}")
        if self.cache_path is not None and not isinstance(self.cache_path, (str, os.PathLike)):
            raise TypeError(f"QuantConfig(cache_path=...) takes the path of a JSON file, got {self.cache_path!r}")
        for name in ("int16", "zero_points", "migration"):
            setattr(self, name, _patterns(name, getattr(self, name)))
        if self.gelu not in GELU_MODES:
            raise ValueError(f"unknown gelu {self.gelu!r}; choose one of {list(GELU_MODES)}")
        for name, least in (("max_calib_images", 1), ("batch_size", 1), ("matching_images", 1), ("auto_int16", 0)):
            _check_whole(name, getattr(self, name), least)
        for name in ("progress", "attention_temperature", "output_balance", "output_aware", "bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"QuantConfig({name}=...) takes True or False, got {getattr(self, name)!r}")
        if isinstance(self.norm_headroom, bool) or not isinstance(self.norm_headroom, (int, float)) \
                or not 1.0 <= self.norm_headroom <= 16.0:
            small = isinstance(self.norm_headroom, (int, float)) and self.norm_headroom < 1.0
            raise ValueError(f"norm_headroom (QuantConfig, or --norm-headroom) is a factor from 1.0 (the range as "
                             f"calibrated) to 16, got {self.norm_headroom!r}"
                             + ("; to clip more, choose a recipe (percentile, omse)" if small else ""))
        self.norm_headroom = float(self.norm_headroom)
        if self.image_size is not None:
            size = (self.image_size,) * 2 if isinstance(self.image_size, numbers.Integral) else self.image_size
            if isinstance(size, (str, bytes)) or not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in size)):
                raise TypeError(f"QuantConfig(image_size=...) takes a whole number of pixels or (height, width), "
                                f"got {self.image_size!r}")
            if isinstance(self.image_size, numbers.Integral):
                self.image_size = int(self.image_size)
            else:
                self.image_size = tuple(int(v) for v in size)


def _patterns(name: str, value) -> tuple[str, ...]:
    """A glob pattern or a sequence of them as a tuple; anything else is one clear error (``zero_points=True``
    would otherwise fail deep inside with "'bool' object is not iterable")."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"QuantConfig({name}=...) takes glob patterns of quant points, e.g. ('*',) for every one "
                    f"or () for none, got {value!r}")


def _check_whole(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"QuantConfig({name}=...) must be a whole number >= {least}, got {value!r}")
