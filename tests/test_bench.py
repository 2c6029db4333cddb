"""``intvit bench`` end to end in a tiny configuration, its inputs' errors, and its measuring helpers.

No test asserts a timing: the tiny runs only keep the code path alive and
check that every number the report promises is there and consistent.
"""
import json
import os
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from intvit.bench import latency, targets
from intvit.bench.backends import ALL_BACKENDS, DEFAULT_BACKENDS, export_float_onnx
from intvit.bench.models import build_model
from intvit.bench.onnx_vit import load_float_vit
from intvit.cli import main

NUMBERS = ("median_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "images_per_s", "peak_mib", "size_bytes",
           "size_mb", "build_s", "vs_intvit_tvm")


def _bench(out, *extra):
    return main(["bench", "--model", "tiny", "--batch", "1,2", "--repeat", "1", "--per-round", "1",
                 "--warmup", "1", "--threads", "1", "--out", str(out), "--quiet", *extra])


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's imports
def test_bench_cli_tiny_every_backend(tmp_path, capsys):
    assert _bench(tmp_path, "--backends", ",".join(ALL_BACKENDS)) == 0
    stdout = capsys.readouterr().out
    [json_path] = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    [png_path] = [p for p in os.listdir(tmp_path) if p.endswith(".png")]
    assert png_path == json_path.replace(".json", ".png")
    image = __import__("matplotlib.image", fromlist=["imread"]).imread(str(tmp_path / png_path))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200

    rep = json.loads((tmp_path / json_path).read_text())
    assert json_path.startswith(rep["machine"]["host"]) and rep["date"][:10] in json_path
    assert rep["format"] == "intvit.bench/2" and rep["target"] == "llvm" and rep["repeat"] == 1
    m = rep["machine"]
    assert m["threads"] == 1 and m["cpu"] and m["tvm"] and m["torch"] and m["onnxruntime"] and "gpus" in m
    assert "--threads 1" in rep["command"] and set(rep["method"]) >= {"clock", "peak_mib", "size_mb"}
    assert [(r["model"], r["batch"]) for r in rep["results"]] == [("tiny", 1), ("tiny", 2)]
    for result in rep["results"]:
        assert list(result["backends"]) == list(ALL_BACKENDS)
        for name, r in result["backends"].items():
            if not r["available"]:          # only a toolchain-dependent backend may be missing, with a reason
                assert name in ("torch_compile_fp32", "tvm_fp32") and r["reason"]
                continue
            assert set(NUMBERS) <= set(r), name
            assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"], name
            assert r["images_per_s"] == pytest.approx(result["batch"] * 1000 / r["median_ms"])
            assert r["size_bytes"] > 0 and r["size_mb"] == r["size_bytes"] / 1e6 and r["artifact"]
            assert r["peak_mib"] is None or r["peak_mib"] >= 0
            ref = result["backends"]["intvit_int8_tvm"]["median_ms"]
            assert r["vs_intvit_tvm"] == pytest.approx(r["median_ms"] / ref), name
            assert f"\n  {name} " in stdout
        assert result["backends"]["intvit_int8_tvm"]["vs_intvit_tvm"] == 1.0
        assert result["backends"]["torch_fp32"]["artifact"] == "parameters + buffers"
    assert "tiny, batch 2" in stdout and "p99 ms" in stdout and "peak MiB" in stdout and f"wrote {tmp_path}" in stdout


def test_bench_float_onnx_model_and_fixed_batch(tmp_path, capsys):
    float_vit = build_model("tiny")
    path = tmp_path / "user.onnx"
    export_float_onnx(float_vit.model, 3, 32, str(path))
    rebuilt = load_float_vit(str(path))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt.model(x).logits, float_vit.model(x).logits, atol=1e-5)
    assert rebuilt.fixed_batch is None and rebuilt.model.config.num_attention_heads == 4

    out = tmp_path / "out"
    assert main(["bench", "--model", str(path), "--batch", "2", "--repeat", "1", "--per-round", "1", "--warmup", "0",
                 "--backends", "intvit_int8_tvm,ort_fp32", "--out", str(out), "--quiet", "--no-chart"]) == 0
    rep = json.loads(next(out.glob("*.json")).read_text())
    assert "rebuilt from ONNX" in rep["models"]["user.onnx"]["description"]
    assert rep["results"][0]["backends"]["ort_fp32"]["size_bytes"] == os.path.getsize(path)   # ran the user's file
    assert not list(out.glob("*.png"))

    fixed = tmp_path / "fixed.onnx"
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        torch.onnx.export(float_vit.model, (torch.zeros(1, 3, 32, 32),), str(fixed), dynamo=False, opset_version=17)
    capsys.readouterr()
    assert main(["bench", "--model", str(fixed), "--batch", "1,2", "--out", str(tmp_path / "none")]) == 2
    assert "fixed batch size of 1" in capsys.readouterr().err and not (tmp_path / "none").exists()


