"""Hand-worked examples and property tests for intvit.ops."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from intvit import ops
from intvit.ops import arith

I64 = st.integers(min_value=-(2**40), max_value=2**40)


def t(values):
    return torch.tensor(values, dtype=torch.int64)


# ---------------------------------------------------------------- rounding rules
def test_shift_right_floor_rounds_toward_minus_infinity():
    assert ops.shift_right_floor(t([7, -7, -8, -1, 0]), 2).tolist() == [1, -2, -2, -1, 0]


def test_shift_right_round_ties_go_up_including_negative_ties():
    # -6/4 = -1.5 -> -1 ; -10/4 = -2.5 -> -2 ; 6/4 = 1.5 -> 2 ; -5/4 = -1.25 -> -1 ; -7/4 -> -2
    assert ops.shift_right_round(t([-6, -10, 6, -5, -7]), 2).tolist() == [-1, -2, 2, -1, -2]


def test_floor_div_is_floor_not_truncation():
    assert ops.floor_div(t([-7, 7, -6, 0]), 3).tolist() == [-3, 2, -2, 0]
    with pytest.raises(ValueError):
        ops.floor_div(t([1]), 0)


def test_integer_ops_refuse_float_tensors():
    with pytest.raises(TypeError, match="integer op"):
        ops.shift_right_floor(torch.tensor([1.5]), 1)


@given(st.lists(I64, min_size=1, max_size=20), st.integers(1, 20))
def test_shift_right_round_matches_exact_rational_rounding(xs, k):
    got = ops.shift_right_round(t(xs), k).tolist()
    assert got == [math.floor(x / 2**k + 0.5) if abs(x) < 2**50 else (x + 2 ** (k - 1)) >> k
                   for x in xs]


# ---------------------------------------------------------------- dyadic requant
def test_dyadic_multiplier_hand_values():
    m, e = ops.dyadic_multiplier([0.5, 0.75, -0.3, 0.0])
    assert m.tolist()[:2] == [2**30, 3 * 2**29] and e.tolist()[:2] == [31, 31]
    assert m[2].item() == -round(0.6 * 2**31) and e[2].item() == 32
    assert m[3].item() == 0


def test_dyadic_multiplier_renormalises_when_rounding_reaches_2_pow_31():
    r = 1.0 - 2.0**-40                     # frexp mantissa rounds up to exactly 2**31
    m, e = ops.dyadic_multiplier([r])
    assert m.item() == 2**30 and e.item() == 30
    assert abs(ops.dyadic_value(m, e).item() - r) < 2**-30


def test_dyadic_multiplier_errors():
    with pytest.raises(ValueError, match="not finite"):
        ops.dyadic_multiplier([float("nan")])
    with pytest.raises(ValueError, match="too large"):
        ops.dyadic_multiplier([2.0**31])


@given(st.floats(min_value=2**-40, max_value=2**20, allow_nan=False), st.booleans())
def test_dyadic_multiplier_relative_error_is_below_2_pow_minus_31(r, neg):
    r = -r if neg else r
    m, e = ops.dyadic_multiplier([r])
    assert abs(m.item()) < 2**31 and 1 <= e.item() <= 62
    rel = abs(ops.dyadic_value(m, e).item() - r) / abs(r)
    assert rel <= 2**-31 or (e.item() == 62 and abs(ops.dyadic_value(m, e).item() - r) <= 2**-63)


@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=30),
       st.floats(min_value=1e-6, max_value=100.0))
def test_requantize_is_within_half_lsb_of_the_real_product(zs, r):
    m, e = ops.dyadic_multiplier([r])
    out = ops.rescale(t(zs), m, e).tolist()
    approx = ops.dyadic_value(m, e).item()
    for z, o in zip(zs, out):
        exact = z * m.item() / 2 ** e.item()          # what the kernel rounds
        assert o == math.floor(exact + 0.5) or abs(o - (exact + 0.5)) < 1e-6
        assert abs(o - z * r) <= 0.5 + abs(z) * abs(approx - r) + 1e-6


def test_requantize_saturates_and_applies_offset():
    m, e = ops.dyadic_multiplier([1.0])
    assert ops.requantize(t([300, -300, 5]), m, e, 8).tolist() == [127, -128, 5]
    off = ops.offset_for(2.5, e)            # +2.5 output units, rounded half up after the add
    assert ops.requantize(t([0, 1, -3]), m, e, 8, off).tolist() == [3, 4, 0]


def test_residual_add_rescales_each_branch_then_saturates_once():
    ma, ea = ops.dyadic_multiplier([0.5])
    mb, eb = ops.dyadic_multiplier([2.0])
    out = ops.residual_add(t([10, 30000, -3]), ma, ea, t([3, 30000, 1]), mb, eb, 16)
    assert out.tolist() == [5 + 6, 32767, -1 + 2]


def test_input_quantizer_rounds_half_to_even_and_saturates():
    q = ops.quantize_float(torch.tensor([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0]), 1.0, 8)
    assert q.tolist() == [0, 2, 2, 0, 127, -128]
    with pytest.raises(TypeError):
        ops.quantize_float(t([1]), 1.0, 8)


def test_per_channel_grids_are_the_input_quantizer_channel_by_channel():
    """``quantize_float_channels`` is ``quantize_float`` with each last-axis channel on its own grid: ties to
    even, saturation at each channel's ends (zero points 0, -128 and 127 included)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 4, generator=g) * 50
    x[0, 0] = torch.tensor([0.5, 2.5, -1000.0, 1000.0])
    scales, zeros = torch.tensor([1.0, 0.5, 0.25, 2.0]), torch.tensor([0, -128, 127, 7])
    got = ops.quantize_float_channels(x, scales, zeros, 8)
    for c in range(4):
        assert torch.equal(got[..., c], ops.quantize_float(x[..., c], float(scales[c]), 8, int(zeros[c])))
    assert int(got.min()) == -128 and int(got.max()) == 127
    with pytest.raises(ValueError, match="NaN"):
        ops.quantize_float_channels(torch.tensor([[float("nan")]]), scales[:1], zeros[:1], 8)


