"""Freeze a float ``ViTSpec`` plus calibrated ranges into integer parameters.

Scales: an activation point of ``bits`` bits with clipping magnitude ``c``
gets ``s = c / (2**(bits-1) - 1)``; a point with a zero point (calibrated
range ``[lo, hi]``) gets ``ops.asymmetric_grid``, whose zero point its
producing requant adds and its consuming GEMM folds into the bias. Weights
are int8 per output channel, symmetric: ``s_w[c] = max|W[c]| / 127``, ``W_int = clamp(round(W / s_w), ±127)``.
Biases are int32 at the accumulator scale ``s_x · s_w[c]``. Every rescale
between two scales is a dyadic ``(m, e)`` from ``ops.dyadic_multiplier``; the
LayerNorm affine is a per-channel requant with ``γ`` in the multiplier and
``β`` in the integer offset (``ops.offset_for``).

Two scales are bounded below so the ShiftExp constants fit int32
(``ops.check_shiftexp_constants``): the attention logits (``x0 >= -65535``
with n = 15) and the GELU input (``x0 >= -255`` at ``1.702·S`` with n = 23).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .. import ops
from ..ops import quantize_weight, weight_scale
from ..models.spec import Linear, Norm, ViTSpec, quant_points, stream_start

P = dict  # name -> integer tensor


def act_grids(spec: ViTSpec, amax: dict[str, float], bits: dict[str, int] | None = None,
              gelu: str = "shift", asymmetric: dict | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """Scale and zero point of every activation quant point from its calibrated range.

    A symmetric point with clipping magnitude ``c`` gets ``s = c / (2**(bits-1) - 1)`` and zero 0
    (``ops.symmetric_scale``); a point in ``asymmetric`` (``{name: (lo, hi)}``, ``quantize.layout``'s zero
    points) gets ``ops.asymmetric_grid(lo, hi)``. ``bits`` overrides the points' widths (a
    ``quantize.layout``); default ``quant_points``. ``gelu="shift"`` bounds the GELU input's scale for
    ShiftGELU's constants; a GELU table has no such bound.
    """
    missing = [n for n, _ in quant_points(spec) if n not in amax]
    if missing:
        raise ValueError(f"calibration state lacks quant points {missing[:3]}…; recalibrate this model")
    widths = dict(quant_points(spec)) | dict(bits or {})
    asymmetric = asymmetric or {}
    scales, zeros = {}, {}
    for name, bits in widths.items():
        c = float(amax[name])
        if not math.isfinite(c):
            raise ValueError(f"calibrated range of '{name}' is not finite")
        s, zeros[name] = ops.asymmetric_grid(*asymmetric[name], bits) if name in asymmetric \
            else (ops.symmetric_scale(c, bits), 0)
        if name.endswith("logits"):
            s = max(s, 1.0 / 65535.0 * (1 + 1e-9))
        if name.endswith("fc1") and gelu == "shift":
            s = max(s, 1.0 / (255.0 * ops.GELU_SIGMOID_COEF) * (1 + 1e-9))
        scales[name] = s
    return scales, zeros


def quantize_bias(lin: Linear, s_x: float, s_w: torch.Tensor, name: str, acc_bits: int = 32,
                  zero_fold: torch.Tensor | None = None) -> torch.Tensor:
    """The bias at the accumulator scale ``s_x·s_w`` plus ``zero_fold`` (the input's
    ``ops.zero_point_correction``); it must fit the accumulator (int32, or int64 for a 16-bit input,
    ``quantize.layout``)."""
    b = torch.zeros(lin.weight.shape[0], dtype=torch.int64) if lin.bias is None \
        else torch.round(lin.bias.detach().double() / (s_x * s_w)).to(torch.int64)
    if zero_fold is not None:
        b = b + zero_fold
    if int(b.abs().max()) >= 2**(acc_bits - 1):
        raise ValueError(f"bias of '{name}' does not fit int{acc_bits} at scale s_x·s_w; "
                         "the input range of this layer is too small (check calibration)")
    return b


def _mul(prefix: str, ratio, out: P, max_shift=ops.requant.MAX_SHIFT) -> None:
    try:
        m, e = ops.dyadic_multiplier(ratio, max_shift)
    except ValueError as exc:
        raise ValueError(f"requant {prefix}: {exc}; a scale upstream of it is degenerate (an all-zero or "
                         "exploding range?)") from None
    out[prefix + ".m"], out[prefix + ".e"] = m, e


def freeze(spec: ViTSpec, scales: dict[str, float], temperatures: dict | None = None,
           balance: dict | None = None, bits: dict[str, int] | None = None, gelu: str = "shift",
           zeros: dict[str, int] | None = None) -> P:
    """All integer tensors of the integer model, by name (see ``IntegerViT.forward_int``).

    ``temperatures`` (``{"blocks.i": [α_h per head]}``) and ``balance``
    (``{"blocks.i.resid1": β, ...}``) are the QuantVLA-style corrections of
    ``quantize.scale_matching``, folded into the dyadic multipliers: α_h
    scales head h's ``Q·Kᵀ`` requant (which then holds one multiplier per
    head, shape ``[H, 1, 1]``), β the residual branch's requant. Absent
    entries mean 1; the graph's ops are the same either way.

    ``gelu`` picks the GELU form (``ops.GELU_MODES``): ``"table"`` stores the
    256-entry ``ops.gelu_table`` from the fc1 scale to the GELU output scale
    (``blocks.i.gelu.table``); ``"shift"`` is I-ViT's ShiftGELU (``gelu.x0``)
    followed by the ``gelu.rq`` requant.

    ``zeros`` are the points' zero points (``act_grids``; absent = 0): a
    requant producing such a point adds ``zero·2**e`` to its offset (the
    LayerNorm's with its β), the GELU table adds it to every entry, and the
    linear reading the point folds ``−zero·Σw`` into its bias.
    """
    if gelu not in ops.GELU_MODES:
        raise ValueError(f"unknown GELU form {gelu!r}; choose one of {ops.GELU_MODES}")
    temperatures, balance, zeros = temperatures or {}, balance or {}, zeros or {}
    wide = {n for n, b in (bits or {}).items() if b > 8}      # linears whose input is 16-bit
    p: P = {}
    S = scales
    d = spec.dim

    def linear(name: str, lin: Linear, s_x: float, input_point: str = "") -> torch.Tensor:
        s_w = weight_scale(lin.weight)
        acc_bits = 64 if input_point in wide else 32
        if acc_bits == 32:
            ops.check_accumulator_fits(lin.weight.shape[1], f"linear layer {name}")
        p[name + ".w"] = quantize_weight(lin.weight, s_w)
        zero = zeros.get(input_point, 0)
        p[name + ".b"] = quantize_bias(lin, s_x, s_w, name, acc_bits,
                                       ops.zero_point_correction(p[name + ".w"], zero) if zero else None)
        return s_x * s_w                                   # accumulator scale per channel

    def requant_to(name: str, ratio, point: str) -> None:
        """The dyadic requant ``name`` onto ``point``'s grid: its zero point is the offset (if any)."""
        zero = zeros.get(point, 0)
        _mul(name, ratio, p, ops.max_shift_for_offset(zero) if zero else ops.requant.MAX_SHIFT)
        if zero:
            p[name + ".offset"] = ops.offset_for(torch.full_like(p[name + ".e"], zero, dtype=torch.float64),
                                                 p[name + ".e"])

    def layernorm(name: str, norm, s_out: float) -> None:
        # γ goes into the per-channel multiplier, β (plus the zero point) into the offset at scale
        # s_out / 2**e; the shift is capped per channel so that offset stays within 2**60 (small γ, large β).
        ratio = norm.weight.detach().double() * ops.layernorm_output_scale(d) / s_out
        beta = norm.bias.detach().double() / s_out + zeros.get(name, 0)
        _mul(name, ratio, p, ops.max_shift_for_offset(beta))
        p[name + ".offset"] = ops.offset_for(beta, p[name + ".e"])

    acc = linear("patch_embed", spec.patch_embed, S["input"])
    _mul("patch_embed.rq", acc / S["embed"], p)
    p["embed.pos"] = torch.round(spec.pos_patches.detach().double() / S["embed"]).to(torch.int64)
    p["embed.prefix"] = ops.saturate(
        torch.round(spec.prefix_tokens.detach().double() / S["embed"]).to(torch.int64), 16)

    s_res = S["embed"]
    if spec.pre_norm is not None:                  # the residual stream starts at the pre-LayerNorm's output
        layernorm("norm_pre", spec.pre_norm, S["norm_pre"])
        s_res = S["norm_pre"]
    for i, blk in enumerate(spec.blocks):
        b = f"blocks.{i}."
        dh = d // blk.num_heads
        layernorm(b + "norm1", blk.norm1, S[b + "norm1"])
        acc = linear(b + "qkv", blk.qkv, S[b + "norm1"], b + "norm1")
        s_qkv = torch.cat([torch.full((d,), S[b + n], dtype=torch.float64) for n in ("q", "k", "v")])
        _mul(b + "qkv.rq", acc / s_qkv, p)
        ratio = S[b + "q"] * S[b + "k"] / (math.sqrt(dh) * S[b + "logits"])
        alpha = temperatures.get(f"blocks.{i}")
        if alpha is not None:
            if len(alpha) != blk.num_heads:
                raise ValueError(f"blocks.{i}: {len(alpha)} attention temperatures for {blk.num_heads} heads")
            ratio = ratio * torch.tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)
        _mul(b + "logits.rq", ratio, p)
        x0 = ops.shiftexp_x0(S[b + "logits"])
        ops.check_shiftexp_constants(x0, ops.SHIFTMAX_N)
        p[b + "softmax.x0"] = torch.tensor(x0)
        requant_to(b + "ctx.rq", 2.0**-15 * S[b + "v"] / S[b + "ctx"], b + "ctx")
        acc = linear(b + "proj", blk.proj, S[b + "ctx"], b + "ctx")
        _mul(b + "resid1.skip", s_res / S[b + "resid1"], p)
        _mul(b + "resid1.branch", acc * balance.get(b + "resid1", 1.0) / S[b + "resid1"], p)
        s_res = S[b + "resid1"]
        layernorm(b + "norm2", blk.norm2, S[b + "norm2"])
        acc = linear(b + "fc1", blk.fc1, S[b + "norm2"], b + "norm2")
        requant_to(b + "fc1.rq", acc / S[b + "fc1"], b + "fc1")
        if gelu == "table":
            p[b + "gelu.table"] = ops.gelu_table(S[b + "fc1"], S[b + "gelu"], (bits or {}).get(b + "gelu", 8),
                                                 zeros.get(b + "gelu", 0), zero_in=zeros.get(b + "fc1", 0),
                                                 act=spec.act)
        else:
            check_gelu_mode(spec, gelu)
            x0 = ops.shiftexp_x0(ops.GELU_SIGMOID_COEF * S[b + "fc1"])
            ops.check_shiftexp_constants(x0, ops.SHIFTGELU_N)
            p[b + "gelu.x0"] = torch.tensor(x0)
            requant_to(b + "gelu.rq", S[b + "fc1"] * 2.0**-7 / S[b + "gelu"], b + "gelu")
        acc = linear(b + "fc2", blk.fc2, S[b + "gelu"], b + "gelu")
        _mul(b + "resid2.skip", s_res / S[b + "resid2"], p)
        _mul(b + "resid2.branch", acc * balance.get(b + "resid2", 1.0) / S[b + "resid2"], p)
        s_res = S[b + "resid2"]

    if spec.final_norm is not None:
        layernorm("norm", spec.final_norm, S["norm"])
    if spec.head is not None:
        if spec.final_norm is None:
            raise ValueError("a classification head needs a final LayerNorm before it "
                             "(its int8 input); this model has none")
        p["head.out_scale"] = linear("head", spec.head, S["norm"], "norm").to(torch.float64)
    return p


