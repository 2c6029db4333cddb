"""The CUDA target: builds without a GPU (nvcc at compile time, device code embedded), int8 GEMMs on
tensor cores (sm_80+; ``dp4a`` below), integer-only, clear errors; on a machine with an NVIDIA GPU, bit-exact against torch and the CPU."""
import json
import shutil

import numpy as np
import pytest

from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend.build import NoDeviceError, UnknownTargetError, compile_onnx, lower, make_target, \
    resolve_target
from intvit.tvm_backend.cuda import EMBED_MARKER, detect_arch, device_code, embed, unembed
from intvit.tvm_backend.gpu_check import IMMA_PTX
from intvit.tvm_backend.importer import to_relax
from intvit.tvm_backend.inspect_ir import float_ops_in_integer_region
from conftest import assert_matches_reference, images

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="the CUDA target needs nvcc")
FATBIN_MAGIC = bytes.fromhex("50ed55ba")      # 0xBA55ED50, little-endian


@pytest.fixture(scope="module")
def cuda_builds(tiny_qvit):
    """The tiny ViT compiled for sm_80 and sm_90 (batch 2)."""
    proto = to_onnx(tiny_qvit)
    return {arch: compile_onnx(proto, "cuda", batch=2, arch=arch) for arch in ("sm_80", "sm_90")}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_build_embeds_nvcc_output_with_int8_tensor_core_gemms(cuda_builds, arch):
    code = device_code(cuda_builds[arch].executable)
    assert code["arch"] == arch
    assert code["fatbin"][:4] == FATBIN_MAGIC
    ptx = code["ptx"]
    assert f".target sm_{arch[3:]}" in ptx
    assert len(IMMA_PTX.findall(ptx)) >= 100 and "dp4a" not in ptx     # every int8 GEMM on IMMA (test_tvm_imma)
    # one kernel per fused function, none left unscheduled (each is a thread-bound launch)
    assert ptx.count(".entry ") >= 10 and "int8_linear_requant_table_kernel" in ptx


@pytest.mark.parametrize("arch,instruction", [("sm_90", "T.ptx_legacy.mma("), ("sm_75", "__dp4a")])
def test_cuda_lowering_is_integer_only_and_uses_the_tiled_gemm_layout(tiny_qvit, arch, instruction):
    mod = lower(to_relax(to_onnx(tiny_qvit), batch=2, gemm_form="tiled"), make_target(resolve_target("cuda", arch)))
    assert float_ops_in_integer_region(mod) == []
    gemm_blocks = {gv.name_hint: f.script() for gv, f in mod.functions.items() if "gemm" in f.script()}
    assert gemm_blocks and all("pack_panels" not in s and "shifted_input" not in s for s in gemm_blocks.values())
    assert any("gemm_lhs_shared" in s and instruction in s for s in gemm_blocks.values())


def test_embedded_payload_round_trips():
    payload = embed("sm_90", "//\n.version 9.0\n", FATBIN_MAGIC + b"\x00\xff")
    assert payload.startswith(EMBED_MARKER)
    assert unembed(payload) == {"arch": "sm_90", "fatbin": FATBIN_MAGIC + b"\x00\xff", "ptx": "//\n.version 9.0\n"}
    assert unembed("extern \"C\" __global__ void k() {}") is None


def test_cuda_target_errors(tiny_qvit):
    proto = to_onnx(tiny_qvit)
    with pytest.raises(UnknownTargetError, match="nvcc does not know arch 'sm_42'.*sm_90"):
        compile_onnx(proto, "cuda", arch="sm_42")
    with pytest.raises(UnknownTargetError, match="must look like sm_80"):
        compile_onnx(proto, "cuda", arch="hopper")
    with pytest.raises(UnknownTargetError, match="applies to --target cuda"):
        compile_onnx(proto, "llvm", arch="sm_90")
    if detect_arch() is None:
        with pytest.raises(UnknownTargetError, match="no NVIDIA GPU is visible.*--arch sm_90"):
            compile_onnx(proto, "cuda")


@pytest.mark.skipif(detect_arch() is not None, reason="checks the no-GPU path")
def test_cuda_module_compiles_and_writes_here_but_refuses_to_run_without_a_gpu(tiny_qvit, tmp_path, capsys):
    from intvit.cli import main
    from intvit.runtime import load
    onnx_path, so = tmp_path / "m.onnx", tmp_path / "m.so"
    tiny_qvit.export_onnx(onnx_path)
    assert main(["compile", str(onnx_path), "--target", "cuda", "--arch", "sm_90", "--batch", "2", "-o", str(so)]) == 0
    assert "CUDA sm_90, int8 GEMMs on tensor cores (IMMA), device code embedded" in capsys.readouterr().out
    meta = json.loads((tmp_path / "m.so.json").read_text())
    assert meta["target"] == "cuda" and meta["arch"] == "sm_90" and meta["batch"] == 2 and meta["gpu_gemm"] == "imma"
    with pytest.raises(NoDeviceError, match="compiled for an NVIDIA GPU \\(sm_90\\) and this machine has none"):
        load(so)
    assert main(["compile", str(onnx_path), "--target", "cuda", "--arch", "sm_999", "-o", str(tmp_path / "x.so")]) == 2
    assert "nvcc does not know arch 'sm_999'" in capsys.readouterr().err and not (tmp_path / "x.so").exists()


@pytest.mark.gpu
@pytest.mark.skipif(detect_arch() is None, reason="needs an NVIDIA GPU that TVM can use")
def test_cuda_module_equals_torch_integer_mode_and_cpu(tiny_qvit, embedded_qvit, tmp_path):
    from intvit.runtime import load
    x = images(16, seed=9)
    proto = to_onnx(tiny_qvit)
    assert_matches_reference(tiny_qvit, x, lambda b: compile_onnx(proto, "cuda", batch=b))
    from intvit.models import fmnist
    xf = fmnist.load_calibration_set(16)
    assert_matches_reference(embedded_qvit, xf, lambda b: compile_onnx(to_onnx(embedded_qvit), "cuda", batch=b))
    # through the file: compile, load (device code from the embedded fatbin), run
    embedded_qvit.export_onnx(tmp_path / "f.onnx")
    from intvit.tvm_backend.runtime import compile_to_file
    compile_to_file(tmp_path / "f.onnx", tmp_path / "f.so", target="cuda", batch=8)
    gpu = load(tmp_path / "f.so").run(xf[:8])[1]
    cpu = compile_onnx(to_onnx(embedded_qvit), "llvm", batch=8)(xf[:8])[1]
    assert np.array_equal(gpu, cpu)
