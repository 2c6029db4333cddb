"""Headroom on LayerNorm outputs: their calibrated range, widened, so images unlike the calibration set
do not clip.

A LayerNorm output's range is whatever the calibration images produced. After
channel migration (``calibration.migration``) every channel is scaled to fill
that range, so a channel that grows on another kind of image has no slack
left and saturates at the grid's end.

Measured on DINOv2-small's patch tokens, the saliency task
(``python -m intvit.bench.saliency_eval --crops 200 --calib 64 --calib-from
fmnist --norm-headroom 1``; README, Results): calibrated on 64 grey
Fashion-MNIST images instead of 64 photo crops, the token SQNR on the photos
fell from 23.3 to 19.3 dB, and the LayerNorm outputs were the points that
clipped (``quantize.clipping``). In a one-off sweep (82 test images) giving
those ranges the photos' extent as well brought it back to within 0.7 dB of
the photo-calibrated model; giving the attention context's range the same did
nothing; and without any photo, widening every LayerNorm output's range by
``f`` gave, off-domain / in-domain: 1.25: +2.4 / −0.3 dB, 1.5: +4.8 / −0.4 dB,
2: +4.7 / −0.7 dB. With ``DEFAULT`` = 1.5 the saliency run above gives 22.9 dB
off-domain and 23.2 dB in-domain.

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
