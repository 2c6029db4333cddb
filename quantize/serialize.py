"""Save / load an ``IntegerViT`` as one ``.safetensors`` file.

The file holds every integer tensor (``int.*``), the float spec (``spec.*``,
so fake-quant/QAT can resume) and, in the safetensors metadata, a JSON header
with the spec's structure, the calibrated ranges and the scales. Loading
rebuilds the spec, refreezes, and checks that the recomputed integer tensors
equal the stored ones — a file whose scales were lost or altered (the I-ViT
issue #6 failure: 0% top-1 after reload) is refused instead of run.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..files import sweep_stale_temps, temp_name
from ..models.spec import Block, Linear, Norm, ViTSpec

FORMAT = "intvit.integer-vit"
FORMAT_VERSION = 2
# Version 1 files predate the GELU table; their models used ShiftGELU, which is what a model whose
# meta names no GELU form gets (``IntegerViT.gelu``), so they still load and verify.
READABLE_VERSIONS = ("1", "2")


class IntegerModelFileError(ValueError):
    """The file is not a readable intvit integer model."""


def _spec_tensors(spec: ViTSpec) -> tuple[dict, dict]:
    t = {"spec.patch_embed.weight": spec.patch_embed.weight, "spec.patch_embed.bias": spec.patch_embed.bias,
         "spec.prefix_tokens": spec.prefix_tokens, "spec.pos_patches": spec.pos_patches}
    blocks = []
    for i, blk in enumerate(spec.blocks):
        for n in ("qkv", "proj", "fc1", "fc2"):
            lin = getattr(blk, n)
            t[f"spec.blocks.{i}.{n}.weight"] = lin.weight
            t[f"spec.blocks.{i}.{n}.bias"] = lin.bias if lin.bias is not None else torch.zeros(lin.weight.shape[0])
        for n in ("norm1", "norm2"):
            t[f"spec.blocks.{i}.{n}.weight"] = getattr(blk, n).weight
            t[f"spec.blocks.{i}.{n}.bias"] = getattr(blk, n).bias
        blocks.append({"num_heads": blk.num_heads, "source": blk.source,
                       "eps": [blk.norm1.eps, blk.norm2.eps]})
    if spec.final_norm is not None:
        t["spec.norm.weight"], t["spec.norm.bias"] = spec.final_norm.weight, spec.final_norm.bias
    if spec.head is not None:
        t["spec.head.weight"] = spec.head.weight
        t["spec.head.bias"] = spec.head.bias if spec.head.bias is not None else torch.zeros(spec.head.weight.shape[0])
    header = {"image_size": list(spec.image_size), "in_chans": spec.in_chans, "patch_size": spec.patch_size,
              "pool": list(spec.pool), "family": spec.family, "source_class": spec.source_class,
              "blocks": blocks, "final_norm_eps": spec.final_norm.eps if spec.final_norm else None,
              "has_head": spec.head is not None, "extra": spec.extra}
    return {k: v.detach().contiguous().float() for k, v in t.items()}, header


def _spec_from(t: dict, h: dict) -> ViTSpec:
    def lin(name):
        return Linear(t[f"spec.{name}.weight"], t[f"spec.{name}.bias"])

    blocks = []
    for i, b in enumerate(h["blocks"]):
        pre = f"blocks.{i}."
        blocks.append(Block(
            norm1=Norm(t[f"spec.{pre}norm1.weight"], t[f"spec.{pre}norm1.bias"], b["eps"][0]),
            qkv=lin(pre + "qkv"), proj=lin(pre + "proj"),
            norm2=Norm(t[f"spec.{pre}norm2.weight"], t[f"spec.{pre}norm2.bias"], b["eps"][1]),
            fc1=lin(pre + "fc1"), fc2=lin(pre + "fc2"), num_heads=b["num_heads"], source=b["source"]))
    final = Norm(t["spec.norm.weight"], t["spec.norm.bias"], h["final_norm_eps"]) \
        if h["final_norm_eps"] is not None else None
    return ViTSpec(image_size=tuple(h["image_size"]), in_chans=h["in_chans"], patch_size=h["patch_size"],
                   patch_embed=lin("patch_embed"), prefix_tokens=t["spec.prefix_tokens"],
                   pos_patches=t["spec.pos_patches"], blocks=blocks, final_norm=final,
                   pool=tuple(h["pool"]), head=lin("head") if h["has_head"] else None,
                   family=h["family"], source_class=h["source_class"], extra=h.get("extra", {}))


def save_integer_vit(model, path) -> None:
    path = os.fspath(path)
    tensors, header = _spec_tensors(model.spec)
    for k, v in model.integer_params().items():
        tensors["int." + k] = v.contiguous()
    text = json.dumps({"spec": header, "amax": model.amax, "scales": model.scales, "meta": model.meta})
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "intvit_version": __version__,
            "header": text, "header_sha256": header_digest(text)}
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot save to {path}: directory {parent} does not exist")
    sweep_stale_temps(path)
    tmp = temp_name(path)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(f"cannot save the model to {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def header_digest(text: str) -> str:
    """SHA-256 of the JSON header (structure, ranges, scales, meta): saved beside it, checked on load, so a
    changed non-tensor field (a pool name flipped to another valid one) cannot load as another model."""
    return hashlib.sha256(text.encode()).hexdigest()


def load_integer_vit(path):
    from .integer_model import IntegerViT
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no intvit model at {path}")
    try:
        tensors = load_file(path)
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise IntegerModelFileError(f"{path} is not a readable intvit model file ({exc}); "
                                    "re-run intvit.quantize and save again") from None
    if meta.get("format") != FORMAT:
        raise IntegerModelFileError(f"{path} is a safetensors file but not an intvit integer model "
                                    "(a float checkpoint?); quantize it first: intvit.quantize / intvit quantize")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise IntegerModelFileError(f"{path} uses format version {meta.get('format_version')}, "
                                    f"this intvit reads versions {', '.join(READABLE_VERSIONS)}")
    if "header_sha256" in meta and header_digest(meta.get("header", "")) != meta["header_sha256"]:
        raise IntegerModelFileError(f"{path}: the model header does not match its checksum (the file is damaged); "
                                    "re-run intvit.quantize and save again")
    try:
        header = json.loads(meta["header"])
        spec = _spec_from(tensors, header["spec"])
        model = IntegerViT(spec, header["amax"], header.get("meta"))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise IntegerModelFileError(f"{path}: model header is damaged ({type(exc).__name__}: {exc})") from None
    stored = {k[4:]: v for k, v in tensors.items() if k.startswith("int.")}
    rebuilt = model.integer_params()
    bad = sorted(k for k in rebuilt if k not in stored or not torch.equal(stored[k], rebuilt[k]))
    if bad or set(stored) != set(rebuilt):
        raise IntegerModelFileError(
            f"{path}: stored integer parameters disagree with the stored scales "
            f"({(bad or sorted(set(stored) ^ set(rebuilt)))[:3]}…); the file is corrupted")
    return model
