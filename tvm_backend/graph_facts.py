"""What the importer learns from the ONNX graph around a node: constants, value ranges, fusable chains.

Shared by the graph walk (``importer``) and the GEMM patterns
(``import_gemm``). Nothing here emits Relax; each function reads the graph
(``consumers``/``producers`` maps, the import-time constants ``static``) and
returns nodes, names or numbers.
"""
from __future__ import annotations

import numpy as np
import onnx
from tvm import relax

from ..quantize.onnx_functions import DOMAIN
from .kernels import EPILOGUE_VALUES
from .tabulate import MAX_TABLE, TABLE_OPS, build_table, exact_log2, tabulable_chain


class UnsupportedGraphError(ValueError):
    """The ONNX file is not an intvit integer graph this importer can lower."""


def attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}



def kernel_args(op: str, names: list[str], static: dict, val) -> list:
    """The constant inputs of a domain node as its TE kernel takes them.

    A dyadic pair's ``2**e`` (input 2 of Requant/Rescale) becomes ``e``; a
    constant whose elements are all equal becomes a Python int, which the
    kernel compiles in as a literal.
    """
    args = []
    for pos, name in enumerate(names, start=1):
        if name not in static:
            args.append(val(name))
            continue
        arr = np.asarray(static[name])
        if op in ("Requant", "Rescale") and pos == 2:
            try:
                arr = exact_log2(arr)
            except ValueError:
                raise UnsupportedGraphError(f"{op} input '{name}' must hold powers of two (2**e); "
                                            "re-export the model with `intvit export`") from None
        if arr.size and np.all(arr == arr.flat[0]):
            args.append(int(arr.flat[0]))
        else:
            args.append(relax.const(arr, str(arr.dtype)))
    return args


