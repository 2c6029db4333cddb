"""Selective quantization layout: which activation points run at 16 bits instead of 8.

The I-ViT layout keeps every GEMM input at int8. Some points of a real model
lose too much there (``intvit analyze`` ranks them); a layout widens chosen
points to int16 — still integer-only, so the graph stays integer end to end:

* widenable points are the int8 inputs of the linear layers that a
  requant produces: per block ``norm1`` (qkv input), ``ctx`` (proj input),
  ``norm2`` (fc1 input), ``gelu`` (fc2 input), and the final ``norm`` (head
  input). The input quantizer, ``q``/``k``/``v`` and the GELU input ``fc1``
  stay 8-bit (their consumers' constants and kernels assume it);
* a widened linear multiplies int16 × int8 with an int64 accumulator
  (``ops.int_linear``: ``|acc| <= K·2**22``), exported as an int64 ``MatMul``
  instead of ``MatMulInteger`` and compiled as a plain integer GEMM.

``QuantConfig(int16=("blocks.0.*", "norm"))`` selects points by glob
pattern over their names; ``QuantConfig(auto_int16=k)`` widens the ``k`` most
sensitive widenable points (``quantize.sensitivity``). The layout is
stored in the model (``meta["layout"]``) and saved with it.
"""
from __future__ import annotations

import math

from ..models.spec import ViTSpec, quant_points, select_by_patterns

WIDE_BITS = 16
BLOCK_WIDENABLE = ("norm1", "ctx", "norm2", "gelu")


def widenable_points(spec: ViTSpec) -> list[str]:
    """The activation points a layout may widen to 16 bits, in forward order."""
    names = [f"blocks.{i}.{p}" for i in range(len(spec.blocks)) for p in BLOCK_WIDENABLE]
    return names + (["norm"] if spec.final_norm is not None and spec.head is not None else [])


def resolve_layout(spec: ViTSpec, patterns) -> dict[str, int]:
    """``{point: 16}`` for every widenable point matching one of the glob ``patterns``.

    A pattern that matches no widenable point is an error naming the ones that exist.
    """
    chosen = select_by_patterns(patterns, widenable_points(spec), "int16", "widenable quant point",
                                "per block norm1, ctx, norm2, gelu, and the final norm; the input, q/k/v and "
                                "fc1 stay 8-bit")
    return {p: WIDE_BITS for p in chosen}


def check_widen_count(spec: ViTSpec, bits: dict[str, int], k: int) -> None:
    """Refuse ``auto_int16=k`` beyond the widenable points still at 8 bits (it would silently widen fewer)."""
    available = [p for p in widenable_points(spec) if bits.get(p, 8) == 8]
    if k > len(available):
        raise ValueError(f"auto_int16={k}: this model has {len(available)} widenable 8-bit points (per block "
                         f"norm1, ctx, norm2, gelu, and the final norm); choose at most {len(available)}")


def widen_most_sensitive(qmodel, data, k: int, max_images: int = 128, batch_size: int = 32) -> list[str]:
    """Widen the ``k`` widenable points whose quantization alone costs the most output SQNR
    (``quantize.sensitivity.layer_sensitivity``); refreezes ``qmodel``; returns their names."""
    import torch

    from ..calibration.data import take_batches
    from .sensitivity import layer_sensitivity
    images = take_batches(data, max_images, batch_size, "auto_int16 (ranking the quant points)")
    widenable = set(widenable_points(qmodel.spec))
    rows = layer_sensitivity(qmodel, torch.cat(images), progress=False)
    chosen = [r["name"] for r in rows if r["kind"] == "activation" and r["name"] in widenable
              and qmodel.bits[r["name"]] == 8][:k]
    qmodel.meta["layout"] = {**qmodel.meta.get("layout", {}), **{name: WIDE_BITS for name in chosen}}
    asymmetric = qmodel.meta.get("asymmetric", {})          # a widened point is a symmetric 16-bit point
    qmodel.meta["asymmetric"] = {name: rng for name, rng in asymmetric.items() if name not in chosen}
    qmodel.meta["auto_int16"] = chosen
    qmodel.refreeze()
    return chosen


