"""QuantVLA-style scale matching (ATM, OHB): recovers known mis-scalings, folds into the dyadic
multipliers without adding ops, and the corrected model still exports, compiles and reloads bit-exactly."""
import copy

import numpy as np
import pytest

import intvit
from intvit.quantize.scale_matching import (balance_output_heads, clamp_balance, clamp_temperature,
                                               match_attention_temperature)
from intvit.quantize.onnx_export import to_onnx
from conftest import assert_exact_in_ort_tvm_and_file, images


@pytest.fixture
def qvit(tiny_qvit):
    return copy.deepcopy(tiny_qvit)


def test_clamps_and_neutral_bands():
    assert clamp_temperature(1.015) == 1.0 and clamp_temperature(1.03) == 1.03
    assert clamp_temperature(2.0) == 1.4 and clamp_temperature(0.1) == 0.7
    assert clamp_temperature(float("nan")) == 1.0
    assert clamp_balance(1.02) == 1.0 and clamp_balance(np.exp(0.1)) == pytest.approx(np.exp(0.1))
    assert clamp_balance(3.0) == pytest.approx(np.exp(0.3)) and clamp_balance(0.2) == pytest.approx(np.exp(-0.3))


def test_atm_recovers_per_head_logit_mis_scaling(qvit):
    """Heads whose Q·Kᵀ requant is off by a known factor get α ≈ 1/factor; the product returns to ≈ 1."""
    wrong = {"blocks.0": [0.8, 1.2, 1.0, 0.9], "blocks.1": [1.0, 1.0, 1.15, 0.85]}
    qvit.meta["temperatures"] = copy.deepcopy(wrong)
    qvit.refreeze()
    assert tuple(qvit.p("blocks.0.logits.rq.m").shape) == (4, 1, 1)      # one multiplier per head
    fixed = match_attention_temperature(qvit, images(32, seed=3))
    for block, factors in wrong.items():
        np.testing.assert_allclose(fixed[block], np.ones(4), atol=0.03)
        changed = [abs(f - 1) > 0.02 for f in factors]
        assert [abs(a / f - 1) > 1e-9 for a, f in zip(fixed[block], factors)] == changed   # neutral heads untouched


def test_atm_clamps_a_factor_outside_its_range(qvit):
    qvit.meta["temperatures"] = {"blocks.0": [0.5, 1.0, 1.0, 1.0]}
    qvit.refreeze()
    fixed = match_attention_temperature(qvit, images(32, seed=3))
    assert fixed["blocks.0"][0] == pytest.approx(0.5 * 1.4)                 # α wanted ≈ 2, clamped to 1.4


def test_ohb_recovers_branch_mis_scaling(qvit):
    qvit.meta["balance"] = {"blocks.0.resid1": 0.8, "blocks.1.resid2": 1.25}
    qvit.refreeze()
    fixed = balance_output_heads(qvit, images(32, seed=3))
    assert set(fixed) == {f"blocks.{i}.resid{r}" for i in (0, 1) for r in (1, 2)}
    np.testing.assert_allclose(list(fixed.values()), 1.0, atol=0.03)


def test_folding_keeps_the_graph_and_stays_bit_exact_in_ort_tvm_and_files(tiny_vit, qvit, tmp_path):
    before = to_onnx(qvit)
    corrected = intvit.quantize(tiny_vit, images(32), intvit.QuantConfig(
        progress=False, attention_temperature=True, output_balance=True))
    corrected.meta["temperatures"]["blocks.1"] = [1.1, 0.9, 1.0, 1.2]   # make sure per-head values differ
    corrected.refreeze()
    after, reloaded = assert_exact_in_ort_tvm_and_file(corrected, images(8, seed=5), tmp_path / "m.safetensors")
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]
    assert reloaded.meta["temperatures"] == corrected.meta["temperatures"]


def test_scale_matching_errors(qvit):
    with pytest.raises(ValueError, match="calibration images; the data set is empty"):
        match_attention_temperature(qvit, [])
    qvit.meta["temperatures"] = {"blocks.0": [1.0, 1.0]}
    with pytest.raises(ValueError, match="2 attention temperatures for 4 heads"):
        qvit.refreeze()
