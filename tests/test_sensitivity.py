"""Per-layer sensitivity ranks a deliberately mis-scaled quant point first."""
import json

import intvit
from intvit.quantize.sensitivity import layer_sensitivity
from intvit.models.spec import linear_layers, quant_points
from conftest import hf_vit, images


def test_a_mis_scaled_point_ranks_first_and_every_point_is_listed():
    m = hf_vit(seed=3)
    q = intvit.quantize(m, images(16), intvit.QuantConfig(progress=False))
    q.scales["blocks.1.fc1"] *= 40          # a known-bad range: 40x too coarse
    rows = layer_sensitivity(q, images(8, seed=2), progress=False)
    assert rows[0]["name"] == "blocks.1.fc1" and rows[0]["kind"] == "activation"
    assert len(rows) == len(quant_points(q.spec)) + len(linear_layers(q.spec))
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)
    assert all(0.0 <= r["top1_agreement"] <= 1.0 for r in rows)


def test_analyze_cli_on_the_embedded_model(tmp_path, capsys):
    from intvit.cli import main
    assert main(["quantize", "fmnist", "--quiet", "--max-images", "64", "--keep-float", "-o", str(tmp_path / "f.safetensors")]) == 0
    out = tmp_path / "s.json"
    png = tmp_path / "s.png"
    assert main(["analyze", str(tmp_path / "f.safetensors"), "--count", "16", "--quiet", "--json", str(out),
                 "--top", "6", "--png", str(png)]) == 0
    saved = json.loads(out.read_text())
    rows = saved["rows"]
    assert saved["analysis"] == "sensitivity" and saved["images"] == 16 and saved["machine"]["intvit"] and saved["date"]
    assert saved["command"].startswith("intvit analyze ") and saved["model"].endswith("f.safetensors")
    assert rows and "rank" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert main(["analyze", str(tmp_path / "f.safetensors"), "--images", str(tmp_path / "none.npy")]) == 2
