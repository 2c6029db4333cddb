"""Clipping: how many values each quant point's integer grid cuts off, on the images you give it.

A grid's range is what the calibration images held (min-max by default). An
image unlike them — another domain, another camera, another exposure — can
produce larger values, which the integer model saturates at the grid's ends
without a word. On the saliency task (README, "Calibrated on another
domain's images") a model calibrated on grey Fashion-MNIST clipped 1.2·10⁻⁴
of its 8-bit values on colour photos, 60× what the photo-calibrated model
clipped, and lost 4 dB of output SQNR.

``clipped_fractions(qmodel, images)`` runs the integer model on ``images``
and counts, per point, the values that fell outside the grid before they were
saturated:

* the input quantizer (``input``): ``round(x / S)`` outside int8;
* every saturating requant (``blocks.i.norm1``, ``blocks.i.qkv.rq``, ...):
  ``ops.rescale`` of its accumulator outside the point's ``bits``;
* every residual add (``blocks.i.resid1``/``resid2``): the sum of the two
  rescaled branches outside int16.

Nothing in the model changes: its methods are wrapped on the instance for the
run (``sanity.wrapped_methods``, as ``sanity.record_points`` does), and the values it returns are the
ones it computes anyway. ``intvit analyze --clipping`` prints the report.
"""
from __future__ import annotations

import contextlib

import torch

from .. import ops
from .sanity import wrapped_methods

#: A point clipping more than this fraction of its values is named in the verdict. Measured: in-domain images
#: clipped at most 4.6e-5 (DINOv2, photo crops) and 1.5e-4 (the embedded model) per point; the
#: fmnist-calibrated DINOv2 on photos had 6 points above 6e-4 (up to 3.2e-3).
CLIPPING_NOTE = 5e-4


@contextlib.contextmanager
def count_clipping(qmodel):
    """Within this context, ``qmodel``'s integer forward adds, per point, ``[values clipped, values]`` to the
    yielded dict (in forward order)."""
    counts: dict[str, list[int]] = {}

    def note(name: str, value: torch.Tensor, bits: int) -> None:
        lo, hi = ops.signed_range(bits)
        row = counts.setdefault(name, [0, 0])
        row[0] += int(((value < lo) | (value > hi)).sum())
        row[1] += value.numel()

    def requant(f):
        def run(z, name, bits):
            note(name, ops.rescale(z, qmodel.p(name + ".m"), qmodel.p(name + ".e"), qmodel.requant_offset(name)), bits)
            return f(z, name, bits)
        return run

    def residual(f):
        def run(h, acc, name):
            p = qmodel.p
            note(name, ops.rescale(h, p(name + ".skip.m"), p(name + ".skip.e"))
                 + ops.rescale(acc, p(name + ".branch.m"), p(name + ".branch.e")), 16)
            return f(h, acc, name)
        return run

    def quantize_input(f):
        def run(images):
            # the same quantizer on a 32-bit grid: the 8-bit codes before saturation
            note("input", ops.quantize_float(images.float(), qmodel.scales["input"], 32), 8)
            return f(images)
        return run

    with wrapped_methods(qmodel, {"_requant": requant, "_residual_int": residual, "quantize_input": quantize_input}):
        yield counts


@torch.no_grad()
def clipped_fractions(qmodel, images: torch.Tensor, batch_size: int = 32) -> dict[str, dict]:
    """``{point: {"clipped": n, "values": total, "fraction": n / total}}`` over ``images``, in forward order."""
    with count_clipping(qmodel) as counts:
        for i in range(0, images.shape[0], batch_size):
            qmodel.forward_int(images[i:i + batch_size])
    return {name: {"clipped": c, "values": n, "fraction": c / n if n else 0.0} for name, (c, n) in counts.items()}


def summarize(report: dict[str, dict]) -> dict:
    """Totals over all points and the points above ``CLIPPING_NOTE``, worst first."""
    clipped = sum(r["clipped"] for r in report.values())
    values = sum(r["values"] for r in report.values())
    over = sorted((name for name, r in report.items() if r["fraction"] > CLIPPING_NOTE),
                  key=lambda name: -report[name]["fraction"])
    return {"clipped": clipped, "values": values, "fraction": clipped / values if values else 0.0,
            "points_over_note": over}


def format_clipping(report: dict[str, dict], top: int = 15, headroom: float = 1.0, widenable=()) -> str:
    """The ``top`` points that clip the most, and a verdict line; ``headroom`` is the model's LayerNorm-output
    headroom (``calibration.headroom``), named when points it widens (``widenable``) are among those that clip."""
    s = summarize(report)
    worst = sorted(report.items(), key=lambda kv: -kv[1]["fraction"])[:top]
    lines = [f"{'point':<28} {'clipped':>10} {'of values':>12} {'fraction':>10}"]
    lines += [f"{name:<28} {r['clipped']:>10} {r['values']:>12} {r['fraction']:>10.2e}" for name, r in worst]
    lines.append(f"all {len(report)} points: {s['clipped']} of {s['values']} values clipped ({s['fraction']:.2e})")
    if s["points_over_note"]:
        lines.append(f"{len(s['points_over_note'])} point(s) clip more than {100 * CLIPPING_NOTE:g} % of their values "
                     "on these images: their calibrated ranges do not cover them. If these are the images the model "
                     "will see, quantize it again with images like them in the calibration set")
        norms = [name for name in s["points_over_note"] if name in widenable]
        if norms:
            lines.append(f"{len(norms)} of them LayerNorm outputs ({', '.join(norms[:3])}{', …' if len(norms) > 3 else ''}): "
                         f"without such images, a larger --norm-headroom than this model's {headroom:g} widens "
                         "their ranges")
    else:
        lines.append(f"no point clips more than {100 * CLIPPING_NOTE:g} % of its values on these images")
    return "\n".join(lines)
