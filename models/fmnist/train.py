"""Train the embedded Fashion-MNIST ViT from scratch and write the shipped files.

Usage (from the repo root)::

    python -m intvit.models.fmnist.train --epochs 10 --out models/fmnist

Reads the raw IDX files of Fashion-MNIST (Debian package
``dataset-fashion-mnist`` installs them under
``/usr/share/datasets/fashion-mnist``), trains a
:class:`transformers.ViTForImageClassification` on CPU with AdamW and a
cosine learning-rate schedule, and writes ``config.json``,
``vit_fmnist.safetensors`` and ``data.npz`` into ``--out``. Seeded and
single-process (``torch.set_num_threads``) for reproducibility.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from intvit.models.fmnist import (
    CLASS_NAMES,
    CONFIG_FILE,
    DATA_FILE,
    MEAN,
    STD,
    WEIGHTS_FILE,
    preprocess,
)

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
N_TEST_SHIPPED = 2000
N_CALIB = 512


def read_idx(path: Path) -> np.ndarray:
    """Parse a (gzipped) IDX file into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: bad IDX magic")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: expected uint8 IDX data, got type 0x{dtype_code:02x}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: size mismatch {arr.size} vs {shape}")
    return arr.reshape(shape).copy()


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"train": "train", "test": "t10k"}[split]
    imgs = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    return imgs, labels


def make_config(intermediate_size: int):
    from transformers import ViTConfig

    return ViTConfig(
        image_size=28,
        patch_size=7,
        num_channels=1,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        qkv_bias=True,
        num_labels=10,
        id2label={i: n for i, n in enumerate(CLASS_NAMES)},
        label2id={n: i for i, n in enumerate(CLASS_NAMES)},
    )


def augment(batch_u8: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip on uint8 [B,28,28]."""
    b, h, w = batch_u8.shape
    padded = F.pad(batch_u8, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = dy[:, None] + torch.arange(h)[None, :]
    cols = dx[:, None] + torch.arange(w)[None, :]
    flip = torch.rand(b, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b)[:, None, None]
    return padded[bi, rows[:, :, None], cols[:, None, :]]


@torch.no_grad()
def evaluate(model, images_u8: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images_u8), batch):
        x = preprocess(images_u8[i : i + batch])
        pred = model(pixel_values=x).logits.argmax(-1)
        correct += int((pred.numpy() == labels[i : i + batch]).sum())
    return correct / len(images_u8)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="output folder (e.g. models/fmnist)")
    p.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--intermediate-size", type=int, default=256)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    from safetensors.torch import save_file
    from transformers import ViTForImageClassification

    train_x, train_y = load_split(args.data_dir, "train")
    test_x, test_y = load_split(args.data_dir, "test")
    print(f"data: train {train_x.shape} test {test_x.shape} (mean={MEAN}, std={STD})", flush=True)

    config = make_config(args.intermediate_size)
    config._attn_implementation = "sdpa"
    model = ViTForImageClassification(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: ViTForImageClassification, {n_params:,} parameters", flush=True)

    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        (no_decay if prm.ndim < 2 or "embeddings" in name else decay).append(prm)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * t))

    train_x_t = torch.from_numpy(train_x)
    train_y_t = torch.from_numpy(train_y.astype(np.int64))
    step = 0
    t_start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(train_x), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            x = preprocess(augment(train_x_t[idx], gen))
            y = train_y_t[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(pixel_values=x).logits
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(idx)
        test_acc = evaluate(model, test_x, test_y)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / seen:.4f} "
            f"train_acc {correct / seen:.4f} test_acc {test_acc:.4f} "
            f"lr {lr_at(step - 1):.2e} time {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    train_time = time.perf_counter() - t_start

    model.eval()
    acc_full = evaluate(model, test_x, test_y)
    acc_shipped = evaluate(model, test_x[:N_TEST_SHIPPED], test_y[:N_TEST_SHIPPED])
    print(f"training wall time: {train_time:.1f}s", flush=True)
    print(f"FP32 top-1: full 10k test {acc_full:.4f}, shipped first {N_TEST_SHIPPED} {acc_shipped:.4f}", flush=True)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg.pop("_attn_implementation", None)
    cfg.pop("_attn_implementation_autoset", None)
    cfg["architectures"] = ["ViTForImageClassification"]
    cfg["dtype"] = "float32"
    with open(out / CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})

    rng = np.random.default_rng(args.seed)
    calib_idx = np.sort(rng.choice(len(train_x), size=N_CALIB, replace=False))
    np.savez_compressed(
        out / DATA_FILE,
        test_images=test_x[:N_TEST_SHIPPED].astype(np.uint8),
        test_labels=test_y[:N_TEST_SHIPPED].astype(np.uint8),
        calib_images=train_x[calib_idx].astype(np.uint8),
        calib_labels=train_y[calib_idx].astype(np.uint8),
        calib_indices=calib_idx.astype(np.int32),
    )
    metrics = {
        "epochs": args.epochs,
        "seed": args.seed,
        "train_wall_time_s": round(train_time, 1),
        "top1_test_10k": acc_full,
        "top1_test_first_2000": acc_shipped,
    }
    print(json.dumps(metrics), flush=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE, DATA_FILE):
        print(f"wrote {out / name} ({(out / name).stat().st_size:,} bytes)", flush=True)


if __name__ == "__main__":
    main()