def _not_a_vit(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet50"], "unknown model 'resnet50'"),
    (["--model", "{tmp}/missing.onnx"], "missing.onnx: no such file"),
    (["--model", "{tmp}/relu.onnx"], "is not a float ViT classifier intvit can rebuild: expected one patch-embedding"),
    (["--model", "{tmp}/text.onnx"], "not a readable ONNX file"),
    (["--backends", "intvit_int8_tvm,tensorrt"], "unknown backend(s) ['tensorrt']"),
    (["--backends", "torch_fp32,ort_fp32"], "backends must include intvit_int8_tvm"),
    (["--target", "rocm"], "unknown target 'rocm'"),
    (["--batch", "0"], "--batch '0': give distinct positive integers"),
    (["--batch", "1,x"], "--batch '1,x': give distinct positive integers"),
    (["--batch", "8,8"], "--batch '8,8': give distinct positive integers"),
    (["--batch", ""], "--batch '': give distinct positive integers"),
    (["--repeat", "0"], "--repeat must be a positive integer, got 0"),
])
def test_bench_rejects_bad_input_with_one_clear_error(tmp_path, capsys, args, message):
    _not_a_vit(str(tmp_path / "relu.onnx"))
    (tmp_path / "text.onnx").write_text("not onnx")
    out = tmp_path / "results"
    argv = ["bench", "--out", str(out), "--quiet", *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("intvit bench: ") and message in err and "\n" not in err
    assert not out.exists()                                     # nothing written


def test_bench_cuda_target_without_a_device_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(targets, "cuda_device", lambda: None)
    assert main(["bench", "--target", "cuda", "--model", "tiny", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA device" in err and "NVIDIA GPU" in err and "--target llvm" in err and "\n" not in err
    monkeypatch.setattr(targets, "cuda_device", lambda: "NVIDIA H100")     # a GPU, but no CUDA backends yet
    assert main(["bench", "--target", "cuda", "--model", "tiny", "--out", str(tmp_path / "r")]) == 2
    assert "found NVIDIA H100, but the bench's CUDA backends are not implemented" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_torch_compile_failure_is_reported_not_fatal(tmp_path, monkeypatch):
    def broken_compile(model, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("InductorError: C++ compiler not found (simulated)\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    rep = latency.run(["tiny"], [1, 2], repeat=1, threads=1, out_dir=str(tmp_path), progress=lambda m: None,
                      backends=("intvit_int8_tvm", "torch_compile_fp32"), per_round=1, warmup=0, chart=False)
    for result in rep["results"]:
        assert result["backends"]["torch_compile_fp32"] == {
            "available": False, "reason": "RuntimeError: InductorError: C++ compiler not found (simulated)"}
        assert result["backends"]["intvit_int8_tvm"]["available"]
    from intvit.bench.report import format_report
    assert "torch_compile_fp32   unavailable: RuntimeError: InductorError" in format_report(rep)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the RSS high-water mark is read from /proc")
def test_call_peak_mib_sees_a_calls_transient_memory():
    def allocate(mib):
        a = np.ones(mib * 2**20 // 8)           # touched, so resident
        return float(a[-1])

    assert latency.call_peak_mib(allocate, 96) >= 90
    assert latency.call_peak_mib(lambda _: None, 0) < 8


def test_statistics_and_batch_parsing():
    ts = [float(v) for v in range(100, 0, -1)]
    s = latency.summarize(ts, batch=4)
    assert (s["median_ms"], s["p90_ms"], s["p99_ms"], s["min_ms"], s["samples"]) == (50.5, 90.0, 99.0, 1.0, 100)
    assert s["images_per_s"] == pytest.approx(4000 / 50.5)
    assert latency.summarize([3.0, 1.0, 2.0], batch=1)["p99_ms"] == 3.0       # few samples: p99 is the slowest
    assert latency.parse_batches("1, 8,32") == [1, 8, 32]
    assert "torch_compile_fp32" in DEFAULT_BACKENDS and "tvm_fp32" not in DEFAULT_BACKENDS


def test_python_m_latency_is_the_same_command(capsys):
    with pytest.raises(SystemExit) as exc:
        latency.main(["--help"])
    assert exc.value.code == 0 and "--backends" in capsys.readouterr().out
    assert latency.main(["--model", "resnet50"]) == 2
    assert "unknown model 'resnet50'" in capsys.readouterr().err