# ---------------------------------------------------------------- ShiftExp family
def ivit_shift_exp_float(x, x0, n):
    """I-ViT's released float formulation (quant_modules.int_exp_shift), in float64."""
    x = x.to(torch.float64)
    x = x + torch.floor(x / 2) - torch.floor(x / 2**4)
    x = torch.maximum(x, torch.tensor(float(n * x0)))
    q = torch.floor(x / x0)
    r = x - x0 * q
    return torch.clamp(torch.floor((r / 2 - x0) * 2 ** (n - q)), min=0)


@settings(max_examples=60)
@given(st.lists(st.integers(-(2**16) + 1, 0), min_size=1, max_size=64),
       st.floats(min_value=2e-3, max_value=2.0))
def test_shift_exp_equals_ivit_float_formula(xs, scale):
    x0 = ops.shiftexp_x0(scale)
    got = ops.shift_exp(t(xs), x0, 15)
    assert torch.equal(got, ivit_shift_exp_float(t(xs), x0, 15).to(torch.int64))


def ivit_shiftmax_float(x, x0, bits, n=15, numerator=2**62 - 1):
    """I-ViT's IntSoftmax in float64/Python ints; ``numerator=2**31-1`` is the released code."""
    x = x.to(torch.float64)
    x = x - x.max(dim=-1, keepdim=True).values
    e = ivit_shift_exp_float(x, x0, n).to(torch.int64)
    s = e.sum(dim=-1, keepdim=True)
    if numerator == 2**31 - 1:
        s = s.clamp(max=2**31 - 1)
    f = numerator // s
    shift = 32 - bits if numerator == 2**31 - 1 else 63 - bits
    return (e * f) >> shift


@settings(max_examples=60)
@given(st.integers(1, 40), st.integers(1, 8), st.floats(min_value=1e-4, max_value=0.5),
       st.integers(0, 2**31 - 1), st.sampled_from([8, 16]))
def test_shiftmax_equals_reference_and_tracks_softmax(cols, rows, scale, seed, bits):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-(2**15), 2**15, (rows, cols), generator=g)
    x0 = ops.shiftexp_x0(scale)
    got = ops.shiftmax(x, x0, bits)
    assert torch.equal(got, ivit_shiftmax_float(x, x0, bits))
    assert int(got.min()) >= 0 and int(got.sum(-1).max()) < 2 ** (bits - 1)
    true = torch.softmax(x.to(torch.float64) * (-1.0 / x0), dim=-1)
    # ShiftExp's 2**f ≈ 1 + f/2 is within ~6% of the true exponential
    assert float((got / 2 ** (bits - 1) - true).abs().max()) < 0.05 + 2.0 ** (1 - bits) * 2


