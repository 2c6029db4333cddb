"""Where does a quantized model's output error come from? (``intvit analyze --attribution``)

Every row compares an output with the float model's on the same images
(SQNR in dB, higher is better; top-1 agreement for classifier outputs). The
output is the model's own (logits, or tokens for a backbone) or, with
``readout``, what a user's head makes of it. Four views:

* **integer** — the integer model itself (``forward_int``).
* **take one out** — the integer model with *one* integer approximation
  replaced by its float version, everything else integer: Shiftmax → float
  softmax on the dequantized logits (probabilities rounded to the same
  2^-15 grid), the GELU (table or ShiftGELU) → float GELU rounded to the GELU
  output's grid, I-LayerNorm → float LayerNorm (with γ, β, eps) rounded to
  its output's grid; all three at once; and the 16-bit residual stream
  widened by 8 bits (24-bit, every residual requant 2^8 finer). The gain over
  the integer row is what that approximation costs.
* **add one in** — the float model with only one group of quantization
  points rounded to its integer grid (``fake_quant``), float nonlinears:
  the int8 weights; the 8-bit GEMM inputs (input, LayerNorm outputs, ctx, GELU
  output); the GELU input (fc1's output); the attention operands (q, k, v and the 16-bit logits); the 16-bit
  residual stream; everything.
* **residual stream, per block** — in the float model, each branch update
  (attention, MLP) against the residual stream's integer step ``s_resid``:
  the update's RMS in steps, and the share of its elements smaller than half
  a step (rounded away entirely when the stream is requantized).

Per quant point, ``quantize.sensitivity`` ranks single points (``points=True``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..models.spec import float_forward, layernorm_at, layernorm_input_point, quant_points
from .metrics import sqnr_db
from .fake_quant import fake_quant, fake_quant_weight
from .integer_model import IntegerViT

WIDE_RESIDUAL_BITS = 8          # extra bits of the widened residual stream in the take-one-out row
NONLINEARS = (("softmax", "Shiftmax → float softmax"), ("gelu", "GELU → float GELU"),
              ("layernorm", "I-LayerNorm → float LayerNorm"))


class SubstitutedViT(IntegerViT):
    """An ``IntegerViT`` with chosen integer approximations replaced by float ones (analysis only).

    ``float_ops`` ⊂ {"softmax", "gelu", "layernorm"}; ``wide_residual`` widens
    the residual stream by ``WIDE_RESIDUAL_BITS`` (every residual requant that
    much finer, int24 saturation). Built from a model's spec, ranges and meta,
    so its integer tensors are the model's own.
    """

    def __init__(self, model: IntegerViT, float_ops=(), wide_residual: bool = False):
        super().__init__(model.spec, model.amax, model.meta)
        self.float_ops, self.wide_residual = frozenset(float_ops), wide_residual
        if wide_residual and (model.spec.final_norm is None or model.spec.pre_norm is not None):
            raise ValueError("widening the residual stream needs a final LayerNorm (it rescales the stream) and "
                             "no pre-LayerNorm (the stream would start on its 16-bit grid)")

    def _on_grid(self, x: torch.Tensor, point: str) -> torch.Tensor:
        return ops.quantize_float(x, self.scales[point], self.bits[point], self.zeros[point])

    def _softmax_int(self, logits, pre):
        if "softmax" not in self.float_ops:
            return super()._softmax_int(logits, pre)
        probs = torch.softmax(logits.double() * self.scales[pre + "logits"], dim=-1)
        return ops.saturate(torch.round(probs * 2.0**15).to(torch.int64), 16)

    def _gelu_int(self, f, pre):
        if "gelu" not in self.float_ops:
            return super()._gelu_int(f, pre)
        v = (f - self.zeros[pre + "fc1"]).double() * self.scales[pre + "fc1"]
        return self._on_grid(F.gelu(v) if self.spec.act == "gelu" else ops.ACTIVATIONS[self.spec.act](v), pre + "gelu")

    def _layernorm_int(self, h, name):
        if "layernorm" not in self.float_ops:
            return super()._layernorm_int(h, name)
        norm = layernorm_at(self.spec, name)
        step = self.scales[layernorm_input_point(self.spec, name)] / (2.0**WIDE_RESIDUAL_BITS if self.wide_residual
                                                                       else 1.0)
        y = F.layer_norm(h.double() * step, (h.shape[-1],), norm.weight.double(), norm.bias.double(), norm.eps)
        return self._on_grid(y, name)

    def _embed_int(self, x):
        if not self.wide_residual:
            return super()._embed_int(x)
        p, spec, k = self.p, self.spec, WIDE_RESIDUAL_BITS
        step = self.scales["embed"] / 2.0**k
        acc = ops.int_linear(ops.patchify(x, spec.patch_size), p("patch_embed.w"), p("patch_embed.b"))
        tok = ops.rescale(acc, p("patch_embed.rq.m") << k, p("patch_embed.rq.e")) \
            + torch.round(spec.pos_patches.detach().double() / step).to(torch.int64)
        prefix = torch.round(spec.prefix_tokens.detach().double() / step).to(torch.int64)
        return ops.saturate(torch.cat([prefix.expand(x.shape[0], -1, -1), tok], dim=1), 16 + k)

    def _residual_int(self, h, branch_acc, name):
        if not self.wide_residual:
            return super()._residual_int(h, branch_acc, name)
        p, k = self.p, WIDE_RESIDUAL_BITS
        return ops.saturate(ops.rescale(h, p(name + ".skip.m"), p(name + ".skip.e"))
                            + ops.rescale(branch_acc, p(name + ".branch.m") << k, p(name + ".branch.e")), 16 + k)


def _score(out: torch.Tensor, ref: torch.Tensor) -> dict:
    row = {"sqnr_db": sqnr_db(out, ref)}
    if ref.dim() == 2:
        row["top1_agreement"] = float((out.argmax(1) == ref.argmax(1)).float().mean())
    return row


@torch.no_grad()
def attribute(qmodel: IntegerViT, images: torch.Tensor, readout=None, batch_size: int = 16,
              progress=None) -> dict:
    """The attribution report of ``qmodel`` on ``images`` (see the module docstring) as a JSON-ready dict.

    ``readout(output) -> tensor`` maps the model's float output (logits, or tokens) to what is compared;
    ``progress(line)`` is told about each row as it finishes.
    """
    output = "readout" if readout is not None else "model output"
    readout = readout or (lambda out: out)
    spec = qmodel.spec
    say = progress or (lambda line: None)

    def over(fn):
        return torch.cat([readout(fn(images[i:i + batch_size])) for i in range(0, images.shape[0], batch_size)])

    ref = over(lambda x: float_forward(spec, x))
    report = {"images": int(images.shape[0]), "output": output}
    report["integer"] = _score(over(lambda x: qmodel.dequantize(qmodel.forward_int(x))), ref)
    say(f"integer model: {report['integer']['sqnr_db']:.2f} dB")

    take_out = []
    variants = [((op,), False, label) for op, label in NONLINEARS]
    variants.append((tuple(op for op, _ in NONLINEARS), False, "all three → float"))
    if spec.final_norm is not None and spec.pre_norm is None:
        variants.append(((), True, f"residual stream 16 → {16 + WIDE_RESIDUAL_BITS} bits"))
    for float_ops, wide, label in variants:
        sub = SubstitutedViT(qmodel, float_ops, wide)
        row = {"name": label, "float_ops": list(float_ops), "wide_residual": wide,
               **_score(over(lambda x: sub.dequantize(sub.forward_int(x))), ref)}
        row["gain_db"] = row["sqnr_db"] - report["integer"]["sqnr_db"]
        take_out.append(row)
        say(f"take one out: {label}: {row['sqnr_db']:.2f} dB ({row['gain_db']:+.2f})")
    report["take_one_out"] = take_out

    bits, scales = qmodel.bits, qmodel.scales
    groups = {
        "weights (int8 per channel)": ((), True),
        "8-bit GEMM inputs": (tuple(n for n, b in quant_points(spec) if n.split(".")[-1] in
                                    ("input", "norm1", "ctx", "norm2", "gelu", "norm")), False),
        "GELU input (fc1 output)": (tuple(n for n, _ in quant_points(spec) if n.endswith(".fc1")), False),
        "attention operands (q, k, v, logits)": (tuple(n for n, _ in quant_points(spec) if n.split(".")[-1] in
                                                       ("q", "k", "v", "logits")), False),
        "residual stream (16-bit)": (tuple(n for n, _ in quant_points(spec) if n.split(".")[-1] in
                                           ("embed", "norm_pre", "resid1", "resid2")), False),
        "everything (fake-quant model)": (tuple(bits), True),
    }
    add_in = []
    for label, (points, weights) in groups.items():
        chosen = set(points)

        def hook(n, x, chosen=chosen):
            return fake_quant(x, scales[n], bits[n], qmodel.zeros[n]) if n in chosen else x

        def wfn(n, w, weights=weights):
            return fake_quant_weight(w) if weights else w
        row = {"name": label, "points": len(chosen), "weights": weights,
               **_score(over(lambda x: float_forward(spec, x, hook, wfn)), ref)}
        add_in.append(row)
        say(f"add one in: {label}: {row['sqnr_db']:.2f} dB")
    report["add_one_in"] = add_in
    report["residual_updates"] = residual_updates(qmodel, images, batch_size)
    return report


@torch.no_grad()
def residual_updates(qmodel: IntegerViT, images: torch.Tensor, batch_size: int = 16) -> list[dict]:
    """Per block and branch, the float update against the residual stream's step ``s_resid``."""
    spec, scales = qmodel.spec, qmodel.scales
    stats: dict[str, list] = {}
    for i in range(0, images.shape[0], batch_size):
        prev = {}

        def hook(n, x):
            point = n.rsplit(".", 1)[-1]
            if point in ("resid1", "resid2"):
                update = (x - prev["h"]).double()
                step = scales[n]
                s = stats.setdefault(n, [0.0, 0, 0, 0.0])
                s[0] += float((update * update).sum())
                s[1] += update.numel()
                s[2] += int((update.abs() < step / 2).sum())
                s[3] = max(s[3], float(x.abs().max()) / step)
            if point in ("embed", "norm_pre", "resid1", "resid2"):
                prev["h"] = x
            return x
        float_forward(spec, images[i:i + batch_size], hook)
    rows = []
    for name, (ss, n, small, peak) in stats.items():
        step = scales[name]
        rows.append({"name": name, "step": step, "update_rms_steps": (ss / n) ** 0.5 / step,
                     "below_half_step": small / n, "stream_peak_steps": peak})
    return rows


