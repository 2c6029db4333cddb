"""Range observers: turn the activations seen during calibration into a clipping range.

Each observer sees float tensors and answers two questions:

* ``amax()`` — the symmetric clipping magnitude ``c`` such that the quantizer
  maps ``[-c, c]`` onto the signed range (``scale = c / (2**(bits-1) - 1)``);
* ``range()`` — an asymmetric clipping range ``(lo, hi)`` with ``lo <= 0 <= hi``
  for a point with a zero point (``ops.asymmetric_grid``), where the
  ``2**bits`` levels span ``[lo, hi]`` instead of ``[-c, c]``.

Recipes:

* ``minmax`` — ``c = max |x|``; ``(lo, hi) = (min x, max x)``.
* ``percentile`` — ``c`` = the p-th percentile of ``|x|``; ``lo``, ``hi`` the
  (100 − p)-th and p-th percentiles of ``x``.
* ``omse`` — the ``c`` among ``max|x| · {0.30, 0.31, …, 1.00}`` that minimises the
  mean squared quantization error ``E[(x − Q_c(x))²]`` (OMSE, Choukroun et al.
  2019); asymmetrically, the same search over ``(min x, max x) · {0.30, …, 1.00}``.

Percentile and OMSE keep a bounded, deterministic sample of ``x`` (a fixed
stride over each batch, at most ``max_samples`` values in all).
"""
from __future__ import annotations

import torch


class Observer:
    name = "base"

    def __init__(self, bits: int, max_samples: int = 1 << 16):
        self.bits = bits
        self.max_samples = max_samples
        self.max_abs = 0.0
        self.lo, self.hi = 0.0, 0.0
        self.count = 0
        self._samples: list[torch.Tensor] = []
        self._kept = 0

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError("non-finite (NaN/inf) activation")
        a = x.flatten().float()
        if a.numel():
            self.lo, self.hi = min(self.lo, float(a.min())), max(self.hi, float(a.max()))
            self.max_abs = max(-self.lo, self.hi)
        self.count += a.numel()
        if self.keeps_samples and self._kept < self.max_samples:
            per_batch = max(1, self.max_samples // 64)
            stride = max(1, a.numel() // per_batch)
            s = a[::stride][: self.max_samples - self._kept]
            self._samples.append(s.clone())
            self._kept += s.numel()

    keeps_samples = False

    def samples(self) -> torch.Tensor:
        """The kept signed samples (float64)."""
        return torch.cat(self._samples).double() if self._samples else torch.zeros(1, dtype=torch.float64)

    def amax(self) -> float:
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        raise NotImplementedError


class MinMaxObserver(Observer):
    name = "minmax"

    def amax(self) -> float:
        return self.max_abs

    def range(self) -> tuple[float, float]:
        return self.lo, self.hi


class PercentileObserver(Observer):
    name = "percentile"
    keeps_samples = True

    def __init__(self, bits: int, percentile: float = 99.99, **kw):
        super().__init__(bits, **kw)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def amax(self) -> float:
        s = self.samples()
        return float(torch.quantile(s.abs(), self.percentile / 100.0)) if s.numel() > 1 else self.max_abs

    def range(self) -> tuple[float, float]:
        s = self.samples()
        if s.numel() <= 1:
            return self.lo, self.hi
        q = self.percentile / 100.0
        return min(float(torch.quantile(s, 1.0 - q)), 0.0), max(float(torch.quantile(s, q)), 0.0)


class OMSEObserver(Observer):
    name = "omse"
    keeps_samples = True
    FRACTIONS = torch.linspace(0.30, 1.0, 71, dtype=torch.float64)[:, None]

    def amax(self) -> float:
        if self.max_abs == 0.0:
            return 0.0
        s = self.samples()
        qmax = 2 ** (self.bits - 1) - 1
        clips = self.max_abs * self.FRACTIONS
        scale = clips / qmax
        err = ((torch.clamp(torch.round(s[None] / scale), -qmax - 1, qmax) * scale - s[None]) ** 2).mean(1)
        return float(clips[int(torch.argmin(err)), 0])

    def range(self) -> tuple[float, float]:
        if self.hi - self.lo == 0.0:
            return self.lo, self.hi
        s = self.samples()
        lo, hi = self.lo * self.FRACTIONS, self.hi * self.FRACTIONS
        scale = (hi - lo) / (2**self.bits - 1)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(s[None] / scale) + zero, 0, 2**self.bits - 1)
        err = (((q - zero) * scale - s[None]) ** 2).mean(1)
        best = int(torch.argmin(err))
        return float(lo[best, 0]), float(hi[best, 0])


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "omse": OMSEObserver}


def make_observer(kind: str, bits: int, **kw) -> Observer:
    try:
        cls = OBSERVERS[kind]
    except KeyError:
        raise ValueError(f"unknown observer {kind!r}; choose one of {sorted(OBSERVERS)}") from None
    return cls(bits, **kw)
