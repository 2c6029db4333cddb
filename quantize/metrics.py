"""Accuracy of an integer model against its float source: top-1, agreement, SQNR (no model code here, so
``sensitivity``, ``attribution`` and the reports all take their metric from one place)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm


def sqnr_db(approx: torch.Tensor, ref: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σref² / Σ(approx−ref)²)`` in dB."""
    approx, ref = approx.detach().double(), ref.detach().double()
    noise = float(((approx - ref) ** 2).sum())
    return float("inf") if noise == 0 else float(10 * torch.log10((ref ** 2).sum() / noise))


@torch.no_grad()
def compare(float_fn, int_fn, images: torch.Tensor, labels: torch.Tensor | None = None,
            batch_size: int = 250, progress: bool = True) -> dict:
    """Run both models over ``images``; report FP32/INT8 top-1, their delta, agreement and SQNR."""
    fp, iq = [], []
    for i in tqdm(range(0, images.shape[0], batch_size), desc="evaluating FP32 vs INT8",
                  unit="batch", disable=not progress, leave=False):
        x = images[i:i + batch_size]
        fp.append(float_fn(x))
        iq.append(int_fn(x))
    return scores(torch.cat(fp), torch.cat(iq), labels)


def scores(fp: torch.Tensor, iq: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """Top-1 of both, their delta, top-1 agreement and logit SQNR from two ``[N, classes]`` logit tensors;
    with labels also the paired change: ``fixed`` (wrong in FP32, right in INT8) and ``broken`` (the reverse)."""
    out = {"images": int(fp.shape[0]),
           "top1_agreement": float((fp.argmax(1) == iq.argmax(1)).double().mean()),
           "sqnr_db": sqnr_db(iq, fp)}
    if labels is not None:
        fp_right, iq_right = fp.argmax(1) == labels, iq.argmax(1) == labels
        out["fp32_top1"] = float(fp_right.double().mean())           # float64: 0.992, not 0.9919999837875366
        out["int8_top1"] = float(iq_right.double().mean())
        out["delta_top1"] = out["int8_top1"] - out["fp32_top1"]
        out["fixed"] = int((~fp_right & iq_right).sum())
        out["broken"] = int((fp_right & ~iq_right).sum())
    return out
