"""Drive every integer op to its extremes and compare with arbitrary-precision Python.

The int64 tensor implementation would wrap silently on overflow; Python ints
never do, so equality with the big-int model proves no overflow on these inputs.
The bounds asserted are the ones tabulated in ops/README.md.
"""
import math

import pytest
import torch

from intvit import ops

INT32_MAX = 2**31 - 1


def t(v):
    return torch.tensor(v, dtype=torch.int64)


def big_shift_exp(x, x0, n):
    x = x + (x >> 1) - (x >> 4)
    x = max(x, n * x0)
    q = (-x) // (-x0)
    r = x - q * x0
    return ((r - 2 * x0) << (n - q)) >> 1


NUM = 2**62 - 1


def big_shiftmax(row, x0, bits, n=15):
    mx = max(row)
    e = [big_shift_exp(v - mx, x0, n) for v in row]
    s = sum(e)
    f = NUM // s
    return [(v * f) >> (63 - bits) for v in e], e, s


def big_layernorm(row):
    d = len(row)
    mean = (sum(row) + d // 2) // d
    y = [v - mean for v in row]
    var = sum(v * v for v in y)
    std = max(math.isqrt(var), 1)
    f = INT32_MAX // std
    return [(v * f) >> 1 for v in y], y, var, std


@pytest.mark.parametrize("row", [
    [32767] + [-32768] * 196,           # one saturating logit, the rest at the floor
    [-32768] * 197,                     # all-equal row
    [0],                                # one-token row
    [32767, -32768],
    list(range(-32768, 32768, 331)),
])
@pytest.mark.parametrize("scale", [2.0**-16 * 1.0001, 0.0031, 0.05, 1.0])
def test_shiftmax_extremes_match_bigint_and_stay_in_range(row, scale):
    x0 = ops.shiftexp_x0(scale)
    ops.check_shiftexp_constants(x0, 15)
    got = ops.shiftmax(t([row]), x0, 16)[0].tolist()
    want, exps, total = big_shiftmax(row, x0, 16)
    assert got == want
    assert max(exps) <= -x0 * 2**15 <= INT32_MAX and min(exps) > 0
    assert total < 2**62 and all(e * (NUM // total) <= NUM for e in exps)
    assert all(0 <= v <= 2**15 - 1 for v in got) and sum(got) < 2**15


def test_shiftmax_all_equal_and_single_token_values():
    x0 = ops.shiftexp_x0(0.01)
    assert ops.shiftmax(t([[5] * 4]), x0, 16).tolist() == [[8191] * 4]
    assert ops.shiftmax(t([[5] * 197]), x0, 16).tolist() == [[32768 // 197] * 197]
    assert ops.shiftmax(t([[-9]]), x0, 16).tolist() == [[32767]]


def test_shift_gelu_extremes_match_bigint():
    for scale in (0.0047, 0.05, 0.5):
        x0 = ops.shiftexp_x0(ops.GELU_SIGMOID_COEF * scale)
        ops.check_shiftexp_constants(x0, ops.SHIFTGELU_N)
        for row in ([127] * 8, [-128] * 8, [-128, 127], list(range(-128, 128))):
            got = ops.shift_gelu(t([row]), x0)[0].tolist()
            want = []
            for v in row:
                m = max(v, 0)
                e1, e2 = big_shift_exp(v - m, x0, 23), big_shift_exp(-m, x0, 23)
                assert max(e1, e2) <= INT32_MAX and e1 * (NUM // (e1 + e2)) <= NUM
                want.append(v * ((e1 * (NUM // (e1 + e2))) >> 55))
            assert got == want
            assert all(abs(v) <= 128 * 127 for v in got)


@pytest.mark.parametrize("d", [1, 2, 192, 768, 2**14])
def test_layernorm_extremes_match_bigint(d):
    rows = [
        [32767] * d,                                   # V = 0
        [-32768 if i % 2 else 32767 for i in range(d)],  # maximal spread
        [32767] + [-32768] * (d - 1),                  # one outlier
    ]
    got = ops.int_layernorm(t(rows)).tolist()
    for row, out in zip(rows, got):
        want, y, var, std = big_layernorm(row)
        assert out == want
        assert var <= d * 2**32 < 2**63
        assert all(abs(v) <= std for v in y) and all(abs(v * (INT32_MAX // std)) <= INT32_MAX for v in y)
        assert all(-(2**30) <= v <= 2**30 - 1 for v in out)


def test_requant_extremes_match_bigint():
    z = [-(2**31), 2**31 - 1, 0, -1, 1]
    for r in (2.0**-31, 1e-9, 0.37, 1.0, 2.0**29):
        m, e = ops.dyadic_multiplier([r])
        off = ops.offset_for(-(2.0**60) / 2.0 ** e.item(), e)  # the most negative offset allowed
        got = ops.rescale(t(z), m, e, off).tolist()
        mm, ee, oo = m.item(), e.item(), off.item()
        assert got == [(v * mm + oo + (1 << (ee - 1))) >> ee for v in z]
    with pytest.raises(ValueError, match="2\\*\\*60"):
        ops.offset_for(2.0**61, t([1]))


def test_gemm_accumulators_at_extremes():
    k = 65535
    a = torch.full((1, k), -128)
    w = torch.full((2, k), -128)
    acc = ops.int_linear(a, w)
    assert acc.tolist() == [[k * 2**14] * 2] and k * 2**14 <= INT32_MAX
    # A·V: probabilities of a row sum to < 2**15, so |Σ p·v| < 2**22 for any length.
    p = ops.shiftmax(t([[0] * 5000]), ops.shiftexp_x0(1.0), 16)
    v = torch.full((5000, 1), -128)
    assert abs(ops.int_matmul(p, v).item()) < 2**22
