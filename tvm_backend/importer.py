"""Import intvit's integer ONNX graph (the contract) into a TVM Relax module.

The graph's standard ONNX nodes map one-to-one onto Relax operators; the
``intvit`` domain nodes (Requant, Shiftmax, ShiftGELU, IntLayerNorm, ...) map
onto the TE kernels of ``tvm_backend.kernels`` — they are *not* inlined into
generic ops, so each stays one kernel. The batch size is fixed at import
(``batch``); shape computations (``Shape``, ``Reshape`` targets, ``Expand``)
fold to constants.

Semantics checked against ONNX (and held to ``ops`` by the tests): integer
``Cast`` from float is only applied to values already rounded and clipped;
``Round`` must be half-to-even; float ``Div`` is IEEE division.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from tvm import relax

from ..quantize.onnx_functions import DOMAIN
from .kernels import DOMAIN_KERNELS, EPILOGUE_VALUES
from .tabulate import MAX_TABLE, build_table, exact_log2, lookup_te, tabulable_chain


class UnsupportedGraphError(ValueError):
    """The ONNX file is not an intvit integer graph this importer can lower."""


_DTYPES = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
           onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def check_intvit_graph(proto: onnx.ModelProto) -> None:
    """Refuse ONNX files that are not intvit integer graphs, with one clear message."""
    domains = {o.domain for o in proto.opset_import}
    names = [i.name for i in proto.graph.input]
    if DOMAIN not in domains or proto.producer_name != "intvit" or names not in (["images"], ["images_int8"]):
        raise UnsupportedGraphError(
            "this ONNX file is not an intvit integer graph (no 'intvit' domain / producer); "
            "export one with `intvit export` or IntegerViT.export_onnx")


def to_relax(proto: onnx.ModelProto, batch: int = 1):
    """Build a Relax ``IRModule`` with ``main(images) -> (logits, int_logits)``.

    Linear layers (``MatMulInteger`` on a constant weight, with the bias add
    and requant that follow it) become one ``gemm.packed_gemm_te`` kernel each,
    and so do attention's ``Q·Kᵀ`` and ``A·V`` with their operands packed
    in-graph; other activation GEMMs become ``gemm.int_bmm_te`` kernels.
    """
    check_intvit_graph(proto)
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    g = proto.graph
    inp = g.input[0]
    in_shape = [batch] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    in_dtype = _DTYPES[inp.type.tensor_type.elem_type]
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    static: dict[str, np.ndarray] = dict(consts)        # values known at import time
    bb = relax.BlockBuilder()
    x = relax.Var(inp.name, relax.TensorType(in_shape, in_dtype))
    env = {inp.name: x}

    def val(name):
        if name in env:
            return env[name]
        if name in consts:
            env[name] = relax.const(consts[name], str(consts[name].dtype))
            return env[name]
        raise UnsupportedGraphError(f"value '{name}' is used before it is defined")

    def shape_of(name):
        return [int(s) for s in bb.normalize(val(name)).ty.shape]

    consumers: dict[str, list] = {}
    producers = {o: node for node in g.node for o in node.output}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    fused: set[int] = set()          # ids of nodes folded into a GEMM epilogue or a lookup table
    ranges: dict[str, tuple[int, int]] = {}   # [lo, hi] of values a saturation bounds
    narrowed: set[str] = set()       # int64 in the graph, stored narrower (a GEMM's saturated output)

    def emit_fused_gemm(gemm, emit):
        """Emit a GEMM with the epilogue nodes after it (requant, then a tabulated ShiftGELU chain)
        folded in; ``emit(chain, table) -> relax value`` builds the kernel."""
        chain = _epilogue_chain(gemm, consumers, consts)
        table = _table_after(chain, consumers, static)
        fused.update(id(n) for n in chain + (table[0] if table else []))
        out = (table[0][-1] if table else chain[-1] if chain else gemm).output[0]
        env[out] = emit(chain, table[1:] if table else None)
        _note_narrowed(bb, env, out, narrowed)
        if chain and not table:
            _note_range(chain[-1], out, ranges, static)

    with bb.function("main", [x]):
        with bb.dataflow():
            for node in g.node:
                if id(node) in fused:
                    continue
                a, ins, out = _attrs(node), list(node.input), node.output[0]
                op = node.op_type
                if node.domain == DOMAIN:
                    if op not in DOMAIN_KERNELS:
                        raise UnsupportedGraphError(f"intvit op '{op}' has no TVM kernel")
                    chain = _table_chain(node, ranges, consumers, static)
                    if chain:
                        fused.update(id(n) for n in chain)
                        lo, hi = ranges[ins[0]]
                        table = relax.const(build_table(chain, static, lo, hi))
                        env[chain[-1].output[0]] = bb.emit_te(lookup_te, val(ins[0]), table, lo,
                                                              primfunc_name_hint=op.lower() + "_table")
                        continue
                    args = [val(ins[0])] + _kernel_args(op, ins[1:], static, val)
                    kernel = DOMAIN_KERNELS[op]
                    _note_range(node, out, ranges, static)
                    if op == "Shiftmax" and out in ranges:        # probabilities: stored as int16
                        store = _narrowest_int(*ranges[out])
                        kernel = lambda *a, k=kernel, s=store: k(*a, out_dtype=s)  # noqa: E731
                    env[out] = bb.emit_te(kernel, *args, primfunc_name_hint=op.lower())
                    _note_narrowed(bb, env, out, narrowed)
                    continue
                if op == "MatMulInteger" and ins[1] in consts and consts[ins[1]].ndim == 2:
                    emit_fused_gemm(node, lambda chain, table: _emit_linear(
                        bb, val(ins[0]), consts[ins[1]], chain, consts, static, val, table))
                    continue
                keys = _transposed_source(ins[1], producers) if op == "MatMulInteger" else None
                if keys is not None and str(bb.normalize(val(keys)).ty.dtype) == "int8":
                    emit_fused_gemm(node, lambda chain, table: _emit_activation_gemm(
                        bb, val(ins[0]), val(keys), chain, static, val, table))
                    continue
                if node.domain:
                    raise UnsupportedGraphError(f"node {node.name}: unknown domain '{node.domain}'")
                if op not in _VALUE_PRESERVING + ("Cast",):       # arithmetic: restore the graph's int64
                    for i in ins:
                        if i in narrowed:
                            env[i] = bb.emit(relax.op.astype(env[i], "int64"))
                            narrowed.discard(i)
                if op == "Shape":
                    full = np.array([batch] + shape_of(ins[0])[1:], dtype=np.int64)
                    static[out] = full[a.get("start", 0):a.get("end", len(full))]
                    env[out] = relax.const(static[out], "int64")
                elif op == "Concat" and all(i in static for i in ins):
                    static[out] = np.concatenate([static[i] for i in ins], axis=a["axis"])
                    env[out] = relax.const(static[out], "int64")
                elif op == "Concat":
                    env[out] = bb.emit(relax.op.concat([val(i) for i in ins], axis=a["axis"]))
                elif op == "Reshape":
                    target = [int(v) for v in static[ins[1]]]
                    src = shape_of(ins[0])
                    if -1 in target:
                        known = int(np.prod([t for t in target if t != -1]))
                        target[target.index(-1)] = int(np.prod(src)) // known
                    env[out] = bb.emit(relax.op.reshape(val(ins[0]), target))
                elif op == "Transpose":
                    env[out] = bb.emit(relax.op.permute_dims(val(ins[0]), a["perm"]))
                elif op == "Expand":
                    env[out] = bb.emit(relax.op.broadcast_to(val(ins[0]), [int(v) for v in static[ins[1]]]))
                elif op == "Slice":
                    axes = [int(v) for v in static[ins[3]]]
                    env[out] = bb.emit(relax.op.strided_slice(val(ins[0]), axes, [int(v) for v in static[ins[1]]],
                                                              [int(v) for v in static[ins[2]]]))
                elif op == "Gather":
                    idx = int(static[ins[1]])
                    sliced = relax.op.strided_slice(val(ins[0]), [a["axis"]], [idx], [idx + 1])
                    env[out] = bb.emit(relax.op.squeeze(sliced, [a["axis"]]))
                elif op == "Cast":
                    env[out] = bb.emit(relax.op.astype(val(ins[0]), _DTYPES[a["to"]]))
                    if a["to"] == onnx.TensorProto.INT8:
                        ranges[out] = (-128, 127)
                elif op in ("Add", "Mul", "Div"):
                    fn = {"Add": relax.op.add, "Mul": relax.op.multiply, "Div": relax.op.divide}[op]
                    env[out] = bb.emit(fn(val(ins[0]), val(ins[1])))
                elif op == "Round":
                    env[out] = bb.emit_te(_round_half_even_te, val(ins[0]), primfunc_name_hint="round_half_even")
                elif op == "Clip":
                    lo, hi = float(static[ins[1]]), float(static[ins[2]])
                    env[out] = bb.emit(relax.op.clip(val(ins[0]), lo, hi))
                elif op == "MatMul" and _int16_source(ins[0], producers, ranges) \
                        and _int16_source(ins[1], producers, ranges):   # A·V: probabilities × values
                    probs, values = (_int16_source(i, producers, ranges) for i in ins)
                    emit_fused_gemm(node, lambda chain, table: _emit_probs_values_gemm(
                        bb, val(probs), val(values), chain, static, val, table))
                elif op in ("MatMulInteger", "MatMul"):       # any other activation × activation
                    env[out] = _emit_bmm(bb, val(ins[0]), val(ins[1]))
                elif op == "ReduceSum":
                    axes = [int(v) for v in static[ins[1]]]
                    env[out] = bb.emit(relax.op.sum(val(ins[0]), axes, keepdims=bool(a.get("keepdims", 1))))
                elif op == "Identity":
                    env[out] = val(ins[0])
                else:
                    raise UnsupportedGraphError(f"node {node.name}: ONNX op {op} is not supported by the TVM importer")
                if op in _VALUE_PRESERVING and ins[0] in ranges:     # moves values, keeps their range
                    ranges[out] = ranges[ins[0]]
                if op in _VALUE_PRESERVING and ins[0] in narrowed:
                    narrowed.add(out)
            outs = bb.emit_output(relax.Tuple([val(o.name) for o in g.output]))
        bb.emit_func_output(outs)
    return bb.get()


_VALUE_PRESERVING = ("Reshape", "Transpose", "Slice", "Gather", "Expand", "Identity")


def _kernel_args(op: str, names: list[str], static: dict, val) -> list:
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


def _note_range(node, out: str, ranges: dict, static: dict) -> None:
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


def _table_chain(node, ranges: dict, consumers: dict, static: dict) -> list:
    """A ShiftGELU (and the elementwise nodes after it) on an input of at most ``MAX_TABLE`` values."""
    lo_hi = ranges.get(node.input[0])
    if node.op_type != "ShiftGELU" or lo_hi is None or lo_hi[1] - lo_hi[0] + 1 > MAX_TABLE:
        return []
    return tabulable_chain(node, consumers, static)


def _sole_consumer(value: str, consumers: dict):
    users = consumers.get(value, [])
    return users[0] if len(users) == 1 else None


def _epilogue_chain(gemm, consumers: dict, consts: dict) -> list:
    """The ``Cast(int64) [→ Add(bias)] [→ Requant|Rescale]`` nodes after a MatMulInteger.

    Each node must be the sole consumer of the previous one (the exporter's
    ``linear`` + requant shape, and attention's ``Q·Kᵀ`` + requant). Empty
    when there is no int64 cast or nothing after it.
    """
    cast = _sole_consumer(gemm.output[0], consumers)
    if cast is None or cast.op_type != "Cast" or _attrs(cast)["to"] != onnx.TensorProto.INT64:
        return []
    chain = [cast]
    nxt = _sole_consumer(cast.output[0], consumers)
    if nxt is not None and nxt.op_type == "Add" and nxt.input[0] == cast.output[0] and nxt.input[1] in consts:
        chain.append(nxt)
        nxt = _sole_consumer(nxt.output[0], consumers)
    if nxt is not None and nxt.domain == DOMAIN and nxt.op_type in EPILOGUE_VALUES and nxt.input[0] == chain[-1].output[0]:
        chain.append(nxt)
    return chain if len(chain) > 1 else []


def _table_after(chain: list, consumers: dict, static: dict):
    """``(nodes, table, lo)`` when a tabulable ShiftGELU chain reads a GEMM's saturating requant."""
    if not chain or chain[-1].op_type != "Requant":
        return None
    nxt = _sole_consumer(chain[-1].output[0], consumers)
    ranges: dict = {}
    _note_range(chain[-1], chain[-1].output[0], ranges, static)
    nodes = _table_chain(nxt, ranges, consumers, static) if nxt is not None else []
    if not nodes:
        return None
    lo, hi = ranges[chain[-1].output[0]]
    return nodes, build_table(nodes, static, lo, hi), lo


def _emit_gemm(bb, x, wp, fb, n: int, chain: list, static: dict, val, dot=None, table=None):
    """One kernel: GEMM on packed panels + folded bias (+ the chain's requant as epilogue, and then
    ``table[v − lo]`` when ``table = (values, lo)``)."""
    from .gemm import linear_tile, packed_gemm_te
    from .x86 import VPDPBUSD
    dot = dot or VPDPBUSD
    mr, _ = linear_tile(n)
    rq = chain[-1] if chain and chain[-1].domain == DOMAIN else None
    args = _kernel_args(rq.op_type, list(rq.input[1:]), static, val) if rq is not None else []
    tensors = [a for a in args if not isinstance(a, int)]
    bias = [] if fb is None else [fb]
    # a saturating requant's output is stored in the narrowest type that holds it (int8 for
    # 8-bit activations: an eighth of the memory traffic of int64) and widened by its readers
    store = _narrowest_int(args[-2], args[-1]) if rq is not None and rq.op_type == "Requant" else "int64"
    if table is not None:      # int32 entries: the lookup vectorizes as a 16-lane gather
        tensors.append(relax.const(table[0].astype(np.int32)))
        store = str(table[0].dtype)

    def gemm(xt, wpt, *rest):
        bt, tens = (rest[0], rest[1:]) if fb is not None else (None, rest)
        if rq is None:
            return packed_gemm_te(xt, wpt, bt, mr, n, dot, out_dtype="int64" if chain else "int32")
        it = iter(tens)
        bound = [a if isinstance(a, int) else next(it) for a in args]
        fn = EPILOGUE_VALUES[rq.op_type]
        if table is None:
            epilogue = lambda z, idx: fn(z, idx, *bound)  # noqa: E731
        else:
            lut = next(it)
            epilogue = lambda z, idx: lut[(fn(z, idx, *bound) - table[1]).astype("int32")]  # noqa: E731
        return packed_gemm_te(xt, wpt, bt, mr, n, dot, epilogue=epilogue, out_dtype=store)
    name = "int8_linear" if dot is VPDPBUSD else "int16_gemm"
    suffix = "_requant" + ("_table" if table is not None else "") if rq else ""
    return bb.emit_te(gemm, x, wp, *bias, *tensors, primfunc_name_hint=name + suffix)


def _note_narrowed(bb, env: dict, name: str, narrowed: set) -> None:
    if str(bb.normalize(env[name]).ty.dtype) != "int64":
        narrowed.add(name)


def _narrowest_int(lo, hi) -> str:
    """The narrowest signed integer dtype holding ``[lo, hi]`` (int64 unless both are known ints)."""
    if isinstance(lo, int) and isinstance(hi, int):
        for bits in (8, 16, 32):
            if -(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1)):
                return f"int{bits}"
    return "int64"