def stand_in_spec(spec: ViTSpec) -> ViTSpec:
    """``spec``'s structure with every tensor replaced by one of its shape — weights (linear and LayerNorm) 1,
    biases and embeddings 0 — so ``freeze`` runs on a shape-only spec (one loaded without float weights) and
    tells which integer tensors, of which shapes and dtypes, that structure has."""
    def lin(x: Linear) -> Linear:
        return Linear(torch.ones(x.weight.shape), None if x.bias is None else torch.zeros(x.bias.shape))

    def norm(x: Norm | None) -> Norm | None:
        return None if x is None else Norm(torch.ones(x.weight.shape), torch.zeros(x.bias.shape), x.eps)
    blocks = [dataclasses.replace(b, norm1=norm(b.norm1), qkv=lin(b.qkv), proj=lin(b.proj), norm2=norm(b.norm2),
                                  fc1=lin(b.fc1), fc2=lin(b.fc2)) for b in spec.blocks]
    return dataclasses.replace(spec, patch_embed=lin(spec.patch_embed), blocks=blocks,
                               prefix_tokens=torch.zeros(spec.prefix_tokens.shape),
                               pos_patches=torch.zeros(spec.pos_patches.shape), final_norm=norm(spec.final_norm),
                               pre_norm=norm(spec.pre_norm), head=None if spec.head is None else lin(spec.head))