def auto_exclude(qmodel, data, budget: int, max_images: int = 128) -> list[str]:
    """Keep the ``budget`` most sensitive quant points out of int8 (at int16): ``widen_most_sensitive``."""
    return widen_most_sensitive(qmodel, data, budget, max_images)


ZERO_POINT_BLOCK = ("norm1", "ctx", "norm2", "gelu")


def zero_point_points(spec: ViTSpec, gelu: str = "table") -> list[str]:
    """The activation points that may take a zero point, in forward order: the int8 GEMM inputs a requant
    produces (per block ``norm1``, ``ctx``, ``norm2``, ``gelu``), the final ``norm`` (the head's input, or
    a backbone's output tokens, whose dequantize subtracts it) and, with the GELU table, the GELU input
    ``fc1`` (the table absorbs it). The input quantizer, ``q``/``k``/``v``, the logits and the residual
    stream stay symmetric."""
    block = ZERO_POINT_BLOCK + (("fc1",) if gelu == "table" else ())
    names = [f"blocks.{i}.{p}" for i in range(len(spec.blocks)) for p in block]
    return names + (["norm"] if spec.final_norm is not None else [])


def resolve_zero_points(spec: ViTSpec, patterns, bits: dict[str, int], gelu: str = "table") -> list[str]:
    """The 8-bit points matching the glob ``patterns`` among ``zero_point_points`` (16-bit points stay symmetric).

    A pattern that matches no point that can take a zero point is an error naming the ones that can; the
    default ``("*",)`` on a model without any (no block, no final norm) gives none (``select_by_patterns``).
    """
    chosen = select_by_patterns(patterns, zero_point_points(spec, gelu), "zero-point",
                                "point that can take a zero point",
                                "per block norm1, ctx, norm2, gelu, fc1 (with the GELU table), and the final norm; "
                                "the input, q/k/v, the attention logits and the residual stream stay symmetric")
    return [p for p in chosen if bits.get(p, 8) == 8]


def check_zero_points(spec: ViTSpec, asymmetric: dict | None, bits: dict[str, int],
                      gelu: str = "table") -> dict[str, tuple]:
    """Validate a model's ``meta["asymmetric"]`` (``{point: [lo, hi]}``): known 8-bit points, finite ranges."""
    allowed = set(zero_point_points(spec, gelu))
    out = {}
    for name, rng in (asymmetric or {}).items():
        if name not in allowed:
            why = " (the GELU input takes one only with the GELU table, not ShiftGELU)" \
                if name.endswith(".fc1") else ""
            raise ValueError(f"{name!r} cannot take a zero point{why}; the points that can are per block norm1, "
                             "ctx, norm2, gelu, fc1 (with the GELU table), and the final norm")
        if bits.get(name, 8) != 8:
            raise ValueError(f"{name!r} is a {bits[name]}-bit point; zero points are for 8-bit points only")
        lo, hi = (float(v) for v in rng)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"the calibrated range of {name!r} is not a finite interval: [{lo}, {hi}]")
        out[name] = (lo, hi)
    return out


def point_bits(spec: ViTSpec, layout: dict | None) -> dict[str, int]:
    """Bit width of every activation point under ``layout`` (``quant_points`` defaults otherwise)."""
    bits = dict(quant_points(spec))
    for name, b in (layout or {}).items():
        if name not in widenable_points(spec):
            raise ValueError(f"layout widens {name!r}, which is not a widenable quant point")
        if b not in (8, WIDE_BITS):
            raise ValueError(f"layout gives {name!r} {b} bits; a point is 8 or {WIDE_BITS} bits")
        bits[name] = b
    return bits
