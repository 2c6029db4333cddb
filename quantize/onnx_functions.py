"""The ``intvit`` ONNX domain: one model-local function per ``ops`` kernel.

Each function body is standard ONNX (opset 21) on int64 tensors and mirrors
one function of ``intvit.ops`` step by step; constants arrive as inputs
(initializers in the graph). Netron shows one node per concept; ONNX Runtime
inlines the bodies; a compiler can match the domain ops by name.

ONNX has no signed arithmetic shift (``BitShift`` is unsigned) and its integer
``Div`` truncates toward zero, so every floor division by a positive ``d`` is
``FloorDiv``::

    floor(x / d) = Div(x − (x < 0 ? d − 1 : 0), d)        for d > 0

which is exact for all ``x`` with ``|x| < 2**63 − d``.

Saturation and max never use ONNX ``Clip``/``Min``/``Max`` on int64:
onnxruntime 1.31 returns wrong results for some int64 values just past
``±2**31`` and ``2**32`` (``Clip(−2147483651, −128, 127)`` gives −2147483651;
probed in ``tests/test_onnx_export.py``). ``Saturate`` and ``_at_least`` use
``Less``/``Greater`` + ``Where``, which are exact.

| function | inputs | mirrors |
|---|---|---|
| ``FloorDiv(x, d)`` | d > 0 | ``ops.floor_div`` / ``ops.shift_right_floor`` (d = 2**k) |
| ``Saturate(x, lo, hi)`` | | ``ops.saturate`` |
| ``Requant(z, m, pow2e, half, offset, lo, hi)`` | pow2e = 2**e, half = 2**(e−1) | ``ops.requantize`` |
| ``Rescale(z, m, pow2e, half)`` | | ``ops.rescale`` (no offset, no clamp) |
| ``ShiftExp(x, x0, nx0, n)`` | nx0 = n·x0 | ``ops.shift_exp`` |
| ``Shiftmax(x, x0, nx0, n, outdiv)`` | outdiv = 2**(63−b) | ``ops.shiftmax`` |
| ``ShiftGELU(x, x0, nx0, n, outdiv)`` | | ``ops.shift_gelu`` |
| ``IntLayerNorm(x)`` | | ``ops.int_layernorm`` (32-step exact isqrt) |
| ``Lookup(x, table, lo)`` | ``lo <= x < lo + len(table)`` | ``ops.lookup`` (the GELU table) |
"""
from __future__ import annotations

from onnx import TensorProto, helper

from .. import ops
from ..ops.layernorm import ISQRT_STEPS
from ..ops.nonlinear import NORM_NUMERATOR

DOMAIN = "intvit"
OPSET = 21


class _Body:
    """Collects the nodes of one function body with fresh local names."""

    def __init__(self, fname: str):
        self.fname = fname
        self.nodes = []
        self.k = 0

    def op(self, op_type, *inputs, domain="", **attrs):
        self.k += 1
        out = f"t{self.k}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], domain=domain, **attrs))
        return out

    def const(self, value: int):
        return self.op("Constant", value=helper.make_tensor("v", TensorProto.INT64, [], [int(value)]))

    def floordiv(self, x, d):
        return self.op("FloorDiv", x, d, domain=DOMAIN)

    def at_least(self, x, lo):
        """max(x, lo) without ONNX Max (see the module docstring)."""
        return self.op("Where", self.op("Less", x, lo), lo, x)

    def ret(self, name, out):
        self.nodes.append(helper.make_node("Identity", [name], [out]))

    def function(self, inputs, outputs):
        return helper.make_function(DOMAIN, self.fname, inputs, outputs, self.nodes,
                                    [helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])


def floor_div_fn():
    b = _Body("FloorDiv")
    neg = b.op("Less", "x", b.const(0))
    adj = b.op("Where", neg, b.op("Sub", "d", b.const(1)), b.const(0))
    b.ret(b.op("Div", b.op("Sub", "x", adj), "d"), "y")
    return b.function(["x", "d"], ["y"])


def rescale_fn():
    b = _Body("Rescale")
    acc = b.op("Add", b.op("Mul", "z", "m"), "half")
    b.ret(b.floordiv(acc, "pow2e"), "y")
    return b.function(["z", "m", "pow2e", "half"], ["y"])


def saturate_fn():
    b = _Body("Saturate")
    b.ret(b.op("Where", b.op("Greater", "x", "hi"), "hi", b.at_least("x", "lo")), "y")
    return b.function(["x", "lo", "hi"], ["y"])