def format_attribution(report: dict) -> str:
    def agree(row):
        return f"   agree {100 * row['top1_agreement']:5.1f} %" if "top1_agreement" in row else ""
    lines = [f"error attribution on {report['images']} images: SQNR against the float model (higher is better)",
             f"  {'integer model (everything integer)':44} {report['integer']['sqnr_db']:7.2f} dB"
             + agree(report["integer"]),
             "  take one out (this part float, everything else integer):"]
    for r in report["take_one_out"]:
        lines.append(f"    {r['name']:42} {r['sqnr_db']:7.2f} dB ({r['gain_db']:+6.2f}){agree(r)}")
    lines.append("  add one in (only this group quantized, the rest float):")
    for r in report["add_one_in"]:
        lines.append(f"    {r['name']:42} {r['sqnr_db']:7.2f} dB{agree(r)}")
    lines.append("  residual stream: branch update vs the stream's integer step (float model)")
    lines.append(f"    {'point':20} {'update RMS':>12} {'< step/2':>9} {'stream peak':>12}")
    for r in report["residual_updates"]:
        lines.append(f"    {r['name']:20} {r['update_rms_steps']:9.1f} st {100 * r['below_half_step']:8.1f}% "
                     f"{r['stream_peak_steps']:9.0f} st")
    return "\n".join(lines)


def plot_attribution(report: dict, path) -> str:
    """Bar chart of every take-one-out and add-one-in row's SQNR, with the integer model's as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [("take out: " + r["name"], r["sqnr_db"], "tab:green") for r in report["take_one_out"]]
    rows += [("only: " + r["name"], r["sqnr_db"], "tab:blue") for r in report["add_one_in"]]
    rows = rows[::-1]
    fig, ax = plt.subplots(figsize=(8.5, 0.34 * len(rows) + 1.4))
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=[r[2] for r in rows])
    base = report["integer"]["sqnr_db"]
    ax.axvline(base, color="tab:red", linestyle="--", label=f"integer model {base:.1f} dB")
    ax.set_xlabel("output SQNR against the float model (dB, higher is better)")
    ax.set_title("intvit analyze --attribution\ngreen: this approximation made float, the rest integer; "
                 "blue: only this group quantized", fontsize=8, loc="right")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
