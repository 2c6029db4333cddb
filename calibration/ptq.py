"""Run the float model over calibration data and record a clipping range per quant point.

The result, ``CalibrationState``, maps each quantization point of the spec
(``models.spec.quant_points``) to ``amax`` (a symmetric clipping magnitude)
and to an asymmetric range ``[lo, hi]`` (for points with a zero point).
It is saved as JSON keyed by a fingerprint of the model weights, the recipe
and the data, so a second run with the same inputs loads it instead of
recalibrating.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..files import check_writable_target, write_atomic
from ..models.spec import ViTSpec, float_forward, quant_points
from .data import CalibrationDataError, check_finite_activation, iter_batches, validate_batch
from .observers import make_observer

FEW_IMAGES = 8          # fewer calibration images than this: a warning

STATE_VERSION = 2


@dataclass
class CalibrationState:
    """``amax``: the symmetric clipping magnitude per point; ``ranges``: the asymmetric ``[lo, hi]`` per
    point (``Observer.range``), for the points that get a zero point."""
    amax: dict[str, float]
    recipe: str
    num_images: int
    fingerprint: str
    extra: dict = field(default_factory=dict)
    ranges: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, "amax": self.amax, "ranges": self.ranges,
                           "recipe": self.recipe, "num_images": self.num_images, "fingerprint": self.fingerprint,
                           "extra": self.extra}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "CalibrationState":
        """The state in ``text``; ``ValueError`` for anything but a state this version wrote with sane values
        (a finite, non-negative clipping magnitude per point, finite ``lo <= hi`` ranges)."""
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
            raise ValueError(f"not a calibration state of version {STATE_VERSION}")
        amax, ranges = d["amax"], d["ranges"]
        if not (isinstance(amax, dict) and all(_finite(v) and v >= 0 for v in amax.values())):
            raise ValueError("calibration state with a missing, negative or non-finite clipping magnitude")
        if not (isinstance(ranges, dict) and set(ranges) <= set(amax) and all(
                isinstance(r, list) and len(r) == 2 and all(map(_finite, r)) and r[0] <= r[1]
                for r in ranges.values())):
            raise ValueError("calibration state with a malformed range")
        return cls(amax, d["recipe"], d["num_images"], d["fingerprint"], d.get("extra", {}), ranges)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def spec_fingerprint(spec: ViTSpec) -> str:
    """A hash of everything in the spec that reaches the integer model: every tensor (weights, biases,
    LayerNorm γ/β, position and prefix tokens), every number (eps, heads, sizes) and string (pool)."""
    h = hashlib.sha256()

    def walk(name: str, value) -> None:
        if isinstance(value, torch.Tensor):
            h.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
            h.update(value.detach().contiguous().cpu().numpy().tobytes())
        elif dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(f"{name}.{f.name}", getattr(value, f.name))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{name}[{i}]", item)
        elif isinstance(value, dict):
            for key in sorted(value):
                walk(f"{name}[{key!r}]", value[key])
        else:
            h.update(f"{name}={value!r}".encode())
    walk("spec", spec)
    return h.hexdigest()[:16]


def calibrate(spec: ViTSpec, data, recipe: str = "minmax", percentile: float = 99.99,
              max_images: int | None = None, batch_size: int = 32, progress: bool = True,
              cache_path: str | os.PathLike | None = None) -> CalibrationState:
    """Observe every quant point of ``spec`` on ``data`` (see ``calibration.data``); with ``cache_path``, reuse
    the ranges stored there when the model, data and recipe are the same, else calibrate and store them."""
    if cache_path is not None:
        check_writable_target(cache_path, "the calibration cache")      # before any work
    batches = list(_take(iter_batches(data, batch_size), spec, max_images))
    n = sum(b.shape[0] for b in batches)
    if n < FEW_IMAGES:
        warnings.warn(f"calibrating on {n} image{'s' if n != 1 else ''}: ranges observed on so few are likely to "
                      "clip what other images hold; give 64 or more (the README's DINOv2 figures use 64 and 256)",
                      stacklevel=4)         # the caller of intvit.quantize
    data_fp = hashlib.sha256()
    for b in batches:
        data_fp.update(b.contiguous().numpy().tobytes())
    fp = f"{spec_fingerprint(spec)}-{recipe}-{percentile}-{data_fp.hexdigest()[:16]}-{n}"

    if cache_path is not None and os.path.exists(cache_path):
        try:
            with open(cache_path) as f:
                state = CalibrationState.from_json(f.read())
            if state.fingerprint == fp and set(state.amax) == {name for name, _ in quant_points(spec)}:
                return state
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass  # unreadable, damaged or stale cache: recalibrate and overwrite

    kw = {"percentile": percentile} if recipe == "percentile" else {}
    observers = {}
    for name, bits in quant_points(spec):
        # GEMM inputs follow the recipe; the 16-bit residual stream and logits keep their full
        # range (clipping a residual corrupts every later layer), as in I-ViT.
        kind = recipe if bits == 8 and name != "input" else "minmax"
        observers[name] = make_observer(kind, bits, **(kw if kind == recipe else {}))

    def hook(name: str, x: torch.Tensor) -> torch.Tensor:
        check_finite_activation(name, x)
        observers[name].observe(x)
        return x

    with torch.no_grad():
        for b in tqdm(batches, desc=f"calibrating ({recipe}, {n} images)", unit="batch",
                      disable=not progress, leave=False):
            float_forward(spec, b, hook)
    state = CalibrationState({k: o.amax() for k, o in observers.items()}, recipe, n, fp,
                             ranges={k: list(o.range()) for k, o in observers.items()})
    if cache_path is not None:
        write_atomic(cache_path, state.to_json())
    return state


def _take(batches, spec: ViTSpec, max_images):
    seen = 0
    for b in batches:
        validate_batch(b, spec.input_shape()[1:])
        if max_images is not None:
            b = b[: max_images - seen]
        if b.shape[0] == 0:
            break
        seen += b.shape[0]
        yield b
        if max_images is not None and seen >= max_images:
            break
    if seen == 0:
        raise CalibrationDataError("the calibration data is empty: it yielded no images")


