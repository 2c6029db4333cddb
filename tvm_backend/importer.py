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

import contextlib

import numpy as np
import onnx
from onnx import numpy_helper
from tvm import relax

from ..quantize.onnx_functions import DOMAIN
from .graph_facts import (UnsupportedGraphError, attrs, epilogue_chain, int16_source, kernel_args, narrowest_int,
                          note_range, residual_after, sole_consumer, table_after, table_chain, transposed_source)
from .import_gemm import GemmEmitter
from .kernels import DOMAIN_KERNELS, int_layernorm_te, requant_value
from .tabulate import build_table, lookup_te

__all__ = ["UnsupportedGraphError", "check_intvit_graph", "to_relax"]


_DTYPES = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
           onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}


def check_intvit_graph(proto: onnx.ModelProto) -> None:
    """Refuse ONNX files that are not intvit integer graphs, with one clear message."""
    domains = {o.domain for o in proto.opset_import}
    names = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    fix = "export one with `intvit export` or IntegerViT.export_onnx"
    if DOMAIN not in domains or proto.producer_name != "intvit":
        raise UnsupportedGraphError(f"this ONNX file is not an intvit integer graph (no 'intvit' domain / "
                                    f"producer); {fix}")
    if names not in (["images"], ["images_int8"]):
        raise UnsupportedGraphError(f"this intvit graph has inputs {names}; it must take one, 'images' or "
                                    f"'images_int8' (was it edited after export?); {fix}")
    if outputs != ["logits", "int_logits"]:
        raise UnsupportedGraphError(f"this intvit graph has outputs {outputs}; it must give 'logits' and "
                                    f"'int_logits', in that order (was it edited after export?); {fix}")


