"""PTQ vs QAT on the embedded Fashion-MNIST ViT: FP32, INT8 after PTQ, INT8 after ``intvit.qat``.

    python -m intvit.bench.qat_eval --train 16384 --epochs 2 --lr 2e-5 --loss ce     # the defaults

1. PTQ: ``intvit.quantize`` with ``--recipe`` on the 512 shipped calibration images.
2. QAT: ``intvit.qat`` from that PTQ model on ``--train`` Fashion-MNIST training images:
   from the Debian package ``dataset-fashion-mnist`` when it is installed (a seeded random
   subset of the 60k), else the 512 shipped calibration images. ``--loss kd`` distils from
   the float weights (no labels); ``ce`` trains on the labels.
3. Scores FP32, PTQ INT8 and QAT INT8 (integer mode) on the 2,000 shipped test images (which
   come from the test split, disjoint from all training and calibration images) and writes a
   JSON file.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import intvit
from intvit.models import fmnist
from intvit.quantize.metrics import compare
from .record import command_line, write_record


def training_images(n: int, seed: int = 0):
    """``(images, labels, source)``: ``n`` preprocessed training images with labels."""
    try:
        from intvit.models.img_focus import load_fashion_mnist_idx
        x, y = load_fashion_mnist_idx("train")
        pick = np.random.default_rng(seed).permutation(x.shape[0])[:n]
        return fmnist.preprocess(x[pick]), torch.from_numpy(y[pick].astype(np.int64)), "fashion-mnist train (Debian)"
    except FileNotFoundError:
        z = np.load(fmnist.PACKAGE_DIR / fmnist.DATA_FILE)
        x, y = z["calib_images"][:n], z["calib_labels"][:n]
        return fmnist.preprocess(x), torch.from_numpy(y.astype(np.int64)), "shipped calibration images"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="minmax")
    ap.add_argument("--train", type=int, default=16384, help="training images (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--loss", choices=["kd", "ce"], default="ce")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/qat_fmnist.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = fmnist.load_model()
    test_x, test_y = fmnist.load_test_set()
    ptq = intvit.quantize(model, fmnist.load_calibration_set(), intvit.QuantConfig(recipe=args.recipe, progress=False))
    before = compare(lambda x: model(x).logits, ptq, test_x, test_y, progress=False)
    x, y, source = training_images(args.train)
    t0 = time.perf_counter()
    tuned = intvit.qat(ptq, (x, y) if args.loss == "ce" else x, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch, progress=False)
    seconds = time.perf_counter() - t0
    after = compare(lambda x: model(x).logits, tuned, test_x, test_y, progress=False)
    report = {"model": "fmnist-vit (embedded)", "recipe": args.recipe, "train_images": int(x.shape[0]),
              "train_source": source, "epochs": args.epochs, "lr": args.lr, "loss": args.loss,
              "batch": args.batch, "qat_seconds": round(seconds, 1), "test_images": int(test_x.shape[0]),
              "fp32_top1": before["fp32_top1"], "ptq_int8_top1": before["int8_top1"],
              "qat_int8_top1": after["int8_top1"], "ptq_agreement": before["top1_agreement"],
              "qat_agreement": after["top1_agreement"], "ptq_sqnr_db": before["sqnr_db"],
              "qat_sqnr_db": after["sqnr_db"], "history": tuned.meta["qat"]["history"]}
    print(f"FP32 {100 * report['fp32_top1']:.2f} %   PTQ INT8 {100 * report['ptq_int8_top1']:.2f} %   "
          f"QAT INT8 {100 * report['qat_int8_top1']:.2f} %   ({args.loss}, {x.shape[0]} images from {source}, "
          f"{args.epochs} epochs, lr {args.lr}, {seconds:.0f} s)")
    write_record(args.out, report, command_line("intvit.bench.qat_eval", argv))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
