"""The embedded Fashion-MNIST ViT: real weights, real images, integer-only, and the demo CLI."""
import json
import os
import sys

import pytest
import torch

import intvit
from intvit.cli import main
from intvit.models import fmnist
from test_integer_only import float_ops


@pytest.fixture(scope="module")
def embedded():
    model = fmnist.load_model()
    q = intvit.quantize(model, fmnist.load_calibration_set(256), intvit.QuantConfig(progress=False))
    return model, q


def test_embedded_model_int8_accuracy_close_to_fp32(embedded):
    from intvit.quantize.metrics import compare
    model, q = embedded
    images, labels = fmnist.load_test_set(1000)
    r = compare(lambda x: model(x).logits, q, images, labels, progress=False)
    assert r["fp32_top1"] > 0.80                   # the shipped model is a real classifier
    assert r["int8_top1"] >= r["fp32_top1"] - 0.02
    assert r["top1_agreement"] >= 0.95


def test_embedded_model_is_integer_only_and_deterministic(embedded, tmp_path):
    _, q = embedded
    x, _ = fmnist.load_test_set(4)
    assert float_ops(q, x)[1] == []
    path = tmp_path / "f.safetensors"
    q.save(path)
    assert torch.equal(intvit.load(path).forward_int(x), q.forward_int(x))


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    """quantize → ONNX → compiled module → accuracy from the compiled module, bit-exact against the PyTorch
    integer model, INT8 vs FP32 latency; every file it names exists and the next commands it prints work."""
    rc = main(["demo", "--images", "203", "--calib", "64", "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "demo-report.json").read_text())
    assert report["images"] == 203 and 0.7 < report["fp32_top1"] <= 1.0 and report["int8_top1"] > 0.7
    assert report["differing_elements"] == 0 and report["bit_exact_images"] == 64
    assert report["int8_ms"] > 0 and report["fp32_ms"] > 0 and report["isa"] in ("amx", "vnni", "avx2", "generic")
    assert all(os.path.exists(p) for p in report["files"].values())
    out = capsys.readouterr().out
    assert "INT8 top-1 (compiled module)" in out and "bit-exact vs PyTorch integer  yes" in out
    assert report["machine"]["intvit"] == intvit.__version__ and report["date"]
    assert report["command"] == f"intvit demo --images 203 --calib 64 --quiet --out {tmp_path}"
    assert report["int8_p90_ms"] >= report["int8_ms"] and report["timing_samples"] > 0
    run_line = next(line for line in out.splitlines() if " run " in line and "--input" in line)
    prefix, args = run_line.split("#")[0].strip().split(" run ", 1)
    assert prefix == f"{sys.executable} -m intvit"            # what works from pytest's process
    assert main(["run", *args.split()]) == 0
    assert "image 7:" in capsys.readouterr().out


def test_the_demos_next_commands_run_from_the_users_shell(monkeypatch, tmp_path):
    """`.venv/bin/intvit demo` in a shell that has not activated the environment: `intvit` is not on PATH, so
    the printed commands name the script itself."""
    from intvit.bench.demo import cli_prefix
    script = tmp_path / "venv" / "bin" / "intvit"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli_prefix() == str(script)
    monkeypatch.setenv("PATH", str(script.parent))
    assert cli_prefix() == "intvit"


def test_cli_help_and_errors(tmp_path, capsys):
    assert main(["--help"]) == 0 and "demo" in capsys.readouterr().out
    assert main(["quantize", str(tmp_path / "nope"), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "intvit never downloads" in capsys.readouterr().err
    assert main(["quantize", "fmnist", "--quiet", "--max-images", "8",
                 "-o", str(tmp_path / "missing-dir" / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing-dir").exists()
