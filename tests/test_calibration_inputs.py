"""The forms calibration data arrives in, and QuantConfig values, each taken or refused with one clear message."""
import collections

import numpy as np
import pytest
import torch

import intvit
from intvit.calibration.data import CalibrationDataError, take_batches

from .conftest import hf_vit, images

QUICK = dict(progress=False, migration=(), batch_size=4)


def _same_images(data, want: torch.Tensor) -> None:
    got = torch.cat(take_batches(data, 100, 4))
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_every_common_form_of_the_same_images_gives_the_same_batches(tmp_path):
    x = images(6, size=16)
    np.save(tmp_path / "x.npy", x.numpy())
    _same_images(str(tmp_path / "x.npy"), x)                          # an .npy path, like an .npz one
    _same_images(x.double().numpy(), x)                               # numpy's default float64
    _same_images(x.clone().requires_grad_(True), x)                   # straight out of a training loop
    _same_images((x, torch.arange(6)), x)                             # (images, labels), as intvit.qat takes
    _same_images(collections.UserDict(pixel_values=x), x)             # a Hugging Face BatchFeature
    _same_images([x[i] for i in range(6)], x)                         # a list of single [C, H, W] images
    _same_images((b for b in x.split(4)), x)                          # a generator
    _same_images(x.half(), x.half().float())                          # other float types, widened
    with pytest.raises(CalibrationDataError, match="hold torch.int64 values; pass float images"):
        take_batches(x.long(), 100)


def test_a_generator_is_read_once_and_every_pass_sees_all_its_images():
    model, x = hf_vit(image=16, dim=32, layers=1, heads=2, mlp=64, labels=5), images(12, size=16)
    from_gen = intvit.quantize(model, (b for b in x.split(4)), intvit.QuantConfig(**{**QUICK, "migration": ("*",)}))
    from_list = intvit.quantize(model, list(x.split(4)), intvit.QuantConfig(**{**QUICK, "migration": ("*",)}))
    assert from_gen.meta["calib_images"] == 12
    probe = images(3, size=16, seed=5)
    assert torch.equal(from_gen.forward_int(probe), from_list.forward_int(probe))


@pytest.mark.parametrize("settings, error, phrase", [
    (dict(zero_points=True), TypeError, "takes glob patterns"),
    (dict(migration=None), TypeError, "takes glob patterns"),
    (dict(batch_size=0), ValueError, "must be a whole number >= 1, got 0"),
    (dict(batch_size=-1), ValueError, "must be a whole number >= 1"),
    (dict(max_calib_images=2.5), ValueError, "must be a whole number >= 1, got 2.5"),
    (dict(auto_int16=-1), ValueError, "must be a whole number >= 0"),
    (dict(image_size="32"), TypeError, "takes a whole number of pixels or \\(height, width\\)"),
    (dict(image_size=(32, 0)), TypeError, "takes a whole number"),
    (dict(progress="no"), TypeError, "takes True or False"),
])
def test_bad_config_values_are_named(settings, error, phrase):
    with pytest.raises(error, match=f"QuantConfig\\({next(iter(settings))}=\\.\\.\\.\\) {phrase}"):
        intvit.QuantConfig(**settings)


def test_a_config_that_is_not_a_quantconfig_is_named():
    with pytest.raises(TypeError, match="config must be an intvit.QuantConfig, got dict; e.g. QuantConfig"):
        intvit.quantize(hf_vit(image=16, dim=32, layers=1, heads=2, mlp=64), images(4, size=16), {"recipe": "minmax"})


def test_the_default_zero_points_and_migration_take_a_model_that_has_none():
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer
    del timm
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=0, num_heads=2, num_classes=0,
                              final_norm=False, global_pool="").eval()
    q = intvit.quantize(model, images(8, size=16), intvit.QuantConfig(progress=False))
    assert q.meta.get("asymmetric") is None and q(images(2, size=16)).shape == (2, 5, 32)
    with pytest.raises(ValueError, match="zero-point pattern 'norm' matches no point"):
        intvit.quantize(model, images(8, size=16), intvit.QuantConfig(progress=False, zero_points=("norm",)))
