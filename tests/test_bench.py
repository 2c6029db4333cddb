"""``intvit bench`` end to end in a tiny configuration, its inputs' errors, and its measuring helpers.

No test asserts a timing: the tiny runs only keep the code path alive and
check that every number the report promises is there and consistent.
"""
import json
import os
import re
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from intvit.bench import command, latency, stats, targets
from intvit.bench.backends import ALL_BACKENDS, DEFAULT_BACKENDS, OPTIONAL
from intvit.bench.onnx_float import export_float_onnx
from intvit.bench.models import build_model
from intvit.bench.onnx_vit import load_float_vit
from intvit.cli import main
from intvit.tvm_backend.cuda import detect_arch

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
            if not r["available"]:          # only a toolchain- or package-dependent backend, with a reason
                assert name in OPTIONAL and r["reason"]
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
        assert result["backends"]["intvit_int8_tvm"]["gemm_isa"] in ("amx", "vnni", "avx2", "generic")
        vnni = result["backends"]["intvit_int8_tvm_vnni"]
        assert not vnni["available"] or vnni["gemm_isa"] == "vnni"
        avx2 = result["backends"]["intvit_int8_tvm_avx2"]
        assert avx2["gemm_isa"] == "avx2" if avx2["available"] else "AVX2" in avx2["reason"]
        assert "gemm_isa" not in result["backends"]["torch_fp32"]
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
    monkeypatch.setattr(targets, "cuda_device", lambda: None)      # what this function reports on a GPU-less machine
    assert main(["bench", "--target", "cuda", "--model", "tiny", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("intvit bench: --target cuda: no CUDA device") and "\n" not in err
    assert "NVIDIA GPU" in err and "--target llvm" in err and "--build-only" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["--build-only"], "--build-only applies to --target cuda"),
    (["--arch", "sm_90"], "--arch sm_90 applies to --target cuda, not --target llvm"),
    (["--target", "cuda", "--build-only", "--arch", "sm_90", "--backends", "intvit_int8_tvm,intvit_int8_ort"],
     "unknown backend(s) ['intvit_int8_ort'] for --target cuda"),
    (["--target", "cuda", "--build-only", "--arch", "sm_90", "--backends", "torch_fp16"],
     "backends must include intvit_int8_tvm"),
    (["--target", "cuda", "--build-only", "--arch", "hopper"], "--arch: CUDA arch must look like sm_80 or sm_90"),
    (["--target", "cuda", "--build-only", "--arch", "sm_42"], "--arch: nvcc does not know arch 'sm_42'"),
])
def test_bench_cuda_options_reject_bad_input_with_one_clear_error(tmp_path, capsys, args, message):
    if "--arch" in args and args[0] == "--target" and shutil.which("nvcc") is None:
        pytest.skip("checking a CUDA arch needs nvcc")
    out = tmp_path / "results"
    assert main(["bench", "--model", "tiny", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("intvit bench: ") and message in err and "\n" not in err, err
    assert not out.exists()


@pytest.mark.skipif(shutil.which("nvcc") is None or detect_arch() is not None,
                    reason="checks the build-only mode where no GPU gives the arch")
def test_bench_build_only_without_arch_or_gpu_asks_for_the_arch(capsys):
    assert main(["bench", "--target", "cuda", "--build-only", "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--build-only: no GPU here to take the arch from; name it, e.g. --arch sm_90" in err and "\n" not in err


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="building for CUDA needs nvcc")


@pytest.fixture(scope="module")
def tiny_build_only():
    """``--build-only``'s builds of the tiny model for sm_90, batch 2 (intvit INT8 and TVM FP16 are compiled)."""
    from intvit.bench.build_only import run_build_only
    lines = []
    backends = ("intvit_int8_tvm", "tvm_fp16", "torch_fp16", "ort_int8_qdq", "tensorrt_int8")
    return run_build_only(["tiny"], [2], backends, "sm_90", progress=lines.append), lines


@needs_nvcc
def test_build_only_compiles_intvit_int8_and_tvm_fp16_device_code_for_sm_90(tiny_build_only):
    result, _ = tiny_build_only
    arts = {a.backend: a for a in result["artifacts"]}
    assert result["arch"] == "sm_90" and list(arts) == ["intvit_int8_tvm", "tvm_fp16", "torch_fp16", "ort_int8_qdq",
                                                         "tensorrt_int8"]
    intvit_ptx, fp16_ptx = arts["intvit_int8_tvm"].ptx, arts["tvm_fp16"].ptx
    for a in (arts["intvit_int8_tvm"], arts["tvm_fp16"]):
        assert a.batch == 2 and a.size_bytes > 100_000 and a.build_s > 0 and ".target sm_90" in a.ptx
        assert a.device["arch"] == "sm_90" and a.device["fatbin_bytes"] > 10_000 and a.device["kernels"] >= 10
    # intvit: every int8 GEMM on the int8 tensor cores (sm_90), no dp4a, and no float16 anywhere
    assert arts["intvit_int8_tvm"].device["mma"] == intvit_ptx.count("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32")
    assert arts["intvit_int8_tvm"].device["mma"] >= 100 and arts["intvit_int8_tvm"].device["dp4a"] == 0
    assert arts["intvit_int8_tvm"].device["f16_arith"] == 0
    # TVM FP16: float16 arithmetic instructions (the matmuls' multiply-adds), no int8 dot products
    f16_ops = re.findall(r"\b(?:add|mul|fma)(?:\.rn)?\.f16(?:x2)?\b", fp16_ptx)
    assert len(f16_ops) >= 100 and "dp4a" not in fp16_ptx
    assert arts["tvm_fp16"].device["f16_arith"] >= len(f16_ops)


@needs_nvcc
def test_build_only_lists_what_it_did_not_build_and_why(tiny_build_only):
    from intvit.bench.build_only import format_build_only
    result, progress = tiny_build_only
    arts = {a.backend: a for a in result["artifacts"]}
    assert arts["torch_fp16"].size_bytes is None and arts["torch_fp16"].artifact.startswith("not built: eager")
    assert arts["tensorrt_int8"].artifact.startswith("not built: TensorRT builds its engines on the GPU")
    assert arts["ort_int8_qdq"].batch is None and arts["ort_int8_qdq"].size_bytes > 0
    assert "QDQ ONNX file (runs on ORT's CUDAExecutionProvider" in arts["ort_int8_qdq"].artifact
    table = format_build_only(result)
    assert table.startswith("CUDA sm_90 artifacts") and "nothing written" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if " intvit_int8_tvm " in line)
    assert row.split()[:3] == ["tiny", "intvit_int8_tvm", "2"] and "mma" in row and "kernels" in row
    assert any("compiling for sm_90, batch 2" in line for line in progress)


@needs_nvcc
def test_bench_build_only_cli_prints_the_builds_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "--target", "cuda", "--arch", "sm_90", "--build-only", "--model", "tiny", "--batch", "1",
                 "--backends", "intvit_int8_tvm,torch_bf16,ort_fp32", "--out", str(out), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    rows = [line.split() for line in stdout.splitlines() if line.startswith("  tiny ")]
    assert [r[1] for r in rows] == ["intvit_int8_tvm", "torch_bf16", "ort_fp32"]
    assert rows[0][2] == "1" and float(rows[0][3]) > 0 and "dp4a" in stdout
    assert "built for CUDA sm_90" in stdout and "nothing timed, nothing written" in stdout
    assert not out.exists()


@needs_nvcc
def test_tvm_fp16_cuda_build_puts_large_matmuls_on_tensor_cores(tmp_path):
    """dlight's tensor-core rule (WMMA) on a float16 matmul larger than 64 in every dimension, for sm_90."""
    from intvit.bench.build_only import device_code_summary
    from intvit.bench.tvm_float import build_float_cuda
    path = str(tmp_path / "linear.onnx")
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(256, 128), (torch.zeros(2, 96, 256),), path, dynamo=False,
                          input_names=["x"], opset_version=17)
    summary, ptx = device_code_summary(build_float_cuda(path, "x", [2, 96, 256], "float16", "sm_90"))
    assert summary["mma"] > 0 and "wmma.mma.sync.aligned" in ptx and ".f16" in ptx


def test_cuda_report_table_and_chart(tmp_path):
    """The table and chart of a --target cuda report (its numbers made up here: no GPU needed)."""
    from intvit.bench import report as rep
    from intvit.bench.targets import CUDA_BACKENDS
    stats = {"median_ms": 2.0, "p90_ms": 2.5, "p99_ms": 3.0, "mean_ms": 2.1, "min_ms": 1.9, "samples": 3,
             "images_per_s": 1000.0, "peak_mib": 12.0, "size_bytes": 10**6, "size_mb": 1.0, "artifact": ".so",
             "build_s": 1.0, "vs_intvit_tvm": 1.0}
    backends = {name: ({"available": True, **stats} if i < 12 else {"available": False, "reason": "no TensorRT"})
                for i, name in enumerate(CUDA_BACKENDS)}
    report = {"target": "cuda", "arch": "sm_90", "date": "2026-11-23T10:00:00", "backends": list(CUDA_BACKENDS),
              "machine": {"host": "gpu-box", "cpu": "x", "threads": 16, "llvm_mcpu": "x",
                          "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver": "570.1", "memory": "81559 MiB"}]},
              "results": [{"model": "tiny", "batch": b, "backends": backends} for b in (1, 8)]}
    text = rep.format_report(report)
    assert "tiny, batch 8 (NVIDIA H100 80GB HBM3, CUDA sm_90)" in text and "CUDA-event" in text
    assert "tensorrt_int8        unavailable: no TensorRT" in text
    assert rep.method("cuda")["clock"].startswith("CUDA events") and rep.method("llvm") is rep.METHOD
    rep.write_chart(report, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_unavailable_reason_keeps_what_went_wrong():
    """A native library's message that opens with where it was raised keeps its last line (what went wrong)."""
    from intvit.bench.backends import _reason
    ov = RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\nException from src/plugins/x.cpp:\n"
                      "Supported primitive descriptors list is empty for node: Softmax\n")
    assert _reason(ov) == ("RuntimeError: Exception from src/inference/src/cpp/core.cpp:117: … Supported primitive "
                           "descriptors list is empty for node: Softmax")
    assert _reason(ImportError("No module named 'openvino'\nmore")) == "ImportError: No module named 'openvino'"
    assert len(_reason(ValueError("x" * 1000))) == 300


