"""The Python API: ``intvit.quantize(model, calib_data, config) -> IntegerViT`` and ``intvit.load``."""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from ..calibration import calibrate
from ..calibration.data import take_batches, validate_batch
from ..calibration.headroom import with_headroom
from ..calibration.migration import migrate, resolve_migration
from ..calibration.output_ranges import output_aware_ranges
from ..files import check_writable_target
from ..models import UnsupportedModelError, find_backbones, is_supported, to_spec
from ..models.fidelity import check_spec_reproduces
from ..models.modes import eval_mode
from .config import QuantConfig
from .integer_model import IntegerViT
from .layout import check_widen_count, point_bits, resolve_layout, resolve_zero_points
from .preprocessing import check_calibration_scale
from .qparams import check_gelu_mode
from .preprocessing import resolve as resolve_preprocessing
from .sanity import SANITY_IMAGES, warn_degenerate
from .wrapper import (IntegerBackbone, backbone_answers, capture_backbone_inputs, check_wrapped_answers,
                      float_pooler_of, warn_float_pooler)


def quantize(model, calib_data, config: QuantConfig | None = None):
    """Calibrate and quantize a float ViT into an integer-only ``IntegerViT``.

    ``model`` is a supported Hugging Face ViT / DeiT / DINOv2 model, or a user
    module that contains one as a submodule: then that backbone is quantized
    and a copy of the user's module is returned with the backbone replaced by
    an ``IntegerBackbone`` (the user's own head and pooling keep running).
    ``calib_data`` is a DataLoader, an iterable of image tensors, a tensor or an
    ``.npz`` path, preprocessed exactly as the float model expects.
    """
    config = config or QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be an intvit.QuantConfig, got {type(config).__name__}; e.g. "
                        "QuantConfig(**settings) for a dict of settings")
    if config.cache_path is not None:
        check_writable_target(config.cache_path, "the calibration cache")     # before any work
    compiled = _compiled_path(model)
    if compiled is not None:
        raise UnsupportedModelError(
            f"{compiled or 'the model'} is wrapped by torch.compile, whose compiled code would keep running the "
            "float model; quantize the module itself (its ._orig_mod, or the model before torch.compile)")
    if isinstance(calib_data, Iterator):            # a generator: every pass below would find it used up
        calib_data = take_batches(calib_data, config.max_calib_images, config.batch_size, "calibration")
    if type(model).__name__ == "CLIPModel":
        raise UnsupportedModelError(
            "CLIPModel holds a text and an image encoder, and its forward needs text; quantize its image encoder: "
            "CLIPVisionModelWithProjection.from_pretrained(folder) (image_embeds), or a module of yours whose "
            "forward returns clip.get_image_features(pixel_values=x)")
    if isinstance(model, nn.Module) and not is_supported(model):
        found = find_backbones(model)
        if not found:
            to_spec(model)  # raises the error that names the model type
        if len(found) > 1:
            raise UnsupportedModelError(
                f"{type(model).__name__} contains {len(found)} supported backbones "
                f"({', '.join(p for p, _ in found)}); quantize each one separately")
        path, backbone = found[0]
        with eval_mode(model):                      # the caller's model keeps its modes
            inputs = capture_backbone_inputs(model, backbone, calib_data, config.batch_size, config.max_calib_images)
        warn_float_pooler(backbone, wrapped=True)
        integer = _quantize_supported(backbone, inputs, config)
        wrapped = copy.deepcopy(model)
        _set_submodule(wrapped, path, IntegerBackbone(integer, float_pooler_of(backbone)))
        first = take_batches(calib_data, 2, config.batch_size, "calibration")[0]
        check_wrapped_answers(model, wrapped, first, backbone_answers(integer.spec))
        return wrapped
    warn_float_pooler(model, wrapped=False)
    return _quantize_supported(model, calib_data, config)


def _compiled_path(model) -> str | None:
    """The path of the first ``torch.compile`` wrapper (``torch._dynamo``'s ``OptimizedModule``, known by its
    ``_orig_mod``) in ``model`` ('' for the model itself), or None."""
    if not isinstance(model, nn.Module):
        return None
    return next((path for path, m in model.named_modules() if isinstance(getattr(m, "_orig_mod", None), nn.Module)),
                None)


