"""Quantization-aware training: fine-tune an ``IntegerViT``'s float weights through its fake-quant mode.

``qat(qmodel, train_data, epochs=...)`` trains a copy of ``qmodel`` in
``mode="fake"``: the float network with every weight and activation rounded
to the integer model's own grid and straight-through gradients
(``quantize.fake_quant``), as in I-ViT's QAT. The activation ranges (and so
every scale) stay those of the PTQ calibration; only the float weights and
biases of the linear layers and LayerNorms train. After every epoch the
integer tensors are refrozen from the trained weights and, with
``checkpoint_dir``, the model is saved (``IntegerViT.save``); a checkpoint
reloads to the same integer outputs bit for bit.

Loss: cross-entropy on the labels when ``train_data`` has them, otherwise
distillation from the model's own float weights as they were before training
(KL divergence of the softened class distributions, temperature ``T``).
Optimiser: AdamW with a cosine learning-rate decay to 0 over all steps
(I-ViT fine-tunes with lr 1e-6 to 5e-7 on ImageNet-scale data; a small model
on a small set needs more).
"""
from __future__ import annotations

import copy
import math
import os

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.spec import EMBEDDING_HEAD_FAMILIES, float_forward


def _pairs(train_data, batch_size: int):
    """``(images, labels | None)`` batches from a tensor, an ``(images, labels)`` pair or a loader."""
    if isinstance(train_data, torch.Tensor):
        train_data = (train_data, None)
    if isinstance(train_data, tuple) and len(train_data) == 2 and isinstance(train_data[0], torch.Tensor):
        x, y = train_data
        return [(x[i:i + batch_size], None if y is None else y[i:i + batch_size])
                for i in range(0, x.shape[0], batch_size)]
    out = []
    for item in train_data:
        if isinstance(item, (tuple, list)):
            out.append((item[0], item[1] if len(item) > 1 else None))
        elif isinstance(item, dict):
            out.append((item.get("pixel_values", item.get("images")), item.get("labels")))
        else:
            out.append((item, None))
    if not out:
        raise ValueError("QAT needs training images; the data set is empty")
    return out


def _check_labels(batches, classes: int) -> None:
    """Refuse, before training, labels that are not whole class indices of the model's ``classes`` classes."""
    for _, y in batches:
        if y is None:
            continue
        y = torch.as_tensor(y)
        if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
            raise ValueError(f"QAT labels are class indices, one whole number per image; got a {y.dtype} tensor "
                             f"of shape {list(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise ValueError(f"QAT label {bad} is not a class of this model, which has {classes} (0 to "
                             f"{classes - 1}); check the labels match the model's head")


def trainable_tensors(spec) -> list[torch.Tensor]:
    """The float tensors QAT updates: linear weights/biases and LayerNorm affines (the blocks', then the final
    and the pre-LayerNorm's)."""
    out = []
    for blk in spec.blocks:
        for lin in (blk.qkv, blk.proj, blk.fc1, blk.fc2):
            out += [lin.weight] + ([lin.bias] if lin.bias is not None else [])
        out += [blk.norm1.weight, blk.norm1.bias, blk.norm2.weight, blk.norm2.bias]
    for lin in (spec.patch_embed, spec.head):
        if lin is not None:
            out += [lin.weight] + ([lin.bias] if lin.bias is not None else [])
    for norm in (spec.final_norm, spec.pre_norm):
        if norm is not None:
            out += [norm.weight, norm.bias]
    return out


def qat(qmodel, train_data, epochs: int = 1, lr: float = 1e-5, weight_decay: float = 1e-4,
        batch_size: int = 32, temperature: float = 2.0, checkpoint_dir=None, progress: bool = True,
        seed: int = 0):
    """Fine-tune a copy of ``qmodel`` (see the module docstring); returns it in integer mode."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if qmodel.spec.head is None:
        raise ValueError("QAT trains a classifier; this integer model has no classification head")
    if qmodel.spec.family in EMBEDDING_HEAD_FAMILIES:
        raise ValueError(f"QAT trains a classifier; this model's head ({qmodel.spec.source_class}) projects into an "
                         "embedding space (CLIP's image_embeds), whose outputs are not classes")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite learning rate such as 2e-5, got {lr!r}")
    qmodel.require_float_weights("QAT")                  # before any batch is read or a bar drawn
    batches = _pairs(train_data, batch_size)
    _check_labels(batches, qmodel.spec.head.weight.shape[0])
    model = copy.deepcopy(qmodel)
    teacher = copy.deepcopy(qmodel.spec)                 # for distillation: the weights before training
    params = trainable_tensors(model.spec)
    for i, t in enumerate(params):
        params[i] = t.detach().clone().float().requires_grad_(True)
    _rebind(model.spec, params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = epochs * len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    gen = torch.Generator().manual_seed(seed)
    model.mode = "fake"
    history = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(batches), generator=gen).tolist()
        running = 0.0
        bar = tqdm(order, desc=f"QAT epoch {epoch}/{epochs}", unit="batch", disable=not progress, leave=False)
        for k in bar:
            x, y = batches[k]
            logits = model.forward_fake(x)
            if y is not None:
                loss = F.cross_entropy(logits, torch.as_tensor(y).long())
            else:
                with torch.no_grad():
                    target = F.softmax(float_forward(teacher, x) / temperature, dim=-1)
                loss = F.kl_div(F.log_softmax(logits / temperature, dim=-1), target,
                                reduction="batchmean") * temperature ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        model.refreeze()
        history.append({"epoch": epoch, "mean_loss": running / len(batches)})
        if checkpoint_dir is not None:
            os.makedirs(checkpoint_dir, exist_ok=True)
            model.save(os.path.join(checkpoint_dir, f"qat-epoch{epoch}.safetensors"), include_float=True)
    for t in params:
        t.requires_grad_(False)
    model.mode = "int"
    model.meta["qat"] = {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                         "loss": "cross_entropy" if batches[0][1] is not None else "distillation",
                         "history": history}
    return model


def _rebind(spec, tensors: list[torch.Tensor]) -> None:
    """Put ``tensors`` (in ``trainable_tensors`` order) back into the spec's fields."""
    it = iter(tensors)
    for blk in spec.blocks:
        for lin in (blk.qkv, blk.proj, blk.fc1, blk.fc2):
            lin.weight = next(it)
            if lin.bias is not None:
                lin.bias = next(it)
        blk.norm1.weight, blk.norm1.bias, blk.norm2.weight, blk.norm2.bias = (next(it) for _ in range(4))
    for lin in (spec.patch_embed, spec.head):
        if lin is not None:
            lin.weight = next(it)
            if lin.bias is not None:
                lin.bias = next(it)
    for norm in (spec.final_norm, spec.pre_norm):
        if norm is not None:
            norm.weight, norm.bias = next(it), next(it)