def test_a_run_with_capped_instruction_sets_says_so(monkeypatch):
    """``ATEN_CPU_CAPABILITY=avx2`` and the like (torch, MKL, oneDNN made to run as on an older CPU) are recorded
    with torch's dispatch level and named in every table heading."""
    from intvit.bench import report as rep
    from intvit.bench.machine import machine_facts
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    m = machine_facts(1)
    assert m["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"} and m["torch_cpu_capability"]
    label = rep.device_label({"target": "llvm", "machine": m})
    assert label.endswith("1 threads; instruction sets capped by ONEDNN_MAX_CPU_ISA=AVX2")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert "capped" not in rep.device_label({"target": "llvm", "machine": {**m, "isa_caps": {}}})


@pytest.mark.gpu
@pytest.mark.skipif(detect_arch() is None or not torch.cuda.is_available(),
                    reason="needs an NVIDIA GPU that TVM and a CUDA build of torch can use")
def test_bench_cli_tiny_on_the_gpu(tmp_path, capsys):
    """The real GPU bench end to end: every default CUDA backend plus torch.compile FP16, batch 2, one round."""
    from intvit.bench.targets import CUDA_DEFAULT_BACKENDS
    assert _bench(tmp_path, "--target", "cuda", "--batch", "2",
                  "--backends", ",".join(CUDA_DEFAULT_BACKENDS + ("torch_compile_fp16",))) == 0
    stdout = capsys.readouterr().out
    rep = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert next(tmp_path.glob("*.png"))
    assert rep["target"] == "cuda" and rep["arch"] == detect_arch() and rep["method"]["clock"].startswith("CUDA")
    assert rep["machine"]["gpus"] and rep["machine"]["cuda"]["torch_cuda"]
    [result] = rep["results"]
    assert result["batch"] == 2 and "--arch " + detect_arch() in rep["command"]
    for name, r in result["backends"].items():
        if not r["available"]:          # only a backend that needs an optional package may be missing
            assert name.startswith(("ort_", "tensorrt_", "torch_compile_")) and r["reason"], (name, r)
            continue
        assert set(NUMBERS) <= set(r), name
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"], name
        assert r["size_bytes"] > 0 and r["peak_mib"] is not None and r["peak_mib"] >= 0, name
        assert r["vs_intvit_tvm"] == pytest.approx(r["median_ms"] / result["backends"]["intvit_int8_tvm"]["median_ms"])
        assert f"\n  {name} " in stdout
    for name in ("intvit_int8_tvm", "tvm_fp32", "tvm_fp16", "torch_fp32", "torch_fp16", "torch_bf16"):
        assert result["backends"][name]["available"], (name, result["backends"][name])
    assert "tiny, batch 2 (" in stdout and "CUDA " + detect_arch() in stdout


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
    s = stats.summarize(ts, batch=4)
    assert (s["median_ms"], s["p90_ms"], s["p99_ms"], s["min_ms"], s["samples"]) == (50.5, 90.0, 99.0, 1.0, 100)
    assert s["images_per_s"] == pytest.approx(4000 / 50.5)
    assert stats.summarize([3.0, 1.0, 2.0], batch=1)["p99_ms"] == 3.0       # few samples: p99 is the slowest
    assert stats.disturbed(s)                                   # p90 90 ms against a median of 50.5 ms
    assert not stats.disturbed(stats.summarize([10.0] * 9 + [14.0], batch=1))
    assert latency.parse_batches("1, 8,32") == [1, 8, 32]
    assert {"torch_compile_fp32", "tvm_fp32"} <= set(DEFAULT_BACKENDS) and "intvit_int8_ort" not in DEFAULT_BACKENDS


