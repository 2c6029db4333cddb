"""Accuracy of an integer model against its float source: top-1, agreement, SQNR."""
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
    fp, iq = torch.cat(fp), torch.cat(iq)
    out = {"images": int(images.shape[0]),
           "top1_agreement": float((fp.argmax(1) == iq.argmax(1)).float().mean()),
           "sqnr_db": sqnr_db(iq, fp)}
    if labels is not None:
        out["fp32_top1"] = float((fp.argmax(1) == labels).float().mean())
        out["int8_top1"] = float((iq.argmax(1) == labels).float().mean())
        out["delta_top1"] = out["int8_top1"] - out["fp32_top1"]
    return out