def _quantize_supported(model, calib_data, config: QuantConfig) -> IntegerViT:
    """``quantize`` for a model an adapter takes directly."""
    spec = to_spec(model, image_size=config.image_size)
    check_gelu_mode(spec, config.gelu)              # before calibrating, not after
    meta = {"recipe": config.recipe, "gelu": config.gelu}
    preprocessing = resolve_preprocessing(config, model, spec.in_chans,
                                          None if spec.head is None else spec.head.weight.shape[0])
    if preprocessing:
        meta["preprocessing"] = preprocessing
    first = take_batches(calib_data, config.batch_size, config.batch_size, "calibration")[0]
    check_calibration_scale(first, preprocessing)
    if isinstance(model, nn.Module):              # before any calibration: refuse a model the adapter misread
        validate_batch(first, (spec.in_chans, *spec.image_size))
        check_spec_reproduces(model, spec, first)
    if config.int16:
        meta["layout"] = resolve_layout(spec, config.int16)
    bits = point_bits(spec, meta.get("layout"))
    if config.auto_int16:
        check_widen_count(spec, bits, config.auto_int16)
    asymmetric = resolve_zero_points(spec, config.zero_points, bits, config.gelu) if config.zero_points else []
    batches = None
    if config.migration or config.output_aware or config.bias_correction:
        batches = take_batches(calib_data, config.max_calib_images, config.batch_size, "calibration")
    if config.migration:
        points = resolve_migration(spec, config.migration)
        spec, meta["migration"] = migrate(spec, batches, points, set(asymmetric))
    state = calibrate(spec, calib_data, recipe=config.recipe, percentile=config.percentile,
                      max_images=config.max_calib_images, batch_size=config.batch_size,
                      progress=config.progress, cache_path=config.cache_path)
    meta["calib_images"] = state.num_images
    ranges, amax = with_headroom(spec, state.ranges, state.amax, config.norm_headroom)
    if config.norm_headroom != 1.0:
        meta["norm_headroom"] = config.norm_headroom
    if config.output_aware:
        ranges, amax, meta["output_aware"] = output_aware_ranges(spec, batches, ranges, amax, set(asymmetric), bits)
    if asymmetric:
        meta["asymmetric"] = {name: list(ranges[name]) for name in asymmetric}
    qmodel = IntegerViT(spec, amax, meta=meta)
    if config.auto_int16:
        from .layout import widen_most_sensitive
        widen_most_sensitive(qmodel, calib_data, config.auto_int16, min(config.matching_images, config.max_calib_images),
                             config.batch_size)
    if config.bias_correction:
        from .bias_correction import correct_biases
        correct_biases(qmodel, batches)
    if config.attention_temperature or config.output_balance:
        from .scale_matching import balance_output_heads, match_attention_temperature
        n = min(config.matching_images, config.max_calib_images)
        if config.attention_temperature:          # QuantVLA's order: temperatures first, then balance
            match_attention_temperature(qmodel, calib_data, max_images=n, batch_size=config.batch_size)
        if config.output_balance:
            balance_output_heads(qmodel, calib_data, max_images=n, batch_size=config.batch_size)
    warn_degenerate(qmodel, torch.cat(take_batches(calib_data, SANITY_IMAGES, config.batch_size, "calibration")))
    return qmodel


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def load(path) -> IntegerViT:
    """Load a model saved with ``IntegerViT.save``; refuses corrupted files."""
    return IntegerViT.load(path)


def integer_vit_of(model) -> IntegerViT:
    """The ``IntegerViT`` a quantized model runs: the model itself, or the one ``IntegerBackbone`` inside a user
    module that ``quantize`` returned (the user's own head and pooling stay float code in their module)."""
    if isinstance(model, IntegerViT):
        return model
    if isinstance(model, IntegerBackbone):
        return model.integer_model
    found = [(path, m) for path, m in model.named_modules() if isinstance(m, IntegerBackbone)] \
        if isinstance(model, nn.Module) else []
    if len(found) == 1:
        return found[0][1].integer_model
    if found:
        raise ValueError(f"{type(model).__name__} holds {len(found)} integer backbones "
                         f"({', '.join(p for p, _ in found)}); save or export each one: module.<path>.integer_model")
    raise TypeError(f"{type(model).__name__} holds no integer model; quantize it first with intvit.quantize")


def save(model, path, include_float: bool = False) -> None:
    """Save a quantized model — an ``IntegerViT`` or a user module holding one ``IntegerBackbone`` — as its
    integer model's file (``IntegerViT.save``); ``intvit.load`` returns that ``IntegerViT``."""
    integer_vit_of(model).save(path, include_float=include_float)


def export_onnx(model, path, integer_input: bool = False) -> str:
    """The integer ONNX graph of a quantized model (an ``IntegerViT`` or a user module holding one
    ``IntegerBackbone``: the backbone's graph, whose outputs are its tokens or logits)."""
    return integer_vit_of(model).export_onnx(path, integer_input=integer_input)
