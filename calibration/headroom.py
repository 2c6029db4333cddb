"""Headroom on LayerNorm outputs: their calibrated range, widened, so images unlike the calibration set
do not clip.

A LayerNorm output's range is whatever the calibration images produced. After
channel migration (``calibration.migration``) every channel is scaled to fill
that range, so a channel that grows on another kind of image has no slack
left and saturates at the grid's end. Measured on DINOv2-small's patch tokens
(the saliency task, ``bench.saliency_eval``; 64 calibration images, 82 test
photos and crops): calibrated on grey Fashion-MNIST images instead of photo
crops, the token SQNR fell from 24.9 to 19.2 dB, and the LayerNorm outputs
were the points that clipped (``quantize.clipping``). Giving those ranges the
photos' extent as well brought it back to 24.2 dB; giving the attention
context's range the same did nothing. Without any photo, widening every
LayerNorm output's range by ``DEFAULT`` = 1.5 gave 24.0 dB off-domain for a
cost of 0.4 dB on the photo-calibrated model (1.25: 21.6 / −0.3 dB; 2: 23.9 /
−0.7 dB).

The widening: each end of ``[lo, hi]`` that lies away from zero moves out by
the factor (``lo' = min(lo, f·lo)``, ``hi' = max(hi, f·hi)``), and a symmetric
magnitude ``amax' = f·amax``. Scales only: the graph and its kernels do not
change.
"""
from __future__ import annotations

from .activations import layernorm_gemm_inputs

DEFAULT = 1.5


def widen(lo: float, hi: float, factor: float) -> tuple[float, float]:
    """``[lo, hi]`` with each end that lies away from zero moved out by ``factor``."""
    return min(lo, factor * lo), max(hi, factor * hi)


def with_headroom(spec, ranges: dict, amax: dict, factor: float) -> tuple[dict, dict]:
    """New ``(ranges, amax)`` with every LayerNorm output that a linear layer reads widened by ``factor``."""
    ranges, amax = dict(ranges), dict(amax)
    if factor == 1.0:
        return ranges, amax
    for point in layernorm_gemm_inputs(spec):
        ranges[point] = list(widen(*ranges[point], factor))
        amax[point] = factor * amax[point]
    return ranges, amax
