"""Tensor-core (IMMA) GEMMs for the CUDA target, checked without a GPU: the schedule's CPU twin is bit-exact
on whole models of every GEMM shape of DeiT-S, ViT-B and the embedded model; the PTX of sm_80 and sm_90
builds holds ``mma.sync`` s8 in every int8 GEMM kernel, no ``dp4a``, no spills; sm_75 keeps ``dp4a``."""
import json
import shutil

import numpy as np
import pytest

from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend.build import compile_onnx
from intvit.tvm_backend.cuda import device_code
from intvit.tvm_backend.gpu_check import IMMA_PTX, compile_cpu_twin, gemm_kernel_report, ptx_kernels
from intvit.tvm_backend.imma import gemm_path, imma_arch
from conftest import hf_vit, images

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="the CUDA target needs nvcc")

# One layer has every GEMM shape of its model (patch embedding, q/k/v, Q·Kᵀ, out, fc1, fc2, head).
WIDTHS = {"deit_small": dict(dim=384, heads=6, mlp=1536), "vit_base": dict(dim=768, heads=12, mlp=3072)}


def _one_layer(name):
    import intvit
    model = hf_vit(image=224, patch=16, layers=1, labels=1000, **WIDTHS[name])
    x = images(4, size=224)
    return intvit.quantize(model, x, intvit.QuantConfig(progress=False)), x


@pytest.fixture(scope="module")
def one_layer_models():
    return {name: _one_layer(name) for name in WIDTHS}


