"""Save / load an ``IntegerViT`` as one ``.safetensors`` file.

The file holds every integer tensor (``int.*``) at the narrowest integer
width that holds its values (int8 weights, int32 biases and multipliers, ...:
``narrowest_int``), and in the safetensors metadata a JSON header with the
spec's structure, the calibrated ranges, the scales, the in-memory dtype of
each integer tensor, the SHA-256 of the integer tensors and, over all of it,
the header's own SHA-256. So a deployment file is about the size of the int8
ONNX.

``include_float=True`` also stores the float spec (``spec.*``: weights,
biases, LayerNorm affines, embeddings), which analysis, QAT and ``refreeze``
need; loading such a file rebuilds the spec, refreezes, and checks that the
recomputed integer tensors equal the stored ones — a file whose scales were
lost or altered (the I-ViT issue #6 failure: 0% top-1 after reload) is
refused instead of run. Without the floats the stored integer tensors are
checked against their digest and used as they are
(``IntegerViT.from_integer_params``). This module reads and checks the
file; ``IntegerViT.load`` builds the model from what it read.

Versions: 1 (before the GELU table), 2 (int64 tensors, floats always) and 3
(this layout) all load.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from .. import __version__
from ..files import check_writable_target, read_whole, write_atomic
from ..models.spec import Block, Linear, Norm, ViTSpec

FORMAT = "intvit.integer-vit"
FORMAT_VERSION = 3
# Version 1 files predate the GELU table; their models used ShiftGELU, which is what a model whose
# meta names no GELU form gets (``IntegerViT.gelu``), so they still load and verify.
READABLE_VERSIONS = ("1", "2", "3")
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)


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
    if spec.pre_norm is not None:
        t["spec.norm_pre.weight"], t["spec.norm_pre.bias"] = spec.pre_norm.weight, spec.pre_norm.bias
    if spec.head is not None:
        t["spec.head.weight"] = spec.head.weight
        t["spec.head.bias"] = spec.head.bias if spec.head.bias is not None else torch.zeros(spec.head.weight.shape[0])
    header = {"image_size": list(spec.image_size), "in_chans": spec.in_chans, "patch_size": spec.patch_size,
              "pool": list(spec.pool), "family": spec.family, "source_class": spec.source_class,
              "blocks": blocks, "final_norm_eps": spec.final_norm.eps if spec.final_norm else None,
              "pre_norm_eps": spec.pre_norm.eps if spec.pre_norm else None, "act": spec.act,
              "has_head": spec.head is not None, "pooled_output": spec.pooled_output, "extra": spec.extra}
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
    pre = Norm(t["spec.norm_pre.weight"], t["spec.norm_pre.bias"], h["pre_norm_eps"]) \
        if h.get("pre_norm_eps") is not None else None
    return ViTSpec(image_size=tuple(h["image_size"]), in_chans=h["in_chans"], patch_size=h["patch_size"],
                   patch_embed=lin("patch_embed"), prefix_tokens=t["spec.prefix_tokens"],
                   pos_patches=t["spec.pos_patches"], blocks=blocks, final_norm=final,
                   pool=tuple(h["pool"]), head=lin("head") if h["has_head"] else None,
                   pooled_output=bool(h.get("pooled_output", False)), pre_norm=pre, act=h.get("act", "gelu"),
                   family=h["family"], source_class=h["source_class"], extra=h.get("extra", {}))


def narrowest_int(t: torch.Tensor) -> torch.Tensor:
    """An integer tensor in the narrowest of int8/int16/int32/int64 that holds its values (others as they are)."""
    if t.dtype not in INT_DTYPES or not t.numel():
        return t
    lo, hi = int(t.min()), int(t.max())
    return t.to(next(d for d in INT_DTYPES if torch.iinfo(d).min <= lo and hi <= torch.iinfo(d).max))


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_integer_vit(model, path, include_float: bool = False) -> None:
    path = os.fsdecode(path)
    if include_float:
        model.require_float_weights("saving with include_float=True")
    floats, structure = _spec_tensors(model.spec)
    ints = {k: narrowest_int(v.contiguous()) for k, v in model.integer_params().items()}
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in model.integer_params().items()}
    tensors = {"int." + k: v for k, v in ints.items()}
    if include_float:
        tensors.update(floats)
    else:
        structure["shapes"] = {k: list(v.shape) for k, v in floats.items()}
    text = json.dumps({"spec": structure, "amax": model.amax, "scales": model.scales, "meta": model.meta,
                       "float_weights": include_float, "int_dtypes": dtypes, "int_sha256": tensors_digest(ints)})
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "intvit_version": __version__,
            "header": text, "header_sha256": header_digest(text)}
    check_writable_target(path, "the model")
    data = safetensors_bytes(tensors, metadata=meta)
    try:
        # The bytes are written here, not by safetensors.save_file, which stages in a temp of its own
        # (``.tmpXXXXXX`` beside the target, mode 0600) that a killed writer leaves behind for good.
        write_atomic(path, data)
    except OSError as exc:
        raise OSError(f"cannot save the model to {path}: {exc.strerror or exc}") from None


def header_digest(text: str) -> str:
    """SHA-256 of the JSON header (structure, ranges, scales, meta): saved beside it, checked on load, so a
    changed non-tensor field (a pool name flipped to another valid one) cannot load as another model."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class StoredModel:
    """What an intvit model file holds, read and checked as far as the file alone allows; ``IntegerViT.load``
    builds the model from it (this module never builds one, so it does not import the model class)."""

    path: str
    spec: ViTSpec
    amax: dict
    meta: dict | None
    int_params: dict[str, torch.Tensor]
    float_weights: bool

    @contextmanager
    def building(self):
        """Building the model from a damaged header fails as one ``IntegerModelFileError``."""
        try:
            yield
        except IntegerModelFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegerModelFileError(f"{self.path}: model header is damaged ({type(exc).__name__}: {exc})") from None

    def check_refrozen(self, rebuilt: dict[str, torch.Tensor]) -> None:
        """A file with float weights: the integer tensors refrozen from its floats and scales must equal the
        stored ones (a file whose scales were lost or altered is refused instead of run)."""
        stored = self.int_params
        bad = sorted(k for k in rebuilt if k not in stored or not torch.equal(stored[k], rebuilt[k]))
        if bad or set(stored) != set(rebuilt):
            raise IntegerModelFileError(
                f"{self.path}: stored integer parameters disagree with the stored scales "
                f"({(bad or sorted(set(stored) ^ set(rebuilt)))[:3]}…); the file is corrupted")

    def check_layout(self, layout: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        """A file without float weights: its integer tensors must be the ones the header's structure calls for
        (``IntegerViT.param_layout``), by name, shape and dtype. Their digest only shows the file is as it was
        written; a file whose tensors and digests were rewritten together loaded, then failed inside its
        first forward pass."""
        stored = {k: (tuple(v.shape), v.dtype) for k, v in self.int_params.items()}
        missing, extra = sorted(set(layout) - set(stored)), sorted(set(stored) - set(layout))
        if missing or extra:
            raise IntegerModelFileError(
                f"{self.path}: the integer tensors are not the ones its model structure needs "
                f"(missing {missing[:3]}, unexpected {extra[:3]}); re-run intvit.quantize and save again")
        for name in sorted(layout):
            if stored[name] != layout[name]:
                (shape, dtype), (want, want_dtype) = stored[name], layout[name]
                raise IntegerModelFileError(
                    f"{self.path}: integer tensor '{name}' is {list(shape)} {str(dtype).removeprefix('torch.')}, "
                    f"and the model's structure needs {list(want)} {str(want_dtype).removeprefix('torch.')}; "
                    "re-run intvit.quantize and save again")

    def check_values(self, problem: str | None) -> None:
        """A file without float weights: ``problem`` (``qparams.param_domain_error`` of its tensors) refused."""
        if problem:
            raise IntegerModelFileError(f"{self.path}: {problem} — no frozen model holds that (the file was "
                                        "altered); re-run intvit.quantize and save again")


def _safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's bytes: an 8-byte little-endian header length, then the
    JSON header (read from the same bytes as the tensors, so a file replaced meanwhile cannot pair one file's
    tensors with another's header)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    return header.get("__metadata__") or {}


def is_intvit_model_file(path) -> bool:
    """Whether ``path`` is an intvit integer model file, from its safetensors header alone (not the tensors)."""
    try:
        with open(os.fspath(path), "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100 << 20:
                return False
            return _safetensors_metadata(size.to_bytes(8, "little") + f.read(size)).get("format") == FORMAT
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def read_integer_vit(path) -> StoredModel:
    """Read an intvit model file: format, version and both checksums checked; float-weight files' integer
    tensors are checked later against a refreeze (``StoredModel.check_refrozen``)."""
    path = os.fsdecode(path)
    data = read_whole(path, "intvit model")
    if path.lower().endswith(".onnx") and data[:1] == b"\x08":       # ONNX's first field, ir_version
        raise IntegerModelFileError(f"{path} is an ONNX file, not an intvit model file: compile it with "
                                    "`intvit compile`, or give the .safetensors model `intvit quantize` wrote")
    if data[:4] == b"\x7fELF":
        raise IntegerModelFileError(f"{path} is a compiled module (intvit compile), not an intvit model file; "
                                    "run it with intvit.runtime.load / intvit run")
    try:
        tensors, meta = safetensors_load(data), _safetensors_metadata(data)
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
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
    stored = {k[4:]: v for k, v in tensors.items() if k.startswith("int.")}
    try:
        header = json.loads(meta["header"])
        if not header.get("float_weights", True):
            return _frozen_record(path, header, stored)
        spec = _spec_from(tensors, header["spec"])
        stored = {k: v.to(getattr(torch, header["int_dtypes"][k])) if "int_dtypes" in header else v
                  for k, v in stored.items()}
        return StoredModel(path, spec, header["amax"], header.get("meta"), stored, float_weights=True)
    except IntegerModelFileError:
        raise
    except (KeyError, json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise IntegerModelFileError(f"{path}: model header is damaged ({type(exc).__name__}: {exc})") from None


def _frozen_record(path: str, header: dict, stored: dict[str, torch.Tensor]) -> StoredModel:
    """A file saved without float weights: its integer tensors, checked against their digest, widened to
    their in-memory dtypes, on a shape-only spec."""
    if tensors_digest(stored) != header["int_sha256"]:
        raise IntegerModelFileError(f"{path}: the integer tensors do not match their checksum (the file is "
                                    "damaged); re-run intvit.quantize and save again")
    shapes = {k: torch.empty(shape, device="meta") for k, shape in header["spec"]["shapes"].items()}
    spec = _spec_from(shapes, header["spec"])
    params = {k: v.to(getattr(torch, header["int_dtypes"][k])) for k, v in stored.items()}
    if set(params) != set(header["int_dtypes"]):
        raise IntegerModelFileError(f"{path}: the file's integer tensors are not the ones its header lists")
    return StoredModel(path, spec, header["amax"], header.get("meta"), params, float_weights=False)
