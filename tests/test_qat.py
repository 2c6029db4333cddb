"""QAT: trains a copy in fake-quant mode, refreezes, checkpoints reload bit-exactly; bad input is refused."""
import copy
import importlib

import pytest
import torch

import intvit
from conftest import images


def _labels(n, seed=0):
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


def test_qat_trains_a_copy_and_its_checkpoints_reload_bit_exactly(tiny_qvit, tmp_path):
    before = tiny_qvit.forward_int(images(4, seed=9)).clone()
    x, y = images(32, seed=2), _labels(32)
    tuned = intvit.qat(tiny_qvit, (x, y), epochs=3, lr=3e-3, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    assert torch.equal(tiny_qvit.forward_int(images(4, seed=9)), before)            # the input model is untouched
    history = tuned.meta["qat"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and tuned.meta["qat"]["loss"] == "cross_entropy"
    assert history[-1]["mean_loss"] < history[0]["mean_loss"]                     # it learns the labels
    assert not torch.equal(tuned.p("blocks.0.qkv.w"), tiny_qvit.p("blocks.0.qkv.w"))
    assert tuned.mode == "int" and sorted(p.name for p in tmp_path.iterdir()) == [
        f"qat-epoch{e}.safetensors" for e in (1, 2, 3)]
    reloaded = intvit.load(tmp_path / "qat-epoch3.safetensors")
    probe = images(6, seed=11)
    assert torch.equal(reloaded.forward_int(probe), tuned.forward_int(probe))


def test_qat_without_labels_distils_from_the_float_weights(tiny_qvit):
    tuned = intvit.qat(tiny_qvit, images(16, seed=3), epochs=1, lr=1e-4, batch_size=8, progress=False)
    assert tuned.meta["qat"]["loss"] == "distillation" and tuned.meta["qat"]["history"][0]["mean_loss"] >= 0


def test_qat_bad_input(tiny_qvit):
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        intvit.qat(tiny_qvit, images(4), epochs=0)
    with pytest.raises(ValueError, match="needs training images"):
        intvit.qat(tiny_qvit, [], progress=False)
    headless = copy.deepcopy(tiny_qvit)
    headless.spec.head = None
    with pytest.raises(ValueError, match="no classification head"):
        intvit.qat(headless, images(4), progress=False)


def test_qat_refuses_bad_labels_rates_and_missing_weights_before_training(tiny_qvit, tmp_path, capsys):
    x = images(8)
    with pytest.raises(ValueError, match=r"label 20 is not a class of this model, which has 10 \(0 to 9\)"):
        intvit.qat(tiny_qvit, (x, torch.full((8,), 20)))
    with pytest.raises(ValueError, match="label -1 is not a class"):
        intvit.qat(tiny_qvit, (x, torch.full((8,), -1)))
    with pytest.raises(ValueError, match="labels are class indices, one whole number per image"):
        intvit.qat(tiny_qvit, (x, torch.rand(8)))
    for lr in (float("nan"), 0, -1e-5, "2e-5"):
        with pytest.raises(ValueError, match="lr must be a positive finite learning rate"):
            intvit.qat(tiny_qvit, x, lr=lr)
    tiny_qvit.save(tmp_path / "deploy.safetensors")
    missing = importlib.import_module("intvit.quantize.integer_model").FloatWeightsMissingError
    with pytest.raises(missing, match="QAT needs the float weights"):
        intvit.qat(intvit.load(tmp_path / "deploy.safetensors"), x)
    assert "QAT epoch" not in capsys.readouterr().err        # refused before the first progress bar
