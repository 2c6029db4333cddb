"""Bias correction: remove the mean output error a quantized linear layer introduces (offline).

Rounding a layer's input and weights to their grids shifts the *mean* of its
output a little per channel (Nagel et al., 2019, §4.2, empirical form); the
shift adds up coherently downstream where random rounding noise does not.
For every linear that reads an 8-bit activation point (per block ``qkv``,
``proj``, ``fc1``, ``fc2``), on the float model's calibration activations:

    δ_n = mean over rows of (Q(x)·Q(W)ᵀ − x·Wᵀ)_n,        b_n ← b_n − δ_n

with ``Q(x)`` the point's own grid (scale and zero point) and ``Q(W)`` the
int8 per-channel weights; the model is then refrozen. The corrected float
bias is part of the spec, so the saved model reloads to the same integers.
The head (reading the pooled final norm) is left as it is.
"""
from __future__ import annotations

import torch

from .. import ops
from ..calibration.activations import GEMM_INPUTS, collect_activations, gemm_input_layers


@torch.no_grad()
def correct_biases(qmodel, batches) -> dict[str, float]:
    """Correct ``qmodel``'s linear biases in place (see the module docstring); returns, per layer, the RMS of
    the correction relative to the RMS of the layer's output on the calibration rows."""
    spec = qmodel.spec
    layers = {p: lin for p, (lin, _) in gemm_input_layers(spec).items() if p != "norm" and qmodel.bits[p] == 8}
    samples = collect_activations(spec, batches, layers)
    report = {}
    for point, lin in layers.items():
        x = samples[point]
        xq = (ops.quantize_float(x, qmodel.scales[point], 8, qmodel.zeros[point]) - qmodel.zeros[point]).double() \
            * qmodel.scales[point]
        w = lin.weight.detach().double()
        s_w = ops.weight_scale(w)
        wq = ops.quantize_weight(w, s_w).double() * s_w[:, None]
        ref = x @ w.T
        delta = (xq @ wq.T - ref).mean(dim=0)
        bias = torch.zeros(w.shape[0], dtype=torch.float64) if lin.bias is None else lin.bias.detach().double()
        dtype = lin.weight.dtype
        lin.bias = (bias - delta).to(dtype)
        block, name = point.rsplit(".", 1)
        report[f"{block}.{GEMM_INPUTS[name]}"] = float(delta.square().mean().sqrt()
                                                       / ref.square().mean().sqrt().clamp(min=1e-30))
    qmodel.meta["bias_correction"] = report
    qmodel.refreeze()
    return report
