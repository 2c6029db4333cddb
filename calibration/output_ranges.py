"""Output-aware clipping ranges: each 8-bit GEMM input's range chosen by the GEMM's output error.

A clipping recipe (percentile, OMSE) chooses a range by the error of the
*input*; what the network feels is the error of the GEMM that reads it,
where a clipped outlier channel may meet a large weight. For every 8-bit
point a linear layer reads (``activations.gemm_input_layers``) this tries the
calibrated range shrunk on each side, ``(lo·a, hi·b)`` with ``a, b`` in
``FRACTIONS`` (for a symmetric point, the magnitude shrunk by ``a``), and keeps
the one with the smallest relative error of ``Q(x)·Q(W)ᵀ`` against ``x·Wᵀ``
on calibration activations (``migration.output_error``'s measure). The
calibrated range itself is a candidate, so no range gets worse on that
measure. Offline only: it changes scales, not the graph.
"""
from __future__ import annotations

import torch

from .activations import collect_activations, gemm_input_layers
from .migration import fake_quant_rows, fake_quant_weight

FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def gemm_error(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor, ref: torch.Tensor, asymmetric: bool,
               lo: float, hi: float) -> float:
    """``‖Q(x)·Wqᵀ − ref‖² / ‖ref‖²`` with ``Q`` the 8-bit grid of ``[lo, hi]`` and ``x`` tiled to ``w``'s width."""
    parts = w.shape[1] // x.shape[1]
    xq = fake_quant_rows(x, asymmetric, lo, hi).repeat(1, parts).float()
    return float(((xq @ wq.T).double() - ref).square().sum() / ref.square().sum().clamp(min=1e-30))


def search_range(x: torch.Tensor, w: torch.Tensor, asymmetric: bool, lo: float, hi: float) -> dict:
    """The best ``(lo·a, hi·b)`` for one point (``b = a`` when symmetric), with the errors before and after."""
    parts = w.shape[1] // x.shape[1]
    ref = x.repeat(1, parts) @ w.T
    wq = fake_quant_weight(w).float()
    pairs = [(a, b) for a in FRACTIONS for b in FRACTIONS] if asymmetric else [(a, a) for a in FRACTIONS]
    errors = {pair: gemm_error(x, w, wq, ref, asymmetric, lo * pair[0], hi * pair[1]) for pair in pairs}
    best = min(errors, key=errors.get)
    return {"lo": lo * best[0], "hi": hi * best[1], "fractions": list(best),
            "error_before": errors[(1.0, 1.0)], "error_after": errors[best]}


@torch.no_grad()
def output_aware_ranges(spec, batches, ranges: dict, amax: dict, asymmetric_points, bits: dict,
                        progress=None) -> tuple[dict, dict, dict]:
    """New ``(ranges, amax, report)`` with every 8-bit GEMM input's range chosen by its GEMM's output error.

    ``ranges``/``amax`` are a ``CalibrationState``'s; ``asymmetric_points`` the points with a zero point
    (searched on ``ranges``), the other 8-bit GEMM inputs on ``amax``.
    """
    layers = {p: v for p, v in gemm_input_layers(spec).items() if bits.get(p, 8) == 8}
    samples = collect_activations(spec, batches, layers)
    ranges, amax, report = dict(ranges), dict(amax), {}
    for point, (lin, _) in layers.items():
        asym = point in asymmetric_points
        lo, hi = ranges[point] if asym else (-amax[point], amax[point])
        found = search_range(samples[point], lin.weight.detach().double(), asym, lo, hi)
        if asym:
            ranges[point] = [found["lo"], found["hi"]]
        else:
            amax[point] = found["hi"]
        report[point] = found
        if progress:
            progress(f"output-aware range {point}: x{found['fractions']}, GEMM output error "
                     f"{found['error_before']:.2e} -> {found['error_after']:.2e}")
    return ranges, amax, report