def to_relax(proto: onnx.ModelProto, batch: int = 1, gemm_form: str = "vnni"):
    """Build a Relax ``IRModule`` with ``main(images) -> (logits, int_logits)``.

    Linear layers (``MatMulInteger`` on a constant weight, with the bias add
    and requant that follow it) become one GEMM kernel each, and so do
    attention's ``Q·Kᵀ`` and ``A·V``; ``gemm_form`` picks the kernels' layout
    (``"vnni"`` for x86, ``"tiled"`` for CUDA; see ``import_gemm``).
    """
    check_intvit_graph(proto)
    if not 1 <= batch < 2**31:
        raise ValueError(f"batch must be at least 1 and below 2**31 (shapes are int32 literals), got {batch}")
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

    gemms = GemmEmitter(bb, gemm_form, static, val)
    consumers: dict[str, list] = {}
    producers = {o: node for node in g.node for o in node.output}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    fused: set[int] = set()          # ids of nodes folded into a GEMM epilogue or a lookup table
    ranges: dict[str, tuple[int, int]] = {}   # [lo, hi] of values a saturation bounds
    narrowed: set[str] = set()       # int64 in the graph, stored narrower (a GEMM's saturated output)

    def emit_fused_gemm(gemm, emit, widened=False):
        """Emit a GEMM with the epilogue nodes after it (requant, then a tabulated ShiftGELU chain; or
        rescale, then the residual add it feeds) folded in; ``emit(chain, table, residual) -> relax value``
        builds the kernel."""
        chain = epilogue_chain(gemm, consumers, consts, widened)
        table = table_after(chain, consumers, static)
        residual = None if table else residual_after(chain, consumers, producers, static)
        tail = table[0] if table else list(residual) if residual else []
        fused.update(id(n) for n in chain + tail)
        out = (tail[-1] if tail else chain[-1] if chain else gemm).output[0]
        if residual:
            skip, _, saturate = residual
            residual = (val(skip.input[0]), kernel_args("Rescale", list(skip.input[1:]), static, val),
                        *kernel_args("Saturate", list(saturate.input[1:]), static, val))
        env[out] = emit(chain, table[1:] if table else None, residual)
        _note_narrowed(bb, env, out, narrowed)
        if tail and not table:
            note_range(tail[-1], out, ranges, static)
        elif chain and not table:
            note_range(chain[-1], out, ranges, static)

    with _closing_blocks_on_error(bb), bb.function("main", [x]):
        with bb.dataflow():
            for node in g.node:
                if id(node) in fused:
                    continue
                a, ins, out = attrs(node), list(node.input), node.output[0]
                op = node.op_type
                if node.domain == DOMAIN:
                    if op not in DOMAIN_KERNELS:
                        raise UnsupportedGraphError(f"intvit op '{op}' has no TVM kernel")
                    chain = table_chain(node, ranges, consumers, static)
                    if chain:
                        fused.update(id(n) for n in chain)
                        lo, hi = ranges[ins[0]]
                        table = relax.const(build_table(chain, static, lo, hi))
                        env[chain[-1].output[0]] = bb.emit_te(lookup_te, val(ins[0]), table, lo,
                                                              primfunc_name_hint=op.lower() + "_table")
                        continue
                    requant = sole_consumer(out, consumers) if op == "IntLayerNorm" else None
                    if requant is not None and requant.domain == DOMAIN and requant.op_type == "Requant":
                        fused.add(id(requant))                 # LayerNorm + its requant: one kernel, int8 out
                        env[requant.output[0]] = layernorm_requant(bb, val(ins[0]), kernel_args(
                            "Requant", list(requant.input[1:]), static, val))
                        note_range(requant, requant.output[0], ranges, static)
                        _note_narrowed(bb, env, requant.output[0], narrowed)
                        continue
                    args = [val(ins[0])] + kernel_args(op, ins[1:], static, val)
                    kernel = DOMAIN_KERNELS[op]
                    note_range(node, out, ranges, static)
                    options = {}
                    if op in ("Shiftmax", "Saturate") and out in ranges:   # probabilities, residual stream:
                        options["out_dtype"] = narrowest_int(*ranges[out])   # stored as int16
                    padded = gemms.column_padded(args[0]) if op == "Shiftmax" else None
                    if padded is not None:          # Q·Kᵀ computed on its padding columns: read it in place
                        args[0], options["cols"] = padded
                    if options:
                        kernel = lambda *a, k=kernel, o=options: k(*a, **o)  # noqa: E731
                    env[out] = bb.emit_te(kernel, *args, primfunc_name_hint=op.lower())
                    _note_narrowed(bb, env, out, narrowed)
                    continue
                if op == "MatMulInteger" and ins[1] in consts and consts[ins[1]].ndim == 2:
                    emit_fused_gemm(node, lambda chain, table, residual: gemms.linear(
                        val(ins[0]), consts[ins[1]], chain, consts, table, residual))
                    continue
                keys = transposed_source(ins[1], producers) if op == "MatMulInteger" else None
                if keys is not None and str(bb.normalize(val(keys)).ty.dtype) == "int8":
                    emit_fused_gemm(node, lambda chain, table, residual: gemms.keys(val(ins[0]), val(keys), chain,
                                                                                    table, residual))
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
                elif op == "Cast" and str(bb.normalize(val(ins[0])).ty.dtype) == _DTYPES[a["to"]]:
                    env[out] = val(ins[0])                     # already stored as that type (narrowed)
                    if ins[0] in ranges:
                        ranges[out] = ranges[ins[0]]
                    elif a["to"] == onnx.TensorProto.INT8:
                        ranges[out] = (-128, 127)
                elif op == "Cast":
                    env[out] = bb.emit(relax.op.astype(val(ins[0]), _DTYPES[a["to"]]))
                    if a["to"] == onnx.TensorProto.INT8:
                        ranges[out] = (-128, 127)
                elif op in ("Add", "Sub", "Mul", "Div"):
                    fn = {"Add": relax.op.add, "Sub": relax.op.subtract, "Mul": relax.op.multiply,
                          "Div": relax.op.divide}[op]
                    env[out] = bb.emit(fn(val(ins[0]), val(ins[1])))
                elif op == "Round":
                    env[out] = bb.emit_te(_round_half_even_te, val(ins[0]), primfunc_name_hint="round_half_even")
                elif op == "Clip":
                    lo, hi = float(static[ins[1]]), float(static[ins[2]])
                    env[out] = bb.emit(relax.op.clip(val(ins[0]), lo, hi))
                elif op == "MatMul" and int16_source(ins[0], producers, ranges) \
                        and int16_source(ins[1], producers, ranges):   # A·V: probabilities × values
                    probs, values = (int16_source(i, producers, ranges) for i in ins)
                    emit_fused_gemm(node, lambda chain, table, residual: gemms.probs_values(
                        val(probs), val(values), chain, table, residual, ranges=(ranges[probs], ranges[values])))
                elif op == "MatMul" and ins[1] in consts and consts[ins[1]].ndim == 2:   # a widened (16-bit) linear
                    emit_fused_gemm(node, lambda chain, table, residual: gemms.wide_linear(
                        val(ins[0]), consts[ins[1]], chain, consts, table, residual), widened=True)
                elif op in ("MatMulInteger", "MatMul"):       # any other activation × activation
                    env[out] = gemms.bmm(val(ins[0]), val(ins[1]))
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


@contextlib.contextmanager
def _closing_blocks_on_error(bb):
    """On an error while the graph is imported, close the binding block TVM's ``DataflowScope.__exit__``
    opens as the error unwinds it; left open, TVM printed "BlockBuilder destroyed with remaining blocks!"
    to stderr under the one-line error the user is meant to read."""
    try:
        yield
    except BaseException:
        try:
            bb._end_block()
        except Exception:       # noqa: BLE001 - nothing was open; the import error is what matters
            pass
        raise


_VALUE_PRESERVING = ("Reshape", "Transpose", "Slice", "Gather", "Expand", "Identity")


def layernorm_requant(bb, x, requant_args: list):
    """``IntLayerNorm`` and the ``Requant`` after it as one kernel storing the narrowest type of the requant's
    bounds (int8): the int64 normalised row never leaves the kernel."""
    store = narrowest_int(requant_args[-2], requant_args[-1])
    tensors = [a for a in requant_args if not isinstance(a, int)]

    def kernel(xt, *tens):
        it = iter(tens)
        bound = [a if isinstance(a, int) else next(it) for a in requant_args]
        return int_layernorm_te(xt, lambda v, idx: requant_value(v, idx, *bound), store)
    return bb.emit_te(kernel, x, *tensors, primfunc_name_hint="intlayernorm_requant")


def _note_narrowed(bb, env: dict, name: str, narrowed: set) -> None:
    if str(bb.normalize(env[name]).ty.dtype) != "int64":
        narrowed.add(name)


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
