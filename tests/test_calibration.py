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
