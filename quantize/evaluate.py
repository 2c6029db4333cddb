"""Quantization recipes (and peers' INT8) side by side on one model and data set: ``intvit eval``."""
from __future__ import annotations

import time

import torch

from .api import quantize
from .config import QuantConfig
from .metrics import scores


SCALE_MATCHING = {"ptq": {}, "atm": {"attention_temperature": True}, "ohb": {"output_balance": True},
                  "atm+ohb": {"attention_temperature": True, "output_balance": True}}
IVIT_BASELINE = ("intvit as I-ViT (ShiftGELU, symmetric, no migr.)",
                 {"gelu": "shift", "zero_points": (), "migration": (), "norm_headroom": 1.0})


class PeerUnavailable(RuntimeError):
    """An accuracy peer (another tool's INT8) cannot run here; the message says why."""


@torch.no_grad()
def evaluate_recipes(model, calib, images: torch.Tensor, labels: torch.Tensor | None,
                     recipes=("minmax", "percentile", "omse"), matching=("ptq", "atm", "ohb", "atm+ohb"),
                     batch_size: int = 250, progress=print, ivit: bool = False, peers: dict | None = None,
                     config: dict | None = None, headrooms=(), shifts: dict | None = None) -> list[dict]:
    """Quantize ``model`` once per recipe × scale-matching variant and score each integer model.

    The float logits are computed once; each row is ``scores`` plus
    ``recipe`` (e.g. ``"intvit percentile+ATM+OHB"``), ``calib_images`` and
    ``quantize_seconds``. ``ivit`` adds the I-ViT baseline (``IVIT_BASELINE``);
    ``peers`` (``{name: build(model, calib) -> logits_fn}``, ``bench.accuracy_peers``)
    adds other tools' INT8 on the same images and calibration set, or a row
    with ``unavailable`` when a builder raises ``PeerUnavailable``. ``config``
    holds further ``QuantConfig`` fields; ``headrooms`` (factors) makes each variant a row per
    ``norm_headroom`` (default: one row at QuantConfig's). ``shifts`` (``{name: images}``, e.g.
    ``bench.image_shifts.shifted_sets``) replaces ``images`` by several test sets: every model, quantized
    once, is scored on each against the float model on the same set, one row per set with its ``shift``.
    ``progress(line)`` reports each finished row (None: silent).
    """
    unknown = [m for m in matching if m not in SCALE_MATCHING]
    if unknown:
        raise ValueError(f"unknown scale matching {unknown}; choose from {list(SCALE_MATCHING)}")
    n_calib = calib.shape[0] if isinstance(calib, torch.Tensor) else None

    def logits(fn, x):
        out = [fn(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return torch.cat([o.logits if hasattr(o, "logits") else o for o in out])
    test_sets = shifts if shifts else {None: images}
    fp = {name: logits(model, x) for name, x in test_sets.items()}
    variants = [("intvit " + recipe + "".join("+" + part.upper() for part in m.split("+") if part != "ptq"),
                 {"recipe": recipe, **SCALE_MATCHING[m]}) for recipe in recipes for m in matching]
    if headrooms:
        variants = [(f"{name} headroom {h:g}", {**kwargs, "norm_headroom": h})
                    for name, kwargs in variants for h in headrooms]
    if ivit:
        variants.append(IVIT_BASELINE)
    rows = []

    def add(row):
        rows.append(row)
        if progress:
            progress(format_row(row, shift_column=bool(shifts)))

    def add_scored(name, fn, seconds, extra=None):
        for shift, x in test_sets.items():
            add({"recipe": name, **({"shift": shift} if shift is not None else {}), "calib_images": n_calib,
                 **scores(fp[shift], logits(fn, x), labels), "quantize_seconds": seconds, **(extra or {})})
    for name, kwargs in variants:
        t0 = time.perf_counter()
        qmodel = quantize(model, calib, QuantConfig(progress=False, **{**(config or {}), **kwargs}))
        seconds = round(time.perf_counter() - t0, 2)
        degenerate = qmodel.meta.get("degenerate_points") if hasattr(qmodel, "meta") else None
        add_scored(name, qmodel, seconds, {"degenerate_points": degenerate} if degenerate else None)
    for name, build in (peers or {}).items():
        t0 = time.perf_counter()
        try:
            fn = build(model, calib)
        except PeerUnavailable as exc:
            add({"recipe": name, "calib_images": n_calib, "unavailable": str(exc)})
            continue
        add_scored(name, fn, round(time.perf_counter() - t0, 2))
    return rows


SHIFT_WIDTH = 14


def format_row(row: dict, shift_column: bool = False) -> str:
    """One row of ``format_recipe_table``; ``shift_column``: the table has a column for the test set's shift."""
    calib = f"{row['calib_images']:>5}" if row.get("calib_images") is not None else f"{'—':>5}"
    if shift_column:
        calib = f"{row.get('shift', '—'):<{SHIFT_WIDTH}} {calib}"
    if "unavailable" in row:
        return f"{row['recipe']:<50} {calib}  unavailable: {row['unavailable']}"
    top1 = (f"{100 * row['fp32_top1']:6.2f} % {100 * row['int8_top1']:6.2f} % {100 * row['delta_top1']:+6.2f} pt"
            if "fp32_top1" in row else f"{'—':>8} {'—':>8} {'—':>9}")
    changed = f"{row['fixed']:>5} /{row['broken']:>4}" if "fixed" in row else f"{'—':>11}"
    warning = f"  constant points: {', '.join(row['degenerate_points'])}" if row.get("degenerate_points") else ""
    return (f"{row['recipe']:<50} {calib} {top1} {100 * row['top1_agreement']:7.2f} % {row['sqnr_db']:6.1f} dB "
            f"{changed}{warning}")


def format_recipe_table(rows: list[dict]) -> str:
    shift_column = any("shift" in r for r in rows)
    shift = f" {'shift':<{SHIFT_WIDTH}}" if shift_column else ""
    head = (f"{'recipe':<50}{shift} {'calib':>5} {'FP32':>8} {'INT8':>8} {'delta':>9} {'agree':>9} {'SQNR':>9} "
            f"{'fixed/broken':>12}")
    return "\n".join([head, "-" * len(head)] + [format_row(r, shift_column) for r in rows])
