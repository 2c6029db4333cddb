"""Per-layer sensitivity: quantize one point at a time and measure what it costs.

For every activation quant point and every weight-bearing layer of a
quantized model, run the float network with *only that one* tensor rounded to
its integer grid (``quantize.fake_quant``; everything else float) and compare
the output with the all-float output: SQNR in dB and, for classifiers, top-1
agreement. The ranking (lowest SQNR first) says where quantization error comes
from, and which layers a mixed-precision layout should keep wider.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..models.spec import float_forward, linear_layers, quant_points
from .metrics import sqnr_db
from .fake_quant import fake_quant, fake_quant_weight


@torch.no_grad()
def layer_sensitivity(qmodel, images: torch.Tensor, progress: bool = True) -> list[dict]:
    """Ranked list of ``{"name", "kind", "bits", "sqnr_db", "top1_agreement"}``, worst first."""
    spec, scales = qmodel.spec, qmodel.scales
    ref = float_forward(spec, images)
    bits = getattr(qmodel, "bits", None) or dict(quant_points(spec))    # the model's layout (quantize.layout)
    candidates = [("activation", n) for n in bits] + [("weight", n) for n in linear_layers(spec)]
    rows = []
    for kind, name in tqdm(candidates, desc="sensitivity", unit="point", disable=not progress, leave=False):
        if kind == "activation":
            def hook(n, x, name=name):
                return fake_quant(x, scales[n], bits[n], qmodel.zeros[n]) if n == name else x
            out = float_forward(spec, images, hook)
        else:
            def wfn(n, w, name=name):
                return fake_quant_weight(w) if n == name else w
            out = float_forward(spec, images, wfn=wfn)
        row = {"name": name, "kind": kind, "bits": bits.get(name, 8), "sqnr_db": sqnr_db(out, ref)}
        if ref.dim() == 2:
            row["top1_agreement"] = float((out.argmax(1) == ref.argmax(1)).float().mean())
        rows.append(row)
    return sorted(rows, key=lambda r: r["sqnr_db"])


def format_sensitivity(rows: list[dict], top: int = 15) -> str:
    lines = [f"{'rank':>4}  {'quant point':28} {'kind':10} {'bits':>4} {'SQNR dB':>8}  agreement"]
    for i, r in enumerate(rows[:top], 1):
        agree = f"{100 * r['top1_agreement']:.1f} %" if "top1_agreement" in r else "-"
        lines.append(f"{i:4d}  {r['name']:28} {r['kind']:10} {r['bits']:4d} {r['sqnr_db']:8.2f}  {agree}")
    return "\n".join(lines)


def plot_sensitivity(rows: list[dict], path, top: int = 15) -> str:
    """Horizontal bar chart of the ``top`` most sensitive points' SQNR (lower = more sensitive) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = rows[:top][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(shown) + 1.2))
    colors = ["tab:red" if r["kind"] == "activation" else "tab:blue" for r in shown]
    ax.barh([f"{r['name']} ({r['kind'][0]}{r['bits']})" for r in shown], [r["sqnr_db"] for r in shown], color=colors)
    ax.set_xlabel("output SQNR (dB) with only this point quantized — lower is more sensitive")
    ax.set_title(f"intvit analyze: {len(shown)} most sensitive quant points (red: activation, blue: weight)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