def test_python_m_bench_command_is_the_same_command(capsys):
    with pytest.raises(SystemExit) as exc:
        command.main(["--help"])
    assert exc.value.code == 0 and "--backends" in capsys.readouterr().out
    assert command.main(["--model", "resnet50"]) == 2
    assert "unknown model 'resnet50'" in capsys.readouterr().err


def test_cpu_peers_answer_like_the_float_model(tmp_path):
    """Each peer of ``intvit bench`` (OpenVINO FP32 / default / NNCF INT8, torch BF16 eager and compiled, PT2E
    INT8 through inductor) runs the same model: FP32 to float tolerance, the rest close to the float logits."""
    from intvit.bench import cpu_peers
    bm = build_model("tiny")
    fp32 = tmp_path / "fp32.onnx"
    export_float_onnx(bm.model, bm.channels, bm.image, str(fp32))
    x = bm.calib[:2].numpy()
    with torch.no_grad():
        ref = bm.model(torch.from_numpy(x)).logits.numpy()
    runs = {name: cpu_peers.openvino_backend(str(fp32), bm.input_name, 2, 1, precision,
                                             bm.calib if name == "openvino_int8" else None, str(tmp_path))[0]
            for name, precision in (("openvino_fp32", "f32"), ("openvino_default", None), ("openvino_int8", None))}
    runs["torch_bf16"] = cpu_peers.torch_bf16_backend(bm.model, 2, False, x)[0]
    runs["torch_compile_bf16"] = cpu_peers.torch_bf16_backend(bm.model, 2, True, x)[0]
    runs["pt2e_int8_inductor"] = cpu_peers.pt2e_inductor_backend(bm.model, bm.calib, 2, x)
    assert set(runs) == set(cpu_peers.PEER_BACKENDS)
    scale = float(np.abs(ref).max())
    for name, run in runs.items():
        err = float(np.abs(run(x) - ref).max())
        assert err <= (1e-4 if name == "openvino_fp32" else 0.1) * scale, (name, err, scale)


