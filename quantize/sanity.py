"""Quantization sanity: points whose integer tensor is the same number for every input.

A scale chosen from a range that one outlier dominates (a patch-embedding
bias of 1e4, say) can round a layer's whole signal to one code: the model
then "quantizes successfully" and answers the same for every image. After
calibration, ``degenerate_points`` runs the integer model on a few
calibration images and lists every requantized point (and the output) whose
integer values are all equal — across images, tokens and channels (the
output only where the float model's is not constant too). ``quantize``
warns naming them and records them in ``meta["degenerate_points"]``;
``intvit eval`` and ``analyze`` print them.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from ..models.spec import float_forward

SANITY_IMAGES = 8          # calibration images ``quantize`` runs the check on
OUTPUT = "output"
POOLED = "pooled features"


@contextlib.contextmanager
def record_points(qmodel):
    """Within this context, ``qmodel``'s integer forward stores each requantized point's output (by the
    requant's name), each residual add's (``blocks.i.resid1``/``resid2``), each GELU's, the embedding's and
    the pooled features the head reads (``POOLED``) in the yielded dict. The integer model itself is unchanged: its methods are wrapped on the instance."""
    seen: dict[str, torch.Tensor] = {}
    with wrapped_methods(qmodel, {
            "_requant": lambda f: lambda z, name, bits: _keep(seen, name, f(z, name, bits)),
            "_residual_int": lambda f: lambda h, acc, name: _keep(seen, name, f(h, acc, name)),
            "_gelu_int": lambda f: lambda g, pre: _keep(seen, pre + "gelu", f(g, pre)),
            "_embed_int": lambda f: lambda x: _keep(seen, "embed", f(x)),
            "_pool_int": lambda f: lambda n: _keep(seen, POOLED, f(n))}):
        yield seen


@contextlib.contextmanager
def wrapped_methods(obj, wrappers: dict):
    """Within this context, each method ``obj.attr`` is ``wrappers[attr](original)``, set on the instance
    only (the class and other instances are untouched); the originals are back afterwards."""
    for attr, wrap in wrappers.items():
        object.__setattr__(obj, attr, wrap(getattr(obj, attr)))
    try:
        yield
    finally:
        for attr in wrappers:
            obj.__dict__.pop(attr, None)


def _keep(seen: dict, name: str, value: torch.Tensor) -> torch.Tensor:
    seen[name] = value
    return value


@torch.no_grad()
def degenerate_points(qmodel, images: torch.Tensor) -> list[str]:
    """Names of the points whose integer tensor holds one value for all of ``images`` (at least 2), in
    forward order; ``"output"`` when the model's integer output is the same for every image."""
    if images.shape[0] < 2:
        raise ValueError("degenerate_points needs at least 2 images to tell a constant output from one image")
    with record_points(qmodel) as seen:
        out = qmodel.forward_int(images)
    names = [name for name, t in seen.items() if t.numel() and bool((t == t.flatten()[0]).all())]
    if bool((out == out[:1]).all()) and not _float_output_is_constant(qmodel, images):
        names.append(OUTPUT)
    return names


def _float_output_is_constant(qmodel, images: torch.Tensor) -> bool:
    """Whether the float model answers the same for every image too (a zero-initialised head, as
    torchvision's): then a constant integer output is the model's, not the quantization's."""
    if not qmodel.has_float_weights:
        return False
    out = float_forward(qmodel.spec, images)
    return bool((out == out[:1]).all())


def warn_degenerate(qmodel, images: torch.Tensor) -> list[str]:
    """``degenerate_points``, recorded in ``qmodel.meta`` and warned about (one warning naming them all);
    nothing to check with fewer than 2 images."""
    if images.shape[0] < 2:
        return []
    names = degenerate_points(qmodel, images)
    qmodel.meta["degenerate_points"] = names
    if names:
        warnings.warn(describe_degenerate(names), stacklevel=3)
    return names


def describe_degenerate(names: list[str], images: str = "the calibration images") -> str:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return (f"quantization left {len(names)} point(s) constant over {images} ({shown}): their "
            "scale is too coarse for the signal, so the integer model cannot tell inputs apart there. Look for "
            "an outlier feeding the first one (a huge bias or weight), or widen it (QuantConfig(int16=...))")