def _assert_twin_exact(q, x, batches, min_twins):
    proto = to_onnx(q)
    for b in batches:
        compiled, twins = compile_cpu_twin(proto, b)
        assert twins >= min_twins
        n = (x.shape[0] // b) * b
        got = np.concatenate([compiled(x[i:i + b])[1] for i in range(0, n, b)])
        assert np.array_equal(got, q.forward_int(x[:n]).numpy()), f"batch {b}"


def test_cpu_twin_is_exact_on_the_tiny_and_embedded_models(tiny_qvit, embedded_qvit):
    from intvit.models import fmnist
    _assert_twin_exact(tiny_qvit, images(8), (1, 8), min_twins=8)
    _assert_twin_exact(embedded_qvit, fmnist.load_calibration_set(16), (1, 8), min_twins=8)


@pytest.mark.parametrize("name,batches", [("deit_small", (1, 2)), ("vit_base", (1,))])
def test_cpu_twin_is_exact_on_every_gemm_shape_of(name, batches, one_layer_models):
    q, x = one_layer_models[name]
    # patch embedding, q, k, v, Q·Kᵀ, A·V, out, fc1, fc2, head (kernels of equal shape and epilogue are shared)
    _assert_twin_exact(q, x, batches, min_twins=8)


def test_cpu_twin_check_catches_a_wrong_row_mapping(tiny_qvit, monkeypatch):
    """The twin check is not vacuous: folding the batch into the rows wrongly changes the outputs."""
    from intvit.tvm_backend import gpu_gemm
    monkeypatch.setattr(gpu_gemm, "flat_row_index", lambda idx, dims: idx[-1])      # every image's rows as image 0's
    with pytest.raises(AssertionError, match="batch 8"):
        _assert_twin_exact(tiny_qvit, images(8), (8,), min_twins=8)


def test_a_fragment_layout_other_than_ldmatrix_is_refused_by_tensorize(monkeypatch):
    """What the twin cannot see (a fragment's lane/register layout is only a storage permutation on the CPU)
    the GPU build checks: tensorize matches each fragment against the ldmatrix/mma intrinsics' layouts."""
    from tvm import te
    from intvit.tvm_backend import imma
    from intvit.tvm_backend.gpu_gemm import tiled_gemm_te
    a = te.placeholder((64, 64), "int8", name="a")
    b = te.placeholder((64, 64), "int8", name="b")
    func = te.create_prim_func([a, b, tiled_gemm_te(a, b, None, "nk", out_dtype="int32")])
    imma.schedule_gemm_imma(func, gpu=True)
    real = imma._fragment_layouts
    monkeypatch.setattr(imma, "_fragment_layouts", lambda: ((lambda i, j: (j, i)), real()[1]))
    imma.schedule_gemm_imma(func, gpu=False)             # the CPU twin does not care
    with pytest.raises(Exception, match="tensorize"):
        imma.schedule_gemm_imma(func, gpu=True)


_PTX = {}


def _ptx(q, arch, batch=8):
    key = (id(q), arch, batch)
    if key not in _PTX:
        _PTX[key] = device_code(compile_onnx(to_onnx(q), "cuda", batch=batch, arch=arch).executable)["ptx"]
    return _PTX[key]


def _gemm_report(q, arch, batch=2):
    return gemm_kernel_report(_ptx(q, arch, batch), arch)


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_int8_gemm_kernel_runs_on_tensor_cores(arch, tiny_qvit, embedded_qvit, one_layer_models):
    for q, kernels in ((tiny_qvit, 8), (embedded_qvit, 8), (one_layer_models["deit_small"][0], 7),
                       (one_layer_models["vit_base"][0], 7)):
        rows = _gemm_report(q, arch, batch=8)
        assert len(rows) >= kernels
        for row in rows:
            assert row["imma"] >= 2 and row["dp4a"] == 0, row         # two m16n8k32 per 16 × 16 fragment
            assert row["spill_bytes"] == 0, row
        if kernels == 7:      # DeiT-S / ViT-B linears: every K a multiple of 64, so every operand copy is cp.async
            assert all(row["cp_async"] >= 2 for row in rows if "attention_av" not in row["kernel"]), rows
        # A·V too (two signed bytes per probability): no int16 GEMM is left
        assert any("attention_av" in row["kernel"] for row in rows)
        assert not [k for k in ptx_kernels(_ptx(q, arch)) if k.startswith("int16_gemm")]


@needs_nvcc
def test_sm75_keeps_dp4a_and_says_so(tiny_qvit, tmp_path, capsys):
    from intvit.cli import main
    rows = _gemm_report(tiny_qvit, "sm_75")
    assert rows and all(r["imma"] == 0 and r["dp4a"] > 0 for r in rows)
    assert [k for k in ptx_kernels(_ptx(tiny_qvit, "sm_75", 2)) if k.startswith("int16_gemm")]   # A·V: SIMT
    onnx_path, so = tmp_path / "m.onnx", tmp_path / "m.so"
    tiny_qvit.export_onnx(onnx_path)
    for arch, path in (("sm_75", "dp4a"), ("sm_90", "imma")):
        assert main(["compile", str(onnx_path), "--target", "cuda", "--arch", arch, "--batch", "2", "-o", str(so)]) == 0
        out = capsys.readouterr().out
        meta = json.loads((tmp_path / "m.so.json").read_text())
        assert meta["gpu_gemm"] == path
        if path == "dp4a":
            assert "int8 GEMMs on __dp4a" in out and "note: sm_75 has no int8 mma.sync" in out
            assert meta["notes"] == [gemm_path("sm_75")[1]]
        else:
            assert "int8 GEMMs on tensor cores (IMMA)" in out and "notes" not in meta


def test_gemm_path_by_arch():
    assert [imma_arch(a) for a in ("sm_61", "sm_75", "sm_80", "sm_86", "sm_90", "sm_90a")] == \
        [False, False, True, True, True, True]
    assert gemm_path("sm_90") == ("imma", None)
    assert gemm_path("sm_70")[0] == "dp4a" and "sm_70" in gemm_path("sm_70")[1]


def test_ptx_parsing_helpers():
    ptx = (".visible .entry a_kernel(\n.param .u64 p)\n{\nmma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {}\n}\n"
           ".visible .entry b_kernel(\n)\n{\ndp4a.s32.s32 %r1;\n}\n")
    kernels = ptx_kernels(ptx)
    assert set(kernels) == {"a_kernel", "b_kernel"}
    assert len(IMMA_PTX.findall(kernels["a_kernel"])) == 1 and not IMMA_PTX.findall(kernels["b_kernel"])


@pytest.mark.parametrize("gpu", [False, True])
def test_attention_av_as_two_signed_bytes_is_exact(gpu):
    """``split_probs_tiled_te`` (p = 256·hi + lo, lo − 128 compensated in two extra K chunks) against numpy,
    probabilities at 0, 255, 256, 2**15 − 1 and values at ±127/−128, also through the CPU twin of its IMMA
    schedule; the GPU schedule tensorizes (every fragment matches the ldmatrix/mma intrinsics)."""
    import tvm
    from tvm import te
    from intvit.tvm_backend.gpu_gemm import split_probs_tiled_te
    from intvit.tvm_backend.imma import schedule_gemm_imma
    lead, t, n = (2, 3), 197, 64
    p = te.placeholder((*lead, t, t), "int16", name="p")
    v = te.placeholder((*lead, t, n), "int8", name="v")
    func = te.create_prim_func([p, v, split_probs_tiled_te(p, v, lambda z, i: (z + 64) >> 7, "int64")])
    if gpu:
        schedule_gemm_imma(func, gpu=True)         # raises if any fragment does not match the intrinsics
        return
    rng = np.random.default_rng(0)
    pa = rng.integers(0, 1 << 15, (*lead, t, t)).astype(np.int16)
    pa[0, 0, 0, :4] = [0, 255, 256, (1 << 15) - 1]
    pa[1, 2, 5, :] = (1 << 15) - 1
    va = rng.integers(-128, 128, (*lead, t, n)).astype(np.int8)
    va[1, 2, :, 0], va[1, 2, :, 1] = -128, 127
    ref = (pa.astype(np.int64) @ va.astype(np.int64) + 64) >> 7
    for f in (func, schedule_gemm_imma(func, gpu=False)):
        lib = tvm.compile(tvm.IRModule({"main": f}), target=tvm.target.Target({"kind": "llvm"}))
        out = tvm.runtime.tensor(np.zeros(ref.shape, np.int64), tvm.cpu())
        lib(tvm.runtime.tensor(pa, tvm.cpu()), tvm.runtime.tensor(va, tvm.cpu()), out)
        assert np.array_equal(out.numpy(), ref)


def test_attention_av_split_applies_only_where_exact():
    from intvit.tvm_backend.import_gemm import split_probs_tiled_apply
    assert split_probs_tiled_apply((0, (1 << 15) - 1), (-128, 127), 197)
    assert not split_probs_tiled_apply((0, 1 << 15), (-128, 127), 197)       # the high byte would not be signed
    assert not split_probs_tiled_apply((-1, 100), (-128, 127), 197)
    assert not split_probs_tiled_apply((0, 100), (-129, 127), 197)
    assert not split_probs_tiled_apply((0, 100), (-128, 127), 1 << 16)        # 3·K·2**14 past int32
