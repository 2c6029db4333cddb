"""QuantVLA-style scale calibration: attention temperature matching (ATM) and output head balancing (OHB).

Both compare the float model (the teacher) with the integer model (the
student) on the calibration images and fold a correction into dyadic
multipliers the integer graph already has, so inference cost and the op
count do not change (``quantize.qparams.freeze``):

* **ATM** — per block ``i`` and head ``h``, the standard deviation of the
  attention logits ``QKᵀ/√d``: teacher ``σ_T`` from the float forward,
  student ``σ_S`` from the integer logits times their scale.
  ``α_h = σ_T / σ_S``, clamped to ``[0.7, 1.4]``, and set to 1 inside the
  neutral band ``|α − 1| < 0.02``; α_h multiplies head h's ``Q·Kᵀ`` requant.
* **OHB** — per block and branch (the attention output projection before
  ``resid1``, the MLP's ``fc2`` before ``resid2``), the RMS of the branch
  output: ``β = RMS_T / RMS_S``, clamped to ``|ln β| <= 0.3`` with the
  neutral band ``|ln β| < 0.03``; β multiplies that branch's residual requant.

Corrections compound: each pass measures the current student and multiplies
the factors already stored in ``model.meta`` (``"temperatures"``,
``"balance"``), so running ATM then OHB (QuantVLA's order) measures OHB on
the temperature-matched model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.spec import float_forward
from ..ops import weight_scale
from .. import ops
from ..calibration.data import take_batches

ATM_RANGE, ATM_NEUTRAL = (0.7, 1.4), 0.02
OHB_LOG_LIMIT, OHB_NEUTRAL = 0.3, 0.03
BRANCHES = (("proj", "ctx", "resid1"), ("fc2", "gelu", "resid2"))   # (layer, its input point, residual)
BRANCHES_RESID = {layer: resid for layer, _, resid in BRANCHES}


def clamp_temperature(alpha: float) -> float:
    """``α`` clamped to ``ATM_RANGE``; 1 inside the neutral band."""
    if not math.isfinite(alpha) or abs(alpha - 1.0) < ATM_NEUTRAL:
        return 1.0
    return min(max(alpha, ATM_RANGE[0]), ATM_RANGE[1])


def clamp_balance(beta: float) -> float:
    """``β`` clamped to ``|ln β| <= OHB_LOG_LIMIT``; 1 inside the neutral band."""
    if not math.isfinite(beta) or beta <= 0:
        return 1.0
    log = math.log(beta)
    if abs(log) < OHB_NEUTRAL:
        return 1.0
    return math.exp(min(max(log, -OHB_LOG_LIMIT), OHB_LOG_LIMIT))


class _Moments:
    """Streaming Σx and Σx² (float64) over everything but the kept axis."""

    def __init__(self):
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, x: torch.Tensor, keep: int | None = None) -> None:
        x = x.double()
        if keep is None:
            self.n += x.numel()
            self.s, self.ss = self.s + x.sum(), self.ss + (x * x).sum()
            return
        x = x.movedim(keep, 0).reshape(x.shape[keep], -1)
        self.n += x.shape[1]
        self.s, self.ss = self.s + x.sum(1), self.ss + (x * x).sum(1)

    def std(self) -> torch.Tensor:
        mean = self.s / self.n
        return torch.sqrt(torch.clamp(self.ss / self.n - mean * mean, min=0))

    def rms(self) -> torch.Tensor:
        return torch.sqrt(torch.as_tensor(self.ss / self.n))


def _teacher_stats(model, batches) -> dict[str, _Moments]:
    spec = model.spec
    stats: dict[str, _Moments] = {}
    blocks = {f"blocks.{i}.": blk for i, blk in enumerate(spec.blocks)}

    def hook(name, x):
        pre, _, point = name.rpartition(".")
        pre += "."
        if point == "logits":
            stats.setdefault(name, _Moments()).add(x, keep=1)
        for layer, source, _ in BRANCHES:
            if point == source and pre in blocks:
                # ctx arrives per head, [B, H, T, dh]: the projection reads it as [B, T, D]
                inp = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1) if source == "ctx" else x
                lin = getattr(blocks[pre], layer)
                stats.setdefault(pre + layer, _Moments()).add(F.linear(inp, lin.weight, lin.bias))
        return x                                            # the float forward itself is unchanged

    with torch.no_grad():
        for b in batches:
            float_forward(spec, b, hook)
    return stats


def _student_stats(model, batches) -> dict[str, _Moments]:
    spec, S = model.spec, model.scales
    stats: dict[str, _Moments] = {}
    with torch.no_grad(), ops.float64_gemm_evaluation():
        for b in batches:
            taps: dict = {}
            model.forward_int_core(model.quantize_input(b), taps)
            for i, blk in enumerate(spec.blocks):
                pre = f"blocks.{i}."
                stats.setdefault(pre + "logits", _Moments()).add(taps[pre + "logits"] * S[pre + "logits"], keep=1)
                for layer, source, _ in BRANCHES:
                    acc_scale = S[pre + source] * weight_scale(getattr(blk, layer).weight)
                    beta = model.meta.get("balance", {}).get(pre + BRANCHES_RESID[layer], 1.0)
                    stats.setdefault(pre + layer, _Moments()).add(taps[pre + layer] * acc_scale * beta)
    return stats



def match_attention_temperature(model, data, max_images: int = 64, batch_size: int = 16) -> dict[str, list[float]]:
    """ATM: measure α per block and head, fold it into ``model`` (refreeze); returns the new factors."""
    batches = take_batches(data, max_images, batch_size, "attention temperature matching")
    teacher, student = _teacher_stats(model, batches), _student_stats(model, batches)
    temps = dict(model.meta.get("temperatures", {}))
    for i, blk in enumerate(model.spec.blocks):
        key = f"blocks.{i}"
        ratio = teacher[key + ".logits"].std() / student[key + ".logits"].std().clamp(min=1e-12)
        old = temps.get(key, [1.0] * blk.num_heads)
        temps[key] = [o * clamp_temperature(float(r)) for o, r in zip(old, ratio)]
    model.meta["temperatures"] = temps
    model.refreeze()
    return temps


def balance_output_heads(model, data, max_images: int = 64, batch_size: int = 16) -> dict[str, float]:
    """OHB: measure β per block and branch, fold it into ``model`` (refreeze); returns the new factors."""
    batches = take_batches(data, max_images, batch_size, "output head balancing")
    teacher, student = _teacher_stats(model, batches), _student_stats(model, batches)
    bal = dict(model.meta.get("balance", {}))
    for i in range(len(model.spec.blocks)):
        for layer, _, resid in BRANCHES:
            key = f"blocks.{i}.{layer}"
            beta = float(teacher[key].rms() / student[key].rms().clamp(min=1e-12))
            name = f"blocks.{i}.{resid}"
            bal[name] = bal.get(name, 1.0) * clamp_balance(beta)
    model.meta["balance"] = bal
    model.refreeze()
    return bal

