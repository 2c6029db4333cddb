"""Error attribution: the substitutions are what they claim, and the report holds every source."""
import json

import pytest
import torch

import intvit
from intvit.quantize.attribution import SubstitutedViT, attribute, format_attribution
from conftest import hf_vit, images


@pytest.fixture(scope="module")
def models():
    m = hf_vit(seed=4)
    calib = images(24, seed=1)
    table = intvit.quantize(m, calib, intvit.QuantConfig(progress=False))
    shift = intvit.quantize(m, calib, intvit.QuantConfig(progress=False, gelu="shift"))
    return table, shift


def test_no_substitution_is_the_integer_model_itself(models):
    q, _ = models
    x = images(4, seed=9)
    assert torch.equal(SubstitutedViT(q).forward_int(x), q.forward_int(x))


def test_float_gelu_on_the_grid_is_exactly_the_gelu_table(models):
    """The GELU table is the exact GELU rounded to the output grid, so substituting float GELU changes
    nothing; for ShiftGELU it changes the output (its approximation error is what the row measures)."""
    table, shift = models
    x = images(4, seed=9)
    assert torch.equal(SubstitutedViT(table, {"gelu"}).forward_int(x), table.forward_int(x))
    assert not torch.equal(SubstitutedViT(shift, {"gelu"}).forward_int(x), shift.forward_int(x))


def test_each_substitution_changes_only_its_own_op(models):
    q, _ = models
    x = images(4, seed=9)
    base = q.forward_int(x)
    for ops_ in ({"softmax"}, {"layernorm"}):
        out = SubstitutedViT(q, ops_).forward_int(x)
        assert not torch.equal(out, base)
        assert (out - base).abs().float().mean() < base.abs().float().mean()     # a perturbation, not garbage
    wide = SubstitutedViT(q, wide_residual=True)
    assert int(wide._embed_int(q.quantize_input(x)).abs().max()) > 2**15      # the stream really is wider


def test_report_holds_every_row_and_the_readout_is_what_is_compared(models):
    q, _ = models
    x = images(8, seed=3)
    seen = []
    report = attribute(q, x, readout=lambda out: out[:, :3], progress=seen.append)
    assert report["output"] == "readout" and report["images"] == 8
    names = [r["name"] for r in report["take_one_out"]]
    assert len(names) == 5 and any("residual" in n for n in names)
    assert [r["name"] for r in report["add_one_in"]][0].startswith("weights")
    assert len(report["residual_updates"]) == 2 * len(q.spec.blocks)
    for r in report["take_one_out"]:
        assert r["gain_db"] == pytest.approx(r["sqnr_db"] - report["integer"]["sqnr_db"])
    assert len(seen) == 1 + 5 + 6
    assert "take one out" in format_attribution(report)
    json.dumps(report)


def test_analyze_attribution_cli(tmp_path, capsys):
    from intvit.cli import main
    model = tmp_path / "f.safetensors"
    assert main(["quantize", "fmnist", "--quiet", "--max-images", "64", "--keep-float", "-o", str(model)]) == 0
    out, png = tmp_path / "a.json", tmp_path / "a.png"
    assert main(["analyze", str(model), "--attribution", "--count", "16", "--quiet", "--json", str(out),
                 "--png", str(png)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 16 and report["analysis"] == "attribution" and "take one out" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["analyze", str(model), "--attribution", "--count", "0"]) == 2
    assert "argument --count: must be at least 1" in capsys.readouterr().err