def param_domain_error(params: P, bits: dict[str, int] | None = None) -> str | None:
    """Which integer tensor (the first, by name) holds values outside the domain its op is defined on, or None.

    What ``freeze`` writes always lies inside (``ops``): every requant's ``(m, e)`` as ``dyadic_multiplier``
    gives them (``ops.check_dyadic``), offsets within ``ops.check_requant_bounds``, int8 weights in
    ``[−127, 127]``, a GELU table within its output point's width (``bits``; default 8), ShiftExp's ``x0``
    within ``ops.check_shiftexp_constants``. A file whose tensors were rewritten with matching digests can hold
    anything; out of the domain, backends that agree on every frozen model (a shift of 100 bits, a zero ``x0``)
    no longer agree, or fail mid-run.
    """
    def check(name: str, t: torch.Tensor) -> None:
        kind = name.rsplit(".", 1)[-1]
        if kind == "m":
            ops.check_dyadic(t, params.get(name[:-1] + "e", torch.ones(1, dtype=torch.int64)), name[:-2])
        elif kind == "e":
            ops.check_dyadic(params.get(name[:-1] + "m", torch.zeros(1, dtype=torch.int64)), t, name[:-2])
        elif kind == "offset":
            ops.check_requant_bounds(t)
        elif kind in ("w", "table") and t.numel():
            lo, hi = (-127, 127) if kind == "w" else ops.signed_range((bits or {}).get(name[:-len(".table")], 8))
            if not (lo <= int(t.min()) and int(t.max()) <= hi):
                raise ValueError(f"values in [{int(t.min())}, {int(t.max())}], outside [{lo}, {hi}]")
        elif kind == "x0":
            for x0 in t.reshape(-1).tolist():
                ops.check_shiftexp_constants(int(x0), ops.SHIFTMAX_N if name.endswith("softmax.x0")
                                             else ops.SHIFTGELU_N)
    for name in sorted(params):
        try:
            check(name, params[name])
        except ValueError as exc:
            return f"integer tensor '{name}': {exc}"
    return None


def check_gelu_mode(spec: ViTSpec, gelu: str) -> None:
    """ShiftGELU approximates the exact GELU only; a model with another activation needs the table."""
    if gelu == "shift" and spec.act != "gelu":
        raise ValueError(f"ShiftGELU (gelu='shift') approximates the exact GELU; this model's activation is "
                         f"{spec.act}: quantize it with gelu='table'")


def output_point(spec: ViTSpec) -> str:
    """The quant point a headless model outputs (its tokens)."""
    if spec.final_norm is not None:
        return "norm"
    return f"blocks.{len(spec.blocks) - 1}.resid2" if spec.blocks else stream_start(spec)