def test_shiftmax_keeps_probability_mass_where_ivit_31_bit_division_loses_it():
    # S = 2**-10 -> x0 = -1024, exp(0) = 1024 * 2**15 = 2**25. 38 equal logits:
    # sum = 38 * 2**25 ≈ 0.59 * 2**31, so I-ViT's factor floor((2**31-1)/sum) is 1 and each
    # probability is 2**25 >> 16 = 512: the row keeps 19456/32768 = 59% of its mass.
    x = torch.zeros((1, 38), dtype=torch.int64)
    x0 = ops.shiftexp_x0(2.0**-10)
    ivit = ivit_shiftmax_float(x, x0, 16, numerator=2**31 - 1)
    assert ivit.tolist() == [[512] * 38]
    assert ops.shiftmax(x, x0, 16).tolist() == [[32768 // 38] * 38]       # 862 each, 99.96%


def test_shiftmax_hand_example():
    # S = 1/8 -> x0 = -8. Row [0, -8]: second logit is -1.0 in real units.
    # x=-8 -> -8 + -4 - (-1) = -11; q = 1, r = -3; exp = ((-3+16) << 14) >> 1 = 106496
    # x=0 -> exp = (16 << 15) >> 1 = 262144 ; sum = 368640
    # factor = floor((2**62-1)/368640) ; out = floor(e * factor / 2**47) = [23301, 9466]
    # (softmax of [0, -1]: 0.731, 0.269 of 32768 = 23955, 8813; ShiftExp's 2**-1 ≈ 0.406 here)
    out = ops.shiftmax(t([[0, -8]]), -8, 16)
    assert out.tolist() == [[23301, 9466]]


def ivit_shift_gelu_float(x, x0, bits, n=23, row_max=False):
    """I-ViT's IntGELU in float64; ``row_max=True`` is the released code's reference point."""
    x = x.to(torch.float64)
    m = x.max(dim=-1, keepdim=True).values if row_max else x.clamp(min=0)
    e1 = ivit_shift_exp_float(x - m, x0, n)
    e2 = ivit_shift_exp_float(-m, x0, n)
    e1, e2 = e1.to(torch.int64), e2.to(torch.int64)
    return x.to(torch.int64) * ((e1 * ((2**62 - 1) // (e1 + e2))) >> (63 - bits))


@settings(max_examples=60)
@given(st.integers(0, 2**31 - 1), st.floats(min_value=0.005, max_value=0.5))
def test_shift_gelu_equals_ivit_float_formula(seed, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (4, 32), generator=g)
    x0 = ops.shiftexp_x0(ops.GELU_SIGMOID_COEF * scale)
    assert torch.equal(ops.shift_gelu(x, x0), ivit_shift_gelu_float(x, x0, 8))


@settings(max_examples=40)
@given(st.integers(0, 2**31 - 1), st.floats(min_value=0.01, max_value=0.1))
def test_shift_gelu_tracks_x_sigmoid_1702x(seed, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (4, 64), generator=g)
    got = ops.shift_gelu(x, ops.shiftexp_x0(ops.GELU_SIGMOID_COEF * scale)) * scale / 128
    xr = x.to(torch.float64) * scale
    ref = xr * torch.sigmoid(1.702 * xr)
    # sigmoid carries 7 fractional bits and ShiftExp ~4% relative error
    assert float((got - ref).abs().max()) < 0.06 * float(xr.abs().max()) + scale


def test_shift_gelu_large_row_max_does_not_collapse_sigmoid():
    # S = 0.08, row max 127 -> 10.2 real: beyond 9.4, I-ViT's row-max reference point
    # clips both exponentials and returns sigma = 0.5 for x = -3.0 (GELU = -1.5).
    scale = 0.08
    x = torch.tensor([[127, -38]])                   # -38 * 0.08 = -3.04
    x0 = ops.shiftexp_x0(ops.GELU_SIGMOID_COEF * scale)
    ours = ops.shift_gelu(x, x0)[0, 1].item() * scale / 128
    ivit = ivit_shift_gelu_float(x, x0, 8, row_max=True)[0, 1].item() * scale / 128
    assert abs(ivit - (-3.04 * 0.5)) < 0.12            # the collapse: sigma ≈ 0.5, true GELU ≈ -0.02
    assert abs(ours - (-3.04 / (1 + math.exp(1.702 * 3.04)))) < 0.03


def test_shift_gelu_all_negative_row():
    scale = 1 / 32
    x = torch.full((1, 8), -32)
    x0 = ops.shiftexp_x0(ops.GELU_SIGMOID_COEF * scale)
    real = (ops.shift_gelu(x, x0) * scale / 128)[0, 0].item()
    assert abs(real - (-1 / (1 + math.exp(1.702)))) < 0.02


def test_shiftexp_constant_checks():
    with pytest.raises(ValueError, match="overflow"):
        ops.check_shiftexp_constants(-256, 23)
    ops.check_shiftexp_constants(-255, 23)
    ops.check_shiftexp_constants(-(2**16) + 1, 15)
    with pytest.raises(ValueError, match="x0 must"):
        ops.check_shiftexp_constants(0, 15)
    with pytest.raises(ValueError, match="positive finite"):
        ops.shiftexp_x0(0.0)


# ---------------------------------------------------------------- LayerNorm
@given(st.integers(0, 2**63 - 1))
def test_isqrt_is_exact_over_int64(v):
    assert ops.isqrt(t([v])).item() == math.isqrt(v)


def test_isqrt_small_values_where_ivit_newton_overestimates():
    vs = list(range(0, 300)) + [2**17 - 1, 2**17, 2**17 + 1]
    assert ops.isqrt(t(vs)).tolist() == [math.isqrt(v) for v in vs]

    def ivit_newton(v):                      # 10 steps from 2**16, as in the reference
        k = 2**16
        for _ in range(10):
            k = (k + v // k) // 2
        return k
    assert ivit_newton(1) != math.isqrt(1)   # the defect the exact isqrt removes


def test_int_layernorm_hand_example():
    # x = [1, 3]: D=2, mean = floor((4+1)/2) = 2, y = [-1, 1], V = 2, std = 1,
    # F = 2**31-1, z = floor(y*F/2) = [-2**30, 2**30 - 1]; scale sqrt(2)/2**30 -> [-1.414, 1.414]
    assert ops.int_layernorm(t([[1, 3]])).tolist() == [[-(2**30), 2**30 - 1]]


def test_int_layernorm_constant_row_is_zero_not_nan():
    assert ops.int_layernorm(t([[7] * 16])).abs().max().item() == 0


@settings(max_examples=40)
@given(st.integers(0, 2**31 - 1), st.sampled_from([8, 64, 192, 384]),
       st.integers(4, 15))
def test_int_layernorm_tracks_float_layernorm(seed, d, mag_bits):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-(2**mag_bits), 2**mag_bits, (3, d), generator=g)
    z = ops.int_layernorm(x).to(torch.float64) * ops.layernorm_output_scale(d)
    ref = torch.nn.functional.layer_norm(x.to(torch.float64), (d,), eps=0.0)
    assert float((z - ref).abs().max()) < 4.0 / 2 ** (mag_bits - 2) + 0.02


# ---------------------------------------------------------------- GEMM
def test_patchify_matches_strided_conv_as_gemm():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(-128, 128, (2, 3, 8, 12), generator=g)
    w = torch.randint(-128, 128, (5, 3, 4, 4), generator=g)
    conv = torch.nn.functional.conv2d(img.double(), w.double(), stride=4)
    gemm = ops.int_linear(ops.patchify(img, 4), w.reshape(5, -1))
    assert torch.equal(conv.flatten(2).transpose(1, 2).to(torch.int64), gemm)
    with pytest.raises(ValueError, match="multiple of the patch"):
        ops.patchify(img, 5)


def test_accumulator_check():
    ops.check_accumulator_fits(65535)
    with pytest.raises(ValueError):
        ops.check_accumulator_fits(2**17)
    assert arith.signed_range(8) == (-128, 127)


def test_shift_cap_keeps_large_offsets_in_range():
    # A LayerNorm channel with tiny gamma (ratio ~2**-25 -> e = 55) and beta of 32 output units:
    # uncapped, the offset 32 * 2**55 = 2**60 would overflow the bound; the cap lowers e.
    ratio, beta = 2.0**-25 * 1.1, 32.4
    m, e = ops.dyadic_multiplier([ratio], ops.max_shift_for_offset([beta]))
    off = ops.offset_for([beta], e)
    assert abs(off.item()) <= 2**60 and e.item() < 55
    z = t([2**30, -(2**30), 0])
    got = ops.rescale(z, m, e, off).tolist()
    assert got == [round(v * ratio + beta) for v in (2**30, -(2**30), 0)]
    with pytest.raises(ValueError, match="at least 1"):
        ops.dyadic_multiplier([0.5], 0)


# ---------------------------------------------------------------- exact GEMM evaluation
def _python_matmul(a, b):
    return [[sum(x * y for x, y in zip(row, col)) for col in zip(*b)] for row in a]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 5), st.sampled_from([7, 15, 24, 28]))
def test_int_matmul_is_exact_on_both_of_its_evaluation_paths(m, k, n, bits):
    """Below 2**53 the product goes through float64 BLAS, above it through int64; both must equal
    Python's arbitrary-precision sum (24- and 28-bit operands with K up to 40 cross the 2**53 line
    and stay inside int64)."""
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n + bits)
    hi = 1 << bits
    a = torch.randint(-hi, hi, (m, k), generator=g)
    b = torch.randint(-hi, hi, (k, n), generator=g)
    want = _python_matmul(a.tolist(), b.tolist())
    assert ops.int_matmul(a, b).tolist() == want
    with ops.float64_gemm_evaluation():
        assert ops.int_matmul(a, b).tolist() == want


def test_int_matmul_float64_path_holds_the_worst_case_int8_accumulator():
    """K = 2**16 - 1 products of -128·-128: 2**30·(1 - 2**-16), every partial sum an exact float64."""
    k = (1 << 16) - 1
    a = torch.full((2, k), -128, dtype=torch.int64)
    b = torch.full((k, 3), -128, dtype=torch.int64)
    with ops.float64_gemm_evaluation():
        assert ops.int_matmul(a, b).tolist() == [[k * 16384] * 3] * 2


# ---------------------------------------------------------------- GELU table
def test_gelu_table_hand_values():
    """S_in = S_out = 0.5: x = 2 is 1.0 → GELU(1) = 0.8413 → 1.68 → 2; x = −2 → −0.1587/0.5 → 0;
    x = −1 is −0.5 → −0.1543/0.5 = −0.31 → 0; x = 127 → 63.5 → 127; the zero point shifts every entry."""
    t = ops.gelu_table(0.5, 0.5)
    assert t.shape == (256,) and t.dtype == torch.int64
    assert [int(t[v + 128]) for v in (0, 2, -2, -1, 127, -128)] == [0, 2, 0, 0, 127, 0]
    z = ops.gelu_table(0.5, 0.5, zero_out=-100)
    assert [int(z[v + 128]) for v in (0, 2, 127)] == [-100, -98, 27]      # 127 + (−100): no saturation
    zin = ops.gelu_table(0.5, 0.5, zero_in=-20)                             # input code x means (x + 20)·0.5
    assert [int(zin[v + 128]) for v in (-20, -18, -22)] == [0, 2, 0]


@pytest.mark.parametrize("s_in,s_out", [(0.01, 0.01), (0.08, 0.05), (0.3, 0.1)])
def test_gelu_table_is_the_exact_gelu_rounded(s_in, s_out):
    x = torch.arange(-128, 128)
    want = torch.nn.functional.gelu(x.double() * s_in) / s_out
    got = ops.gelu_table(s_in, s_out)
    inside = want.abs() < 127
    assert (got[inside].double() - want[inside]).abs().max() <= 0.5
    assert int(got.max()) <= 127 and int(got.min()) >= -128


def test_lookup_reads_the_table_and_refuses_inputs_outside_it():
    table = torch.tensor([10, 20, 30])
    assert ops.lookup(t([-1, 0, 1, -1]), table, -1).tolist() == [10, 20, 30, 10]
    with pytest.raises(ValueError, match="outside the table"):
        ops.lookup(t([2]), table, -1)
    with pytest.raises(ValueError, match="positive finite"):
        ops.gelu_table(0.0, 1.0)
