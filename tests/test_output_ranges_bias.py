"""Output-aware ranges and bias correction: offline options that change scales and biases, not the graph."""
import copy

import pytest
import torch

import intvit
from intvit.calibration.output_ranges import search_range
from intvit.quantize.bias_correction import correct_biases
from intvit.quantize.fake_quant import fake_quant, fake_quant_weight
from intvit.models.spec import float_forward
from conftest import assert_exact_in_ort_tvm_and_file, hf_vit, images


def test_search_clips_a_rare_outlier_that_the_weights_ignore():
    """One huge input value on a channel with tiny weights: min-max wastes the grid on it; the GEMM-output
    search clips it, and the calibrated range itself stays a candidate (never worse)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 32, generator=g, dtype=torch.float64)
    x[7, 5] = 60.0
    w = torch.randn(16, 32, generator=g, dtype=torch.float64)
    w[:, 5] *= 1e-3
    found = search_range(x, w, asymmetric=True, lo=float(x.min()), hi=float(x.max()))
    assert found["hi"] < 0.75 * 60 and found["error_after"] < found["error_before"] / 2
    plain = torch.randn(2048, 32, generator=g, dtype=torch.float64)
    again = search_range(plain, w, asymmetric=False, lo=float(plain.min()), hi=float(plain.max()))
    assert again["error_after"] <= again["error_before"]


def test_output_aware_model_is_bit_exact_and_keeps_its_graph(tiny_vit, tiny_qvit, tmp_path):
    q = intvit.quantize(tiny_vit, images(32), intvit.QuantConfig(progress=False, output_aware=True))
    report = q.meta["output_aware"]
    assert set(report) == {f"blocks.{i}.{p}" for i in range(2) for p in ("norm1", "ctx", "norm2", "gelu")} | {"norm"}
    assert all(r["error_after"] <= r["error_before"] for r in report.values())
    assert_exact_in_ort_tvm_and_file(q, images(8, seed=5), tmp_path / "o.safetensors")


def test_bias_correction_subtracts_the_mean_gemm_error(tiny_vit, tmp_path):
    q = intvit.quantize(tiny_vit, images(32), intvit.QuantConfig(progress=False))
    before = copy.deepcopy(q.spec)
    batches = [images(32)]
    report = correct_biases(q, batches)
    assert set(report) == {f"blocks.{i}.{n}" for i in range(2) for n in ("qkv", "proj", "fc1", "fc2")}
    # the same δ from a second formulation: fake-quant hooks on the float forward of the uncorrected spec
    seen = {}

    def hook(name, x):
        if name.endswith((".norm1", ".norm2", ".gelu", ".ctx")):
            seen[name] = x
        return x
    float_forward(before, batches[0], hook)
    blk = before.blocks[1]
    x = seen["blocks.1.gelu"].reshape(-1, blk.fc2.weight.shape[1]).double()
    xq = fake_quant(x, q.scales["blocks.1.gelu"], 8, q.zeros["blocks.1.gelu"])
    delta = (xq @ fake_quant_weight(blk.fc2.weight).double().T - x @ blk.fc2.weight.double().T).mean(0)
    assert torch.allclose(before.blocks[1].fc2.bias.double() - q.spec.blocks[1].fc2.bias.double(), delta,
                          atol=1e-6)
    assert q.meta["bias_correction"] == report
    assert_exact_in_ort_tvm_and_file(q, images(8, seed=6), tmp_path / "b.safetensors")


def test_quantize_with_bias_correction_option(tiny_vit):
    plain = intvit.quantize(tiny_vit, images(16), intvit.QuantConfig(progress=False))
    corrected = intvit.quantize(tiny_vit, images(16), intvit.QuantConfig(progress=False, bias_correction=True))
    assert "bias_correction" in corrected.meta and "bias_correction" not in plain.meta
    assert not torch.equal(corrected.p("blocks.0.fc2.b"), plain.p("blocks.0.fc2.b"))
    assert torch.equal(corrected.p("blocks.0.fc2.w"), plain.p("blocks.0.fc2.w"))