def _emit_linear(bb, x, w_kn: np.ndarray, chain: list, consts: dict, static: dict, val, table=None):
    """A linear layer: the weight packed offline, the bias folded with the +128 compensation."""
    from .gemm import folded_bias, linear_tile, pack_linear_weight
    n = w_kn.shape[1]
    add = next((c for c in chain if c.op_type == "Add"), None)
    bias = consts[add.input[1]] if add is not None else None
    wp = relax.const(pack_linear_weight(w_kn, linear_tile(n)[1]), "int8")
    fb = relax.const(folded_bias(w_kn, bias), "int64")
    return _emit_gemm(bb, x, wp, fb, n, chain, static, val, table=table)


def _emit_activation_gemm(bb, x, b_nk, chain: list, static: dict, val, table=None):
    """``x @ bᵀ`` for an int8 activation ``b`` (attention's keys), packed in-graph into VNNI panels."""
    from .gemm import pack_panels_te, panel_compensation_te
    wp = bb.emit_te(pack_panels_te, b_nk, "nk", primfunc_name_hint="pack_panels")
    fb = bb.emit_te(panel_compensation_te, b_nk, primfunc_name_hint="panel_compensation")
    n = int(bb.normalize(b_nk).ty.shape[-2])
    return _emit_gemm(bb, x, wp, fb, n, chain, static, val, table=table)


