"""``calibration.headroom``: LayerNorm outputs get their calibrated range widened, so images unlike the
calibration set clip less; every other point keeps its range, and the graph does not change."""
import pytest
import torch

import intvit
from intvit.calibration.headroom import DEFAULT, widen, with_headroom
from intvit.models import fmnist
from intvit.quantize.clipping import clipped_fractions

from conftest import assert_exact_in_ort_tvm_and_file, images

LAYERNORM_OUTPUTS = ("norm1", "norm2", "norm")


def test_each_end_away_from_zero_moves_out_by_the_factor():
    assert widen(-2.0, 3.0, 1.5) == (-3.0, 4.5)
    assert widen(0.5, 3.0, 1.5) == (0.5, 4.5)             # a positive low end stays: widening never narrows
    assert widen(-4.0, -1.0, 2.0) == (-8.0, -1.0)
    assert widen(-2.0, 3.0, 1.0) == (-2.0, 3.0)


def test_only_layernorm_outputs_a_linear_reads_are_widened(tiny_vit):
    spec = intvit.models.to_spec(tiny_vit)
    names = [n for n, _ in intvit.models.spec.quant_points(spec)]
    ranges = {n: [-1.0 - i, 2.0 + i] for i, n in enumerate(names)}
    amax = {n: 2.0 + i for i, n in enumerate(names)}
    before = {n: list(r) for n, r in ranges.items()}, dict(amax)
    wide_ranges, wide_amax = with_headroom(spec, ranges, amax, 2.0)
    widened = {n for n in names if wide_amax[n] != amax[n]}
    assert widened == {n for n in names if n.rsplit(".", 1)[-1] in LAYERNORM_OUTPUTS}
    assert len(widened) == 2 * len(spec.blocks) + 1           # norm1, norm2 per block, the head's norm
    for n in names:
        factor = 2.0 if n in widened else 1.0
        assert wide_amax[n] == factor * amax[n] and wide_ranges[n] == [factor * v for v in ranges[n]]
    assert with_headroom(spec, ranges, amax, 1.0) == (ranges, amax)
    assert (ranges, amax) == before                             # the caller's dicts are left as they were


def test_the_integer_model_gets_the_widened_grids(tiny_vit):
    x = images(8)
    plain = intvit.quantize(tiny_vit, x, intvit.QuantConfig(progress=False, norm_headroom=1.0))
    wide = intvit.quantize(tiny_vit, x, intvit.QuantConfig(progress=False, norm_headroom=2.0))
    for name, scale in plain.scales.items():
        ratio = float(wide.scales[name]) / float(scale)
        if name.rsplit(".", 1)[-1] in LAYERNORM_OUTPUTS:
            assert ratio == pytest.approx(2.0, rel=1e-6), name
        else:
            assert ratio == 1.0, name
    assert wide.meta["norm_headroom"] == 2.0 and "norm_headroom" not in plain.meta
    assert intvit.QuantConfig().norm_headroom == DEFAULT


def test_the_widest_headroom_stays_bit_exact_in_onnx_runtime_tvm_and_the_file(tiny_vit, tmp_path):
    """16x: the LayerNorm outputs use a handful of their 256 levels; the requants that make them still agree
    in torch, ONNX Runtime, TVM and the reloaded file."""
    q = intvit.quantize(tiny_vit, images(8), intvit.QuantConfig(progress=False, norm_headroom=16))
    _, again = assert_exact_in_ort_tvm_and_file(q, images(2, seed=5), tmp_path / "q.safetensors")
    assert again.meta["norm_headroom"] == 16.0


@pytest.mark.parametrize("calib_scale", [0.6, 1.0], ids=["dimmer calibration images", "calibration images as shipped"])
def test_headroom_stops_layernorm_outputs_clipping_on_other_images(calib_scale):
    """The embedded model calibrated on 128 of its calibration images (dimmed, or as shipped), run on 128 test
    images: with the ranges as calibrated LayerNorm outputs clip (measured: 1,138 and 181 of 2.5 M values);
    with the default headroom none does."""
    model = fmnist.load_model()
    calib = calib_scale * fmnist.load_calibration_set(128)
    test, _ = fmnist.load_test_set(128)

    def layernorm_clipped(headroom):
        q = intvit.quantize(model, calib, intvit.QuantConfig(progress=False, norm_headroom=headroom))
        return sum(r["clipped"] for n, r in clipped_fractions(q, test).items()
                   if n.rsplit(".", 1)[-1] in LAYERNORM_OUTPUTS)
    assert layernorm_clipped(1.0) > 100
    assert layernorm_clipped(DEFAULT) == 0


@pytest.mark.parametrize("bad", [0.5, 0.0, 17, float("nan"), True, "1.5"])
def test_a_headroom_that_is_not_a_factor_from_1_to_16_is_one_clear_error(bad):
    with pytest.raises(ValueError, match=r"norm_headroom \(QuantConfig, or --norm-headroom\) is a factor from 1\.0"):
        intvit.QuantConfig(norm_headroom=bad)


def test_the_cli_help_states_the_default_headroom(capsys):
    from intvit.cli import main
    assert main(["quantize", "--help"]) == 0
    assert f"calibrated (default: {DEFAULT:g})" in " ".join(capsys.readouterr().out.split())
