"""``quantize.clipping``: how many values each quant point's grid clips, counted in the integer model's own run."""
import json

import numpy as np
import torch

from intvit.cli import main
from intvit.models import fmnist
from intvit.quantize.clipping import CLIPPING_NOTE, clipped_fractions, count_clipping, format_clipping, summarize


def test_counting_leaves_the_integer_model_as_it_was(embedded_qvit):
    x, _ = fmnist.load_test_set(16)
    plain = embedded_qvit.forward_int(x)
    with count_clipping(embedded_qvit) as counts:
        counted = embedded_qvit.forward_int(x)
    assert torch.equal(plain, counted)
    assert "_requant" not in embedded_qvit.__dict__ and "quantize_input" not in embedded_qvit.__dict__
    blocks = len(embedded_qvit.spec.blocks)
    assert list(counts)[0] == "input" and f"blocks.{blocks - 1}.resid2" in counts
    assert sum(name.endswith(("resid1", "resid2")) for name in counts) == 2 * blocks
    assert all(n == 16 * 28 * 28 for name, (c, n) in counts.items() if name == "input")


def test_input_pixels_beyond_the_grid_are_counted_one_by_one(embedded_qvit):
    x, _ = fmnist.load_test_set(4)
    limit = 127.5 * float(embedded_qvit.scales["input"])
    x = x.clamp(-0.9 * limit, 0.9 * limit)             # inside the input grid ...
    x[0, 0, 3, :5] = 10 * limit                        # ... but for 7 pixels
    x[2, 0, 0, :2] = -10 * limit
    assert clipped_fractions(embedded_qvit, x)["input"]["clipped"] == 7


def test_images_unlike_the_calibration_set_clip_far_more(embedded_qvit):
    calib = fmnist.load_calibration_set(64)
    own = summarize(clipped_fractions(embedded_qvit, calib))
    brighter = clipped_fractions(embedded_qvit, 3 * calib)
    assert summarize(brighter)["fraction"] > 100 * own["fraction"]
    assert brighter["input"]["fraction"] > 0.5
    assert summarize(brighter)["points_over_note"][0] == "input" and not own["points_over_note"]
    text = format_clipping(brighter, top=3)
    assert len(text.splitlines()) == 1 + 3 + 2 and "quantize it again with images like them" in text
    assert f"no point clips more than {100 * CLIPPING_NOTE:g} %" in format_clipping(
        clipped_fractions(embedded_qvit, calib))


def test_analyze_clipping_cli_needs_no_float_weights(tiny_qvit, tmp_path, capsys):
    tiny_qvit.save(tmp_path / "m.safetensors")            # integer parameters only
    from conftest import images
    np.save(tmp_path / "x.npy", 4 * images(4).numpy())
    code = main(["analyze", str(tmp_path / "m.safetensors"), "--clipping", "--images", str(tmp_path / "x.npy"),
                 "--json", str(tmp_path / "c.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "clipped" in out and "fraction" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["analysis"] == "clipping" and report["images"] == 4
    assert report["points"]["input"]["values"] == 4 * 3 * 32 * 32
    assert report["summary"]["clipped"] == sum(r["clipped"] for r in report["points"].values())


def test_the_verdict_names_the_headroom_when_layernorm_outputs_clip():
    report = {"input": {"clipped": 0, "values": 1000, "fraction": 0.0},
              "blocks.0.norm1": {"clipped": 5, "values": 1000, "fraction": 5e-3},
              "blocks.0.fc1.rq": {"clipped": 2, "values": 1000, "fraction": 2e-3}}
    assert "--norm-headroom" not in format_clipping(report, headroom=1.5)      # e.g. a backbone's output norm
    text = format_clipping(report, headroom=1.5, widenable={"blocks.0.norm1"})
    assert text.splitlines()[-1] == ("1 of them LayerNorm outputs (blocks.0.norm1): without such images, a larger "
                                     "--norm-headroom than this model's 1.5 widens their ranges")
    report["blocks.0.norm1"] = {"clipped": 0, "values": 1000, "fraction": 0.0}
    assert "--norm-headroom" not in format_clipping(report, widenable={"blocks.0.norm1"})
