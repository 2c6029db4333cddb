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
    (dict(percentile=0), ValueError, "is the percentile of \\|x\\| that recipe='percentile' keeps, a number in"),
    (dict(percentile=float("nan")), ValueError, "is the percentile"),
    (dict(percentile="99.9"), ValueError, "is the percentile"),
    (dict(cache_path=5), TypeError, "takes the path of a JSON file, got 5"),
    (dict(labels="abc"), TypeError, "takes one name per output class, e.g. \\('cat', 'dog'\\), got 'abc'"),
])
def test_bad_config_values_are_named(settings, error, phrase):
    with pytest.raises(error, match=f"QuantConfig\\({next(iter(settings))}=\\.\\.\\.\\) {phrase}"):
        intvit.QuantConfig(**settings)


def test_numpy_integers_are_whole_numbers_of_pixels():
    assert intvit.QuantConfig(image_size=np.int64(32)).image_size == 32
    assert intvit.QuantConfig(image_size=[np.int32(16), 64]).image_size == (16, 64)


def test_a_processors_list_of_images_is_every_image_not_the_first():
    """A Hugging Face processor called without return_tensors gives pixel_values as a list of [C, H, W]
    arrays; only the first was used, silently (red team, 2026-12-06)."""
    x = images(6, size=16)
    _same_images({"pixel_values": [a.numpy() for a in x]}, x)               # BatchFeature of numpy images
    _same_images([[x[0], x[1], x[2]], [x[3], x[4], x[5]]], x)               # batches as lists of images
    _same_images([(x[:4], x[4:]), (x[:0], x[:0])], x)                        # lists of [B, C, H, W] batches
    with pytest.raises(CalibrationDataError, match="calibration images of different shapes in one batch"):
        take_batches({"pixel_values": [x[0], images(1, size=8)[0]]}, 100)


def test_a_damaged_or_edited_calibration_cache_is_recalibrated_and_a_bad_path_refused_first(tmp_path):
    import json
    model, x = hf_vit(image=16, dim=32, layers=1, heads=2, mlp=64, labels=5), images(8, size=16)
    cache = tmp_path / "calib.json"
    first = intvit.quantize(model, x, intvit.QuantConfig(**QUICK, cache_path=str(cache)))
    good = json.loads(cache.read_text())
    edited = {**good, "amax": {k: -1.0 for k in good["amax"]}}
    for damaged in ("[1, 2, 3]", json.dumps(edited), json.dumps({**good, "amax": {}}), "\x00\xff"):
        cache.write_text(damaged)
        again = intvit.quantize(model, x, intvit.QuantConfig(**QUICK, cache_path=str(cache)))
        assert torch.equal(again.forward_int(x), first.forward_int(x))
        assert json.loads(cache.read_text())["amax"] == good["amax"]
    for path, error, phrase in ((tmp_path / "no" / "c.json", FileNotFoundError, "directory .* does not exist"),
                                (tmp_path, IsADirectoryError, "it is a directory")):
        with pytest.raises(error, match=f"cannot write the calibration cache to .*{phrase}"):
            intvit.quantize(model, x, intvit.QuantConfig(**QUICK, cache_path=str(path)))


@pytest.mark.parametrize("family", ["vit", "dinov2", "deit"])
def test_a_non_square_size_with_the_native_patch_count_is_resampled_as_the_model_does(family):
    """HF resamples the position grid whenever the image is not square, not only when the patch count changes:
    16 x 64 on a 32 x 32 model (16 patches either way) was refused as "does not reproduce it" (red team)."""
    import warnings

    import transformers
    config, model = {"vit": ("ViTConfig", "ViTForImageClassification"), "deit": ("DeiTConfig",
                     "DeiTForImageClassification"), "dinov2": ("Dinov2Config", "Dinov2ForImageClassification")}[family]
    torch.manual_seed(0)
    m = getattr(transformers, model)(getattr(transformers, config)(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)             # the fidelity check ran and passed
        q = intvit.quantize(m, torch.randn(8, 3, 16, 64), intvit.QuantConfig(**QUICK, image_size=(16, 64)))
    assert q.spec.image_size == (16, 64)


def test_a_size_the_models_own_resampling_cannot_take_is_refused():
    import transformers
    m = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=(24, 40), patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3)).eval()
    with pytest.raises(intvit.UnsupportedModelError, match="interpolate_pos_encoding cannot resample the model's "
                                                            "position embeddings to 40x24"):
        intvit.quantize(m, torch.randn(8, 3, 40, 24), intvit.QuantConfig(**QUICK, image_size=(40, 24)))


def test_an_image_size_off_the_patch_grid_says_which_sizes_would_do():
    model = hf_vit(image=32, dim=32, layers=1, heads=2, mlp=64, labels=5)
    with pytest.raises(ValueError, match="36x36 is not a multiple of the patch size 8; resize or crop the images to "
                                         "a multiple \\(height 32 or 40, width 32 or 40\\)"):
        intvit.quantize(model, images(4, size=36), intvit.QuantConfig(**QUICK, image_size=36))


def test_a_fifo_in_an_image_folder_is_named_as_one(tmp_path):
    import os
    from intvit.calibration import load_image_folder
    os.mkfifo(tmp_path / "z.png")
    with pytest.raises(OSError, match="z.png is a FIFO \\(named pipe\\), not a regular file"):
        load_image_folder(tmp_path, 3, (8, 8), 0.5, 0.5)


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