def note_range(node, out: str, ranges: dict, static: dict) -> None:
    """Record ``[lo, hi]`` for the output of a Requant/Saturate with per-tensor bounds, or a Shiftmax.

    Shiftmax gives ``floor(e·floor((2**62−1)/Σe) / 2**(63−b)) ∈ [0, 2**(b−1) − 1]``
    (``ops.shiftmax``; ``e <= Σe``), with ``2**(63−b)`` its last input.
    """
    if node.domain == DOMAIN and node.op_type == "Shiftmax" and node.input[-1] in static:
        outdiv = int(np.asarray(static[node.input[-1]]).reshape(-1)[0])
        ranges[out] = (0, ((1 << 62) - 1) // outdiv)
    if node.domain == DOMAIN and node.op_type in ("Requant", "Saturate"):
        lo, hi = (np.asarray(static.get(n, [np.nan])) for n in node.input[-2:])
        if lo.size == 1 and hi.size == 1 and not np.isnan(lo).any() and not np.isnan(hi).any():
            ranges[out] = (int(lo.reshape(())), int(hi.reshape(())))


def table_chain(node, ranges: dict, consumers: dict, static: dict) -> list:
    """A ShiftGELU or GELU ``Lookup`` (and the elementwise nodes after it) on an input of at most
    ``MAX_TABLE`` values."""
    lo_hi = ranges.get(node.input[0])
    if node.op_type not in TABLE_OPS or lo_hi is None or lo_hi[1] - lo_hi[0] + 1 > MAX_TABLE:
        return []
    return tabulable_chain(node, consumers, static)


def sole_consumer(value: str, consumers: dict):
    users = consumers.get(value, [])
    return users[0] if len(users) == 1 else None


def epilogue_chain(gemm, consumers: dict, consts: dict, widened: bool = False) -> list:
    """The ``Cast(int64) [→ Add(bias)] [→ Requant|Rescale]`` nodes after a MatMulInteger.

    Each node must be the sole consumer of the previous one (the exporter's
    ``linear`` + requant shape, and attention's ``Q·Kᵀ`` + requant). Empty
    when there is no int64 cast or nothing after it. A ``widened`` GEMM (an
    int64 ``MatMul`` of a 16-bit layer, ``quantize.layout``) has no cast:
    its chain starts at the bias ``Add``.
    """
    if widened:
        chain, last = [], gemm.output[0]
    else:
        cast = sole_consumer(gemm.output[0], consumers)
        if cast is None or cast.op_type != "Cast" or attrs(cast)["to"] != onnx.TensorProto.INT64:
            return []
        chain, last = [cast], cast.output[0]
    nxt = sole_consumer(last, consumers)
    if nxt is not None and nxt.op_type == "Add" and nxt.input[0] == last and nxt.input[1] in consts:
        chain.append(nxt)
        nxt = sole_consumer(nxt.output[0], consumers)
    if nxt is not None and nxt.domain == DOMAIN and nxt.op_type in EPILOGUE_VALUES and nxt.input[0] == chain[-1].output[0]:
        chain.append(nxt)
    return chain if len(chain) > (0 if widened else 1) else []


def residual_after(chain: list, consumers: dict, producers: dict, static: dict):
    """``(skip_rescale, add, saturate)`` when a GEMM's ``Rescale`` is one side of a residual add:
    ``Saturate(Add(Rescale(h), Rescale(branch)), lo, hi)`` with constant bounds (``onnx_export.residual``),
    the skip ``Rescale`` read only by that add. The GEMM's epilogue can then finish the residual itself."""
    if not chain or chain[-1].op_type != "Rescale":
        return None
    add = sole_consumer(chain[-1].output[0], consumers)
    if add is None or add.op_type != "Add" or add.domain or len(add.input) != 2:
        return None
    other = add.input[0] if add.input[1] == chain[-1].output[0] else add.input[1]
    skip = producers.get(other)
    saturate = sole_consumer(add.output[0], consumers)
    if skip is None or skip.domain != DOMAIN or skip.op_type != "Rescale" or \
            sole_consumer(skip.output[0], consumers) is not add or saturate is None or \
            saturate.domain != DOMAIN or saturate.op_type != "Saturate" or \
            not all(n in static for n in saturate.input[1:]):
        return None
    return skip, add, saturate


def table_after(chain: list, consumers: dict, static: dict):
    """``(nodes, table, lo)`` when a tabulable GELU chain reads a GEMM's saturating requant."""
    if not chain or chain[-1].op_type != "Requant":
        return None
    nxt = sole_consumer(chain[-1].output[0], consumers)
    ranges: dict = {}
    note_range(chain[-1], chain[-1].output[0], ranges, static)
    nodes = table_chain(nxt, ranges, consumers, static) if nxt is not None else []
    if not nodes:
        return None
    lo, hi = ranges[chain[-1].output[0]]
    return nodes, build_table(nodes, static, lo, hi), lo


def narrowest_int(lo, hi) -> str:
    """The narrowest signed integer dtype holding ``[lo, hi]`` (int64 unless both are known ints)."""
    if isinstance(lo, int) and isinstance(hi, int):
        for bits in (8, 16, 32):
            if -(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1)):
                return f"int{bits}"
    return "int64"


def int16_source(name: str, producers: dict, ranges: dict):
    """If ``name`` is ``Cast(t)`` of a value ``t`` known to fit int16, return ``t``'s name."""
    node = producers.get(name)
    if node is None or node.op_type != "Cast":
        return None
    lo_hi = ranges.get(node.input[0])
    return node.input[0] if lo_hi is not None and -(1 << 15) <= lo_hi[0] and lo_hi[1] < (1 << 15) else None


def transposed_source(name: str, producers: dict):
    """If ``name`` is ``Transpose(t)`` swapping the last two axes, return ``t``'s name."""
    node = producers.get(name)
    if node is None or node.op_type != "Transpose":
        return None
    perm = list(attrs(node)["perm"])
    rank = len(perm)
    return node.input[0] if perm == list(range(rank - 2)) + [rank - 1, rank - 2] else None
