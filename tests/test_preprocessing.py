"""Preprocessing travels with the model: recorded when quantizing, carried through ONNX and the sidecar, used by
`intvit run` (issue 17, item 4); calibration images that look unnormalised are refused or warned about."""
import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

import intvit
from intvit.calibration import CalibrationDataError
from intvit.calibration.data import load_image
from intvit.cli import main
from intvit.models import fmnist
from intvit.quantize.preprocessing import METADATA_KEY, model_labels, resolve
from intvit.runtime import ModuleMismatchError, load
from conftest import images


@pytest.fixture(scope="module")
def fmnist_module(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    assert main(["quantize", "fmnist", "--quiet", "--max-images", "32", "-o", str(d / "m.safetensors")]) == 0
    assert main(["export", str(d / "m.safetensors"), "-o", str(d / "m.onnx")]) == 0
    assert main(["compile", str(d / "m.onnx"), "-o", str(d / "m.so")]) == 0
    return d


def test_run_on_a_png_uses_the_recorded_normalisation_and_prints_labels(fmnist_module, capsys):
    d = fmnist_module
    x, y = fmnist.load_test_set(1)
    pixels = np.clip(np.round((x[0, 0].numpy() * fmnist.STD + fmnist.MEAN) * 255), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(d / "img.png")
    capsys.readouterr()
    assert main(["run", str(d / "m.so"), "--input", str(d / "img.png")]) == 0
    out = capsys.readouterr().out
    assert "recorded when the model was quantized" in out and "(x/255 - 0.286) / 0.353" in out
    expected = load(d / "m.so")(load_image(d / "img.png", 1, (28, 28), [fmnist.MEAN], [fmnist.STD]).numpy())[0]
    best = int(np.argmax(expected))
    assert out.splitlines()[-1].startswith(f"{d / 'img.png'}: {fmnist.load_model().config.id2label[best]} "
                                           f"({expected[best]:.3f})")
    assert main(["run", str(d / "m.so"), "--input", str(d / "img.png"), "--mean", "0.5", "--std", "0.5"]) == 0
    assert "(--mean/--std)" in capsys.readouterr().out


def _test_pixels(n=1):
    x, _ = fmnist.load_test_set(n)
    return np.clip(np.round((x[:, 0].numpy() * fmnist.STD + fmnist.MEAN) * 255), 0, 255).astype(np.uint8)


def test_one_normalisation_flag_keeps_the_recorded_other(fmnist_module, capsys):
    """--std alone replaces only the std: the mean stays the recorded one (not 0.5), so passing the recorded
    std changes nothing."""
    d = fmnist_module
    Image.fromarray(_test_pixels()[0]).save(d / "one.png")
    capsys.readouterr()
    assert main(["run", str(d / "m.so"), "--input", str(d / "one.png")]) == 0
    plain = capsys.readouterr().out.splitlines()[-1]
    assert main(["run", str(d / "m.so"), "--input", str(d / "one.png"), "--std", str(fmnist.STD)]) == 0
    out = capsys.readouterr().out
    assert "(x/255 - 0.286) / 0.353 (--std; mean recorded when the model was quantized)" in out
    assert out.splitlines()[-1] == plain
    assert main(["run", str(d / "m.so"), "--input", str(d / "one.png"), "--mean", "0.2"]) == 0
    assert "(x/255 - 0.2) / 0.353 (--mean; std recorded" in capsys.readouterr().out
    assert main(["run", str(d / "m.so"), "--input", str(d / "one.png"), "--mean", "72.9", "--std", "90"]) == 2
    assert "look like the 0-255 scale; they apply after /255" in capsys.readouterr().err


def test_sixteen_bit_and_exif_rotated_images_read_as_their_eight_bit_upright_twins(tmp_path):
    """A 16-bit grey PNG of an 8-bit picture (×257) loads as that picture (PIL's convert("L") clips it to
    white); a JPEG stored sideways with EXIF orientation 6 (rotate 90° clockwise to view) loads upright."""
    pixels = _test_pixels(2)
    args = (1, (28, 28), [fmnist.MEAN], [fmnist.STD])
    Image.fromarray(pixels[0]).save(tmp_path / "g8.png")
    Image.fromarray(pixels[0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert torch.equal(load_image(tmp_path / "g16.png", *args), load_image(tmp_path / "g8.png", *args))
    upright = np.kron(pixels[1], np.ones((4, 4), np.uint8))           # 112 px: JPEG blocks blur less
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(upright, 1).copy()).save(tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=100)
    got, want = load_image(tmp_path / "sideways.jpg", *args), load_image(tmp_path / "upright.png", *args)
    assert (got - want).abs().mean() < 0.05 * want.abs().mean()
    assert (load_image(tmp_path / "sideways.jpg", *args) - torch.rot90(want, 1, (2, 3))).abs().mean() > \
        10 * (got - want).abs().mean()


def test_run_input_mistakes_are_one_line(fmnist_module, tmp_path, capsys):
    d = fmnist_module
    with open(tmp_path / "X.NPY", "wb") as f:                     # (np.save would append ".npy" to the name)
        np.save(f, fmnist.load_test_set(3)[0].numpy())
    capsys.readouterr()
    assert main(["run", str(d / "m.so"), "--input", str(tmp_path / "X.NPY")]) == 0      # any case of .npy
    assert "image 2:" in capsys.readouterr().out
    assert main(["run", str(d / "m.so"), "--input", str(tmp_path / "X.NPY"), "--mean", "0.9"]) == 2
    assert "--mean/--std normalise image files; a .npy array holds images already preprocessed" in \
        capsys.readouterr().err
    (tmp_path / "d.png").mkdir()
    assert main(["run", str(d / "m.so"), "--input", str(tmp_path / "d.png")]) == 2
    captured = capsys.readouterr()
    assert "d.png is a folder, not an image file" in captured.err and captured.out == ""
    (tmp_path / "d.npy").mkdir()
    assert main(["run", str(d / "m.so"), "--input", str(tmp_path / "d.npy")]) == 2
    assert "d.npy is a folder, not a .npy file" in capsys.readouterr().err


def test_the_record_is_in_the_model_the_onnx_and_the_sidecar(fmnist_module):
    import onnx
    d = fmnist_module
    labels = [fmnist.load_model().config.id2label[i] for i in range(10)]
    want = {"mean": [fmnist.MEAN], "std": [fmnist.STD], "labels": labels}
    assert intvit.load(d / "m.safetensors").meta["preprocessing"] == want
    props = {p.key: p.value for p in onnx.load(str(d / "m.onnx")).metadata_props}
    assert json.loads(props[METADATA_KEY]) == want
    meta = json.loads((d / "m.so.json").read_text())
    assert meta["preprocessing"] == want
    meta["preprocessing"] = {"mean": "0.5"}
    (d / "bad.so").write_bytes((d / "m.so").read_bytes())
    (d / "bad.so.json").write_text(json.dumps(meta))
    with pytest.raises(ModuleMismatchError, match="field 'preprocessing'"):
        load(d / "bad.so")


def test_resolve_takes_the_config_then_the_model():
    timm_like = types.SimpleNamespace(pretrained_cfg={"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
    assert resolve(intvit.QuantConfig(), timm_like, 3) == {"mean": [0.485, 0.456, 0.406],
                                                           "std": [0.229, 0.224, 0.225]}
    assert resolve(intvit.QuantConfig(mean=0.5, std=0.25, labels=("a", "b")), timm_like, 3, classes=2) == \
        {"mean": [0.5] * 3, "std": [0.25] * 3, "labels": ["a", "b"]}
    with pytest.raises(ValueError, match="names 2 classes, the model outputs 10; give one name per output class"):
        resolve(intvit.QuantConfig(labels=("a", "b")), timm_like, 3, classes=10)
    with pytest.raises(ValueError, match="names 2 classes, the model has no classifier head"):
        resolve(intvit.QuantConfig(labels=("a", "b")), timm_like, 3)
    with pytest.raises(ValueError, match="look like the 0-255 scale; they apply after /255"):
        resolve(intvit.QuantConfig(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)), timm_like, 3)
    generic = types.SimpleNamespace(config=types.SimpleNamespace(id2label={0: "LABEL_0", 1: "LABEL_1"}))
    assert model_labels(generic) is None and resolve(intvit.QuantConfig(), generic, 3) == {}
    for bad in ({"mean": 0.5}, {"mean": (0.5, 0.5), "std": (1, 1)}, {"mean": 0.5, "std": 0.0}):
        with pytest.raises(ValueError, match="mean"):
            resolve(intvit.QuantConfig(**bad), generic, 3)


def test_unnormalised_calibration_images_are_refused_or_warned_about(tiny_vit):
    pixels = (torch.rand(8, 3, 32, 32) * 255)
    with pytest.raises(CalibrationDataError, match="uint8 pixels"):
        intvit.quantize(tiny_vit, pixels.to(torch.uint8), intvit.QuantConfig(progress=False))
    with pytest.warns(UserWarning, match="like raw 0–255 pixels"):
        intvit.quantize(tiny_vit, pixels, intvit.QuantConfig(progress=False))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        intvit.quantize(tiny_vit, images(8), intvit.QuantConfig(progress=False))