def _emit_probs_values_gemm(bb, probs, values, chain: list, static: dict, val, table=None):
    """``A·V``: 16-bit probabilities × int8 values on ``vpdpwssd``, values packed in-graph as int16."""
    from .gemm import pack_panels_te
    from .x86 import VPDPWSSD
    vp = bb.emit_te(lambda v: pack_panels_te(v, "kn", VPDPWSSD), values, primfunc_name_hint="pack_values")
    n = int(bb.normalize(values).ty.shape[-1])
    return _emit_gemm(bb, probs, vp, None, n, chain, static, val, dot=VPDPWSSD, table=table)


def _int16_source(name: str, producers: dict, ranges: dict):
    """If ``name`` is ``Cast(t)`` of a value ``t`` known to fit int16, return ``t``'s name."""
    node = producers.get(name)
    if node is None or node.op_type != "Cast":
        return None
    lo_hi = ranges.get(node.input[0])
    return node.input[0] if lo_hi is not None and -(1 << 15) <= lo_hi[0] and lo_hi[1] < (1 << 15) else None


def _transposed_source(name: str, producers: dict):
    """If ``name`` is ``Transpose(t)`` swapping the last two axes, return ``t``'s name."""
    node = producers.get(name)
    if node is None or node.op_type != "Transpose":
        return None
    perm = list(_attrs(node)["perm"])
    rank = len(perm)
    return node.input[0] if perm == list(range(rank - 2)) + [rank - 1, rank - 2] else None


def _emit_bmm(bb, a, b):
    from .gemm import int_bmm_te, linear_tile
    mr, nr = linear_tile(int(bb.normalize(b).ty.shape[-1]))
    return bb.emit_te(lambda at, bt: int_bmm_te(at, bt, mr, nr), a, b, primfunc_name_hint="int_bmm")


def _round_half_even_te(x):
    """``Round`` as ONNX/torch define it: to nearest, ties to even.

    ``f = v − floor(v)`` is exact in floating point, so comparing ``f`` with 0.5
    decides the rounding without the double rounding of ``floor(v + 0.5)``
    (which sends 0.49999997f to 1).
    """
    from tvm import te
    from tvm import tirx as tir

    def f(*i):
        v = x(*i)
        half, one, two = (tir.const(c, x.dtype) for c in (0.5, 1.0, 2.0))
        r = tir.floor(v)
        frac = v - r
        odd = (r - two * tir.floor(r / two)) == one
        up = tir.Or(frac > half, tir.And(frac == half, odd))
        return tir.Select(up, r + one, r)
    return te.compute(x.shape, f, name="round_half_even")