def requant_fn():
    b = _Body("Requant")
    acc = b.op("Add", b.op("Add", b.op("Mul", "z", "m"), "offset"), "half")
    b.ret(b.op("Saturate", b.floordiv(acc, "pow2e"), "lo", "hi", domain=DOMAIN), "y")
    return b.function(["z", "m", "pow2e", "half", "offset", "lo", "hi"], ["y"])


def _pow2(b: _Body, k):
    """2**k for 0 <= k <= 62 as int64 (BitShift is defined on unsigned types only)."""
    one = b.op("Cast", b.const(1), to=TensorProto.UINT64)
    return b.op("Cast", b.op("BitShift", one, b.op("Cast", k, to=TensorProto.UINT64), direction="LEFT"),
                to=TensorProto.INT64)


def shift_exp_fn():
    b = _Body("ShiftExp")
    x = b.op("Sub", b.op("Add", "x", b.floordiv("x", b.const(2))), b.floordiv("x", b.const(16)))
    x = b.at_least(x, "nx0")
    q = b.op("Div", b.op("Neg", x), b.op("Neg", "x0"))          # both operands >= 0: Div is floor
    r = b.op("Sub", x, b.op("Mul", q, "x0"))
    base = b.op("Sub", r, b.op("Mul", b.const(2), "x0"))
    b.ret(b.floordiv(b.op("Mul", base, _pow2(b, b.op("Sub", "n", q))), b.const(2)), "y")
    return b.function(["x", "x0", "nx0", "n"], ["y"])


def _normalise(b: _Body, num, total, outdiv):
    factor = b.op("Div", b.const(NORM_NUMERATOR), total)        # positive / positive
    return b.op("Div", b.op("Mul", num, factor), outdiv)        # non-negative: Div is floor


def shiftmax_fn():
    b = _Body("Shiftmax")
    axes = b.const(-1)
    axes = b.op("Unsqueeze", axes, b.const(0))
    x = b.op("Sub", "x", b.op("ReduceMax", "x", axes, keepdims=1))
    e = b.op("ShiftExp", x, "x0", "nx0", "n", domain=DOMAIN)
    b.ret(_normalise(b, e, b.op("ReduceSum", e, axes, keepdims=1), "outdiv"), "y")
    return b.function(["x", "x0", "nx0", "n", "outdiv"], ["y"])


def shift_gelu_fn():
    b = _Body("ShiftGELU")
    m = b.at_least("x", b.const(0))
    e1 = b.op("ShiftExp", b.op("Sub", "x", m), "x0", "nx0", "n", domain=DOMAIN)
    e2 = b.op("ShiftExp", b.op("Neg", m), "x0", "nx0", "n", domain=DOMAIN)
    b.ret(b.op("Mul", "x", _normalise(b, e1, b.op("Add", e1, e2), "outdiv")), "y")
    return b.function(["x", "x0", "nx0", "n", "outdiv"], ["y"])


def int_layernorm_fn():
    b = _Body("IntLayerNorm")
    axes = b.op("Unsqueeze", b.const(-1), b.const(0))
    shape = b.op("Shape", "x")
    d = b.op("Gather", shape, b.const(-1))
    total = b.op("Add", b.op("ReduceSum", "x", axes, keepdims=1), b.op("Div", d, b.const(2)))
    y = b.op("Sub", "x", b.floordiv(total, d))
    v = b.op("ReduceSum", b.op("Mul", y, y), axes, keepdims=1)
    res = b.op("Mul", v, b.const(0))
    two = b.const(2)
    bit = 1 << 62
    for _ in range(ISQRT_STEPS):                                  # ops.isqrt, unrolled
        trial = b.op("Add", res, b.const(bit))
        take = b.op("GreaterOrEqual", v, trial)
        v = b.op("Where", take, b.op("Sub", v, trial), v)
        half = b.op("Div", res, two)                              # res >= 0
        res = b.op("Where", take, b.op("Add", half, b.const(bit)), half)
        bit >>= 2
    std = b.at_least(res, b.const(1))
    factor = b.op("Div", b.const(ops.INT32_MAX), std)
    b.ret(b.floordiv(b.op("Mul", y, factor), two), "y")
    return b.function(["x"], ["y"])


def lookup_fn():
    b = _Body("Lookup")
    b.ret(b.op("Gather", "table", b.op("Sub", "x", "lo"), axis=0), "y")
    return b.function(["x", "table", "lo"], ["y"])


def all_functions():
    return [floor_div_fn(), saturate_fn(), rescale_fn(), requant_fn(), shift_exp_fn(), shiftmax_fn(), shift_gelu_fn(),
            int_layernorm_fn(), lookup_fn()]
