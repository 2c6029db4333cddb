"""Tabulate elementwise integer chains whose input takes few values.

ShiftGELU's input is the 8-bit output of the fc1 requant, so the chain
``ShiftGELU → Requant → Cast(int8)`` is a function of 256 possible inputs
(and so is the GELU ``Lookup`` of a model frozen with the GELU table).
The importer replaces such a chain by a table lookup ``y = T[x − lo]``, where
``T`` is computed at compile time by running the ``intvit.ops`` definitions on
every input in ``[lo, hi]``: the kernel is bit-exact by construction, and
replaces two ShiftExps and an int64 division per element with one load.

``reference(node, consts)`` is the one mapping of an ``intvit`` domain node
and its constant inputs onto the ``ops`` function it mirrors (the table of
``quantize/onnx_functions.py``).
"""
from __future__ import annotations

import numpy as np
import onnx
import torch

from .. import ops
from ..quantize.onnx_functions import DOMAIN

MAX_TABLE = 1 << 16          # tabulate only inputs with at most this many values
INT_CASTS = {onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64}


def exact_log2(values) -> np.ndarray:
    """``e`` with ``2**e == values`` elementwise (int64); ValueError unless every value is a power of two.

    The ONNX graph carries dyadic shifts and output ranges as powers of two
    (``pow2e``, ``outdiv``); the backends need the exponents.
    """
    a = np.asarray(values, dtype=np.int64)
    k = np.array([int(v).bit_length() - 1 for v in a.reshape(-1)], dtype=np.int64).reshape(a.shape)
    if (a <= 0).any() or not np.array_equal(np.left_shift(np.int64(1), k), a):
        raise ValueError(f"{a.reshape(-1)[:4].tolist()}... are not all powers of two")
    return k


def _log2(v) -> int:
    return int(exact_log2(np.asarray(v).reshape(-1)[:1])[0])


def _bits(lo, hi) -> int:
    bits = _log2(int(np.asarray(hi).reshape(-1)[0]) + 1) + 1
    if ops.signed_range(bits) != (int(np.asarray(lo).reshape(-1)[0]), int(np.asarray(hi).reshape(-1)[0])):
        raise ValueError(f"[{lo}, {hi}] is not a signed bit range")
    return bits


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.int64).copy())


def reference(node, consts: list[np.ndarray]):
    """``f(x: int64 tensor) -> tensor``: the ``ops`` semantics of one elementwise node (None if not elementwise)."""
    op = node.op_type
    if node.domain == "" and op == "Cast" and onnx.helper.get_attribute_value(node.attribute[0]) in INT_CASTS:
        return lambda x: x                       # applied by build_table's final astype (a chain ends at a Cast)
    if node.domain != DOMAIN:
        return None
    if op == "ShiftGELU":
        x0, _nx0, n, outdiv = consts
        return lambda x: ops.shift_gelu(x, int(x0), out_bits=63 - _log2(outdiv), n=int(n))
    if op == "Requant":
        m, pow2e, _half, offset, lo, hi = consts
        return lambda x: ops.requantize(x, _t(m), _t(_log2(pow2e)), _bits(lo, hi), _t(offset))
    if op == "Rescale":
        m, pow2e, _half = consts
        return lambda x: ops.rescale(x, _t(m), _t(_log2(pow2e)))
    if op == "Saturate":
        lo, hi = consts
        return lambda x: ops.saturate(x, _bits(lo, hi))
    if op == "Lookup":
        table, lo = consts
        return lambda x: ops.lookup(x, _t(table), int(lo))
    return None


TABLE_OPS = ("ShiftGELU", "Lookup")     # elementwise ops worth replacing by a table of their input's values


def _per_tensor(consts: list[np.ndarray]) -> bool:
    return all(np.all(c == np.asarray(c).reshape(-1)[0]) for c in consts)


def _node_consts(node, static: dict) -> list[np.ndarray]:
    """The node's constant inputs as ``reference`` takes them: scalars, except a ``Lookup``'s table."""
    consts = [np.asarray(static[n]) for n in node.input[1:]]
    if node.domain == DOMAIN and node.op_type == "Lookup":
        return [consts[0].reshape(-1), consts[1].reshape(-1)[:1].reshape(())]
    return [c.reshape(-1)[:1].reshape(()) for c in consts]


def tabulable_chain(first, consumers: dict, static: dict) -> list:
    """``first`` and the elementwise nodes after it (each the sole consumer of the previous) with
    per-tensor constants, for which ``reference`` is defined."""
    chain, node = [], first
    while node is not None:
        names = list(node.input[1:])
        if not all(n in static for n in names):
            break
        consts = [np.asarray(static[n]) for n in names]
        per_tensor = _per_tensor(consts[1:] if node.op_type == "Lookup" else consts)
        if not per_tensor or reference(node, _node_consts(node, static)) is None:
            break
        chain.append(node)
        if node.op_type == "Cast":
            break
        users = consumers.get(node.output[0], [])
        node = users[0] if len(users) == 1 else None
    return chain


def build_table(chain: list, static: dict, lo: int, hi: int) -> np.ndarray:
    """``T[v − lo]`` = the chain applied to ``v`` for every ``v`` in ``[lo, hi]`` (via ``ops``)."""
    x = torch.arange(lo, hi + 1, dtype=torch.int64)
    for node in chain:
        x = reference(node, _node_consts(node, static))(x)
    last = chain[-1]
    dtype = np.int64
    if last.domain == "" and last.op_type == "Cast":
        dtype = INT_CASTS[onnx.helper.get_attribute_value(last.attribute[0])]
    return x.numpy().astype(dtype)


def lookup_te(x, table, lo: int):
    """``y = table[x − lo]`` elementwise."""
    from tvm import te
    return te.compute(x.shape, lambda *i: table[x(*i).astype("int32") - lo], name="table_lookup")
