"""Observers and calibration data sources."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from intvit.calibration import CalibrationDataError, iter_batches, make_observer


def test_minmax_and_percentile_on_known_data():
    x = torch.linspace(-1000, 1000, 200001)
    mm = make_observer("minmax", 8)
    mm.observe(x)
    assert mm.amax() == 1000
    pc = make_observer("percentile", 8, percentile=99.0)
    pc.observe(x)
    assert abs(pc.amax() - 990) < 5


def test_omse_clips_outliers_but_minmax_does_not():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100000, generator=g), torch.tensor([40.0])])
    om = make_observer("omse", 8)
    om.observe(x)
    assert om.amax() < 0.5 * 40
    with pytest.raises(ValueError, match="unknown observer"):
        make_observer("entropy", 8)


def test_data_sources_all_yield_float_batches(tmp_path):
    x = torch.randn(10, 3, 8, 8)
    loader = DataLoader(TensorDataset(x, torch.zeros(10)), batch_size=4)
    np.savez(tmp_path / "c.npz", images=x.numpy())
    for src in (loader, [x[:5], x[5:]], x, str(tmp_path / "c.npz"), [{"pixel_values": x}], x.numpy()):
        got = torch.cat(list(iter_batches(src, batch_size=4)))
        assert torch.equal(got, x)
    np.savez(tmp_path / "u8.npz", images=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(CalibrationDataError, match="normalised as float32"):
        list(iter_batches(str(tmp_path / "u8.npz")))
    with pytest.raises(CalibrationDataError, match="does not exist"):
        list(iter_batches(str(tmp_path / "nope.npz")))
    with pytest.raises(CalibrationDataError, match="not an image tensor"):
        list(iter_batches(["a string"]))


def test_image_folder_source_and_its_errors(tmp_path, capsys):
    from PIL import Image

    from intvit.calibration import load_image_folder
    from intvit.cli import main
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(3)]
    for k, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"img{k}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    x = load_image_folder(tmp_path, 1, (28, 28), 0.25, 0.5)
    assert x.shape == (3, 1, 28, 28)
    assert torch.allclose(x[1, 0], torch.from_numpy((pixels[1] / 255.0 - 0.25) / 0.5).float(), atol=1e-6)
    assert load_image_folder(tmp_path, 3, (14, 20), [0.5] * 3, [0.5] * 3, max_images=2).shape == (2, 3, 14, 20)
    with pytest.raises(CalibrationDataError, match="is a folder: load its images with"):
        next(iter_batches(str(tmp_path)))
    with pytest.raises(CalibrationDataError, match="holds no images"):
        load_image_folder(_empty_dir(tmp_path), 1, (28, 28), 0, 1)
    with pytest.raises(CalibrationDataError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 1, (28, 28), 0, 1)
    out = tmp_path / "q.safetensors"
    assert main(["quantize", "fmnist", "--quiet", "--calib", str(tmp_path), "-o", str(out)]) == 0
    assert "3 images from" in capsys.readouterr().out and out.exists()


def _empty_dir(root):
    d = root / "empty"
    d.mkdir()
    return d