def test_a_second_report_the_same_day_does_not_overwrite_the_first(tmp_path):
    from intvit.bench.report import output_stem
    report = {"machine": {"host": "my host"}, "date": "2026-12-01T10:00:00"}
    assert output_stem(report, str(tmp_path)) == str(tmp_path / "my_host-2026-12-01")
    (tmp_path / "my_host-2026-12-01.json").write_text("{}")
    assert output_stem(report, str(tmp_path)) == str(tmp_path / "my_host-2026-12-01-2")
    (tmp_path / "my_host-2026-12-01-2.png").write_bytes(b"")
    assert output_stem(report, str(tmp_path)) == str(tmp_path / "my_host-2026-12-01-3")


def test_profile_option_records_and_prints_the_kernel_profile(tmp_path, capsys):
    """``intvit bench --profile``: each intvit TVM backend's result carries its kernel profile (the GEMM MACs
    counted from the shapes), the output prints it, and the GPU target refuses the option."""
    assert command.main(["--model", "tiny", "--batch", "2", "--repeat", "1", "--per-round", "1", "--warmup", "0",
                         "--backends", "intvit_int8_tvm", "--threads", "1", "--out", str(tmp_path), "--no-chart",
                         "--quiet", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "tiny, intvit_int8_tvm, kernel profile: batch 2" in out and "GEMM int8: linear" in out
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    profile = report["results"][0]["backends"]["intvit_int8_tvm"]["profile"]
    assert profile["batch"] == 2 and profile["classes"]["GEMM int8: linear"]["gmac"] > 0
    assert "--profile" in report["command"]
    with pytest.raises(latency.BenchArgumentError, match="use it with --target llvm"):
        latency.run(["tiny"], [1], repeat=1, threads=1, target="cuda", arch="sm_90", profile=True,
                    backends=("intvit_int8_tvm",))
