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
    return scores(torch.cat(fp), torch.cat(iq), labels)


def scores(fp: torch.Tensor, iq: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """Top-1 of both, their delta, top-1 agreement and logit SQNR from two ``[N, classes]`` logit tensors."""
    out = {"images": int(fp.shape[0]),
           "top1_agreement": float((fp.argmax(1) == iq.argmax(1)).float().mean()),
           "sqnr_db": sqnr_db(iq, fp)}
    if labels is not None:
        out["fp32_top1"] = float((fp.argmax(1) == labels).float().mean())
        out["int8_top1"] = float((iq.argmax(1) == labels).float().mean())
        out["delta_top1"] = out["int8_top1"] - out["fp32_top1"]
    return out


SCALE_MATCHING = {"ptq": {}, "atm": {"attention_temperature": True}, "ohb": {"output_balance": True},
                  "atm+ohb": {"attention_temperature": True, "output_balance": True}}


@torch.no_grad()
def evaluate_recipes(model, calib, images: torch.Tensor, labels: torch.Tensor | None,
                     recipes=("minmax", "percentile", "omse"), matching=("ptq", "atm", "ohb", "atm+ohb"),
                     batch_size: int = 250, progress=print) -> list[dict]:
    """Quantize ``model`` once per recipe × scale-matching variant and score each integer model.

    The float logits are computed once; each row is ``scores`` plus
    ``recipe`` (e.g. ``"percentile+ATM+OHB"``) and ``quantize_seconds``.
    ``progress(line)`` reports each finished row (None: silent).
    """
    import time

    from .api import quantize
    from .config import QuantConfig
    unknown = [m for m in matching if m not in SCALE_MATCHING]
    if unknown:
        raise ValueError(f"unknown scale matching {unknown}; choose from {list(SCALE_MATCHING)}")

    def logits(fn):
        out = [fn(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        return torch.cat([o.logits if hasattr(o, "logits") else o for o in out])
    fp = logits(model)
    rows = []
    for recipe in recipes:
        for variant in matching:
            t0 = time.perf_counter()
            qmodel = quantize(model, calib, QuantConfig(recipe=recipe, progress=False, **SCALE_MATCHING[variant]))
            seconds = time.perf_counter() - t0
            name = recipe + "".join("+" + part.upper() for part in variant.split("+") if part != "ptq")
            row = {"recipe": name, **scores(fp, logits(qmodel), labels), "quantize_seconds": round(seconds, 2)}
            rows.append(row)
            if progress:
                progress(format_row(row))
    return rows


def format_row(row: dict) -> str:
    top1 = (f"{100 * row['fp32_top1']:6.2f} % {100 * row['int8_top1']:6.2f} % {100 * row['delta_top1']:+6.2f} pt"
            if "fp32_top1" in row else f"{'—':>8} {'—':>8} {'—':>9}")
    return f"{row['recipe']:<22} {top1} {100 * row['top1_agreement']:7.2f} % {row['sqnr_db']:6.1f} dB"


def format_recipe_table(rows: list[dict]) -> str:
    head = f"{'recipe':<22} {'FP32':>8} {'INT8':>8} {'delta':>9} {'agree':>9} {'SQNR':>9}"
    return "\n".join([head, "-" * len(head)] + [format_row(r) for r in rows])
