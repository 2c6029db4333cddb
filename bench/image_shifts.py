"""Test-time shifts: the test images as a deployed camera might deliver them, the calibration set unchanged.

``intvit eval --shift dark,noise,...`` quantizes on the clean calibration images as always and then scores
the FP32 model, each intvit variant and each INT8 peer on every shifted copy of the test images. intvit
fixes every range at calibration (the integer LayerNorm, Shiftmax and GELU table included), where PT2E and
ONNX Runtime keep those ops in float; this is where that choice would show if it were fragile under a
change of light, contrast, noise or focus. Agreement and SQNR are against the FP32 model *on the same
shifted images*, so they measure what quantization adds, not what the shift costs the float model.

Each shift maps pixel values ``p`` in [0, 1] (the preprocessing undone per channel: ``p = x·std + mean``)
and the result is normalised back:

| shift | ``p`` becomes |
|---|---|
| ``clean`` | ``p`` (the test images as given) |
| ``dark`` | ``0.4·p`` |
| ``bright`` | ``0.6·p + 0.4`` |
| ``low-contrast`` | ``m + 0.3·(p − m)``, ``m`` the image's mean |
| ``high-contrast`` | ``clip(m + 2·(p − m), 0, 1)`` |
| ``noise`` | ``clip(p + n, 0, 1)``, ``n`` Gaussian, σ = 0.1, a fixed seed |
| ``blur`` | a 7 × 7 Gaussian blur, σ = 1.5 px (reflected borders) |
| ``invert`` | ``1 − p`` |
"""
from __future__ import annotations

import torch

NOISE_SEED = 5


def _mean(p: torch.Tensor) -> torch.Tensor:
    return p.mean(dim=(1, 2, 3), keepdim=True)


def _noise(p: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(NOISE_SEED)
    return (p + 0.1 * torch.randn(p.shape, generator=g)).clamp(0, 1)


def _blur(p: torch.Tensor, sigma: float = 1.5, radius: int = 3) -> torch.Tensor:
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    channels = p.shape[1]
    kernel = (k[:, None] * k[None, :]).expand(channels, 1, -1, -1)
    padded = torch.nn.functional.pad(p, (radius,) * 4, mode="reflect")
    return torch.nn.functional.conv2d(padded, kernel, groups=channels)


SHIFTS = {
    "clean": lambda p: p,
    "dark": lambda p: 0.4 * p,
    "bright": lambda p: 0.6 * p + 0.4,
    "low-contrast": lambda p: _mean(p) + 0.3 * (p - _mean(p)),
    "high-contrast": lambda p: (_mean(p) + 2 * (p - _mean(p))).clamp(0, 1),
    "noise": _noise,
    "blur": _blur,
    "invert": lambda p: 1 - p,
}


def check_shifts(names) -> None:
    """Refuse unknown shift names, listing the known ones."""
    unknown = [n for n in names if n not in SHIFTS]
    if unknown:
        raise ValueError(f"--shift {','.join(unknown)}: unknown; choose from {','.join(SHIFTS)}")


def shifted(images: torch.Tensor, name: str, mean, std) -> torch.Tensor:
    """``images`` (normalised, ``[N, C, H, W]``, ``x = (p − mean) / std`` per channel) with shift ``name``
    applied to their pixels, normalised the same way. ``mean``/``std``: a number or one per channel."""
    check_shifts([name])
    m = torch.as_tensor(mean, dtype=images.dtype).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype).reshape(1, -1, 1, 1)
    return (SHIFTS[name](images * s + m) - m) / s


def shifted_sets(images: torch.Tensor, names, mean, std) -> dict[str, torch.Tensor]:
    """``{name: shifted(images, name, mean, std)}`` for each of ``names``, in order."""
    check_shifts(names)
    return {name: shifted(images, name, mean, std) for name in names}
