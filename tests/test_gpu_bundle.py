"""The GPU validation bundle, assembled and dry-run here (no GPU): weights lifted out of modules, a
runtime-only TVM that runs the CPU modules bit-exactly, a runner that fails on a wrong reference."""
import json
import os
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend.build import compile_onnx
from conftest import images

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="the CUDA target needs nvcc")


def test_lifted_weights_give_the_same_outputs(tiny_qvit):
    import tvm
    from tvm.runtime.vm import VirtualMachine
    x = images(2)
    compiled = compile_onnx(to_onnx(tiny_qvit), "llvm", batch=2, lift_weights=4096)
    assert compiled.lifted and all(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize >= 4096
                                   for w in compiled.lifted)
    vm = VirtualMachine(compiled.executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy(), tvm.cpu()), *compiled.lifted_values)
    assert np.array_equal(out[1].numpy(), tiny_qvit.forward_int(x).numpy())
    with pytest.raises(Exception):               # the weights are inputs now: main needs them
        vm["main"](tvm.runtime.tensor(x.numpy(), tvm.cpu()))
    with pytest.raises(TypeError, match="compiled with lift_weights: its main takes the images and"):
        compiled(x)


def test_lift_weights_and_tune_together_are_refused(tiny_qvit, tmp_path):
    with pytest.raises(ValueError, match="use tune or lift_weights, not both"):
        compile_onnx(to_onnx(tiny_qvit), "llvm", tune=2, tuning_dir=str(tmp_path), lift_weights=4096)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    from intvit.bench.gpu_bundle import assemble
    out = str(tmp_path_factory.mktemp("bundle") / "b")
    manifest = assemble(out, "sm_90", exact_models=("tiny",), latency_models=("tiny",), latency_batches=(2,),
                        progress=lambda s: None)
    return out, manifest


@needs_nvcc
def test_bundle_holds_a_runtime_without_the_compiler_and_fits_a_device_call(small_bundle):
    from intvit.bench.gpu_bundle import DEVICE_LIMIT, archive_path
    out, manifest = small_bundle
    assert os.path.getsize(archive_path(out)) < DEVICE_LIMIT / 2
    lib = os.path.join(out, "runtime", "tvm", "lib")
    assert sorted(os.listdir(lib)) == ["libcudart.so.13", "libtvm_runtime.so", "libtvm_runtime_cuda.so",
                                       "libtvm_runtime_extra.so"]
    (wheel,) = os.listdir(os.path.join(out, "runtime", "wheels"))
    assert wheel.startswith("apache_tvm_ffi-0.1.14.post1-cp312-cp312-manylinux")
    assert [(e["model"], e["batch"]) for e in manifest["exact"]] == [("tiny", 1), ("tiny", 8)]
    assert sorted(e["backend"] for e in manifest["latency"]) == ["intvit_int8", "tvm_fp16", "tvm_fp32"]
    from intvit.bench.gpu_bundle import LIFT_BYTES       # the tiny model's weights are all under it
    assert all(int(np.prod(w["shape"])) * np.dtype(w["dtype"]).itemsize >= LIFT_BYTES
               for e in manifest["latency"] for w in e["lifted"])
    with tarfile.open(archive_path(out)) as tar:
        assert "b/manifest.json" in tar.getnames()


@needs_nvcc
def test_dry_run_runs_the_cpu_modules_on_the_runtime_only_tvm(small_bundle):
    from intvit.bench.gpu_bundle import archive_path, dry_run
    out, _ = small_bundle
    report = dry_run(archive_path(out))
    assert report["tvm_runtime_only"] is True
    assert [(r["batch"], r["equal"]) for r in report["exact"]] == [(1, True), (8, True)]
    assert report["cuda_modules_checked"] == 5


@needs_nvcc
def test_runner_fails_on_a_wrong_reference(small_bundle, tmp_path):
    from intvit.bench import gpu_check
    out, manifest = small_bundle
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    ref = copy / "exact" / manifest["exact"][0]["reference"]
    wrong = np.load(ref)
    wrong[3, 1] += 1
    np.save(ref, wrong)
    assert gpu_check.main([str(copy), "--device", "cpu", "--out", str(tmp_path / "r")]) == 1
    rows = json.loads((tmp_path / "r" / "gpu_check.json").read_text())["exact"]
    assert [(r["batch"], r["equal"], r["differing_logits"]) for r in rows] == [(1, False, 1), (8, False, 1)]


def test_gpu_check_script_is_valid_bash_and_refuses_a_missing_bundle(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    run = subprocess.run(["bash", script, str(tmp_path / "none.tar.xz")], capture_output=True, text=True)
    assert run.returncode == 2 and "no bundle at" in run.stderr


@needs_nvcc
def test_runner_on_a_machine_without_a_gpu_says_so(small_bundle, tmp_path, capsys):
    import torch
    from intvit.bench import gpu_check
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU path")
    out, _ = small_bundle
    assert gpu_check.main([out, "--out", str(tmp_path / "r")]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err and not (tmp_path / "r").exists()


@needs_nvcc
def test_a_bundle_over_the_device_limit_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    from intvit.bench import gpu_bundle
    monkeypatch.setattr(gpu_bundle, "DEVICE_LIMIT", gpu_bundle.TREE_ALLOWANCE + 1024)
    out = str(tmp_path / "b")
    with pytest.raises(gpu_bundle.BundleError, match="MiB beside the working tree"):
        gpu_bundle.assemble(out, "sm_90", latency=False, exact_models=("tiny",), progress=lambda s: None)
    assert os.listdir(tmp_path) == []


@needs_nvcc
def test_runner_reports_a_broken_module_and_goes_on(small_bundle, tmp_path):
    from intvit.bench import gpu_check
    out, manifest = small_bundle
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    (copy / "exact" / manifest["exact"][0]["cpu"]).write_bytes(b"not a library")
    assert gpu_check.main([str(copy), "--device", "cpu", "--out", str(tmp_path / "r")]) == 1
    rows = json.loads((tmp_path / "r" / "gpu_check.json").read_text())["exact"]
    assert rows[0]["equal"] is False and rows[0]["error"] and rows[1]["equal"] is True     # batch 8 still ran


def test_summary_table_gives_each_backend_as_a_ratio_to_intvit():
    from intvit.bench.backends import REFERENCE
    from intvit.bench.gpu_check import summary_table
    rows = [{"model": "vit_base", "batch": 8, "backend": REFERENCE, "median_ms": 2.0, "ratio_to_intvit": 1.0},
            {"model": "vit_base", "batch": 8, "backend": "torch_fp16", "median_ms": 3.0, "ratio_to_intvit": 1.5}]
    header, line = summary_table(rows).splitlines()
    assert header.split()[-1] == "torch_fp16" and line.split() == ["vit_base", "8", "2.000", "1.50x"]
