"""Input checks of the integer ops: what each op's documented range (``ops/README.md``) asks of its input.

Two kinds:

* **always on** (scalar or one pass over the model's input): an op's bit
  width parameter (``check_out_bits``), and the input quantizer's refusal of
  NaN and ±Inf (``check_finite_input``) — a NaN has no integer code, and
  each backend would invent a different one.
* **range checks** (a reduction per call, so off by default): the
  magnitude bound under which an op's int64 arithmetic cannot wrap
  (``check_magnitude``, ``check_product_fits``). On when the environment has
  ``INTVIT_CHECK_RANGES=1`` (the test suite sets it) or inside
  ``checked_ranges()``. Inputs the integer model produces are inside these
  bounds by construction (``quantize`` proves the widths); the checks catch a
  hand-driven op or a damaged model.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch

INT64_MAX = 2**63 - 1
_CHECKED: ContextVar[bool | None] = ContextVar("intvit_checked_ranges", default=None)


class RangeError(ValueError):
    """An integer op got an input outside its documented range (its int64 arithmetic could wrap)."""


def range_checks_enabled() -> bool:
    forced = _CHECKED.get()
    return forced if forced is not None else os.environ.get("INTVIT_CHECK_RANGES") == "1"


@contextmanager
def checked_ranges(enabled: bool = True):
    """Within this context every op asserts its documented input range (``RangeError`` otherwise)."""
    token = _CHECKED.set(enabled)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def check_out_bits(bits: int, op: str, lowest: int = 2, highest: int = 31) -> None:
    """An op's output width must be one its arithmetic supports (e.g. Shiftmax shifts by ``63 − bits``)."""
    if not isinstance(bits, (int, np.integer)) or not lowest <= int(bits) <= highest:
        raise RangeError(f"{op}: out_bits must be an integer in [{lowest}, {highest}], got {bits!r}")


def check_magnitude(x: torch.Tensor, limit: int, op: str, what: str) -> None:
    """When range checks are on: ``max|x| <= limit``."""
    if range_checks_enabled() and x.numel():
        worst = int(x.abs().max())
        if worst > limit:
            raise RangeError(f"{op}: |{what}| reaches {worst}, above its documented bound {limit} "
                             "(its int64 arithmetic could wrap)")


def check_product_fits(z: torch.Tensor, m: torch.Tensor, offset, e: torch.Tensor, op: str) -> None:
    """When range checks are on: ``|z·m| + |offset| + 2**(e−1) <= 2**63 − 1`` elementwise, decided in integers
    (``|z| <= (2**63 − 1 − |offset| − 2**(e−1)) // |m|``), so the check itself adds no float op to the
    integer graph."""
    if not range_checks_enabled() or not z.numel():
        return
    half = torch.bitwise_left_shift(torch.ones_like(e), e - 1)
    room = INT64_MAX - half - (torch.as_tensor(offset).abs() if offset is not None else 0)
    if bool((z.abs() > torch.div(room, m.abs().clamp(min=1), rounding_mode="floor")).any()):
        raise RangeError(f"{op}: |z·m + offset| would pass 2**63 (int64 wraps); the input is outside the "
                         "requant's documented range |z| <= 2**31")


def check_finite_input(x, what: str = "images") -> None:
    """Refuse NaN and ±Inf in a float input (torch tensor or numpy array): one error saying how many."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            return
        bad = int((~torch.isfinite(x)).sum())
    else:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            return
        bad = int((~np.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{what} contain {bad} NaN or infinite value(s) of {int(np.prod(x.shape))}; "
                         "an integer model has no code for them: fix the preprocessing, or replace them "
                         "(e.g. numpy.nan_to_num) before running")
