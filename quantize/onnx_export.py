"""Export an ``IntegerViT`` as an integer ONNX graph that ONNX Runtime runs bit-exactly.

The graph mirrors ``IntegerViT.forward_int_core`` node for node:

* ``input_quant/*`` — the input quantizer: ``Clip(Round(x / s), −128, 127)`` in
  float32 (ONNX ``Round`` is half to even, like ``torch.round``), then ``Cast``.
* the integer network: int8 tensors into ``MatMulInteger`` (int32 accumulate),
  int64 for requantization and the nonlinears, which are the ``intvit`` domain
  functions of ``onnx_functions``. A·V multiplies int16 probabilities by int8
  values, which ``MatMulInteger`` does not take: it is an int32 ``MatMul``
  (exact: ``|acc| < 2**22``).
* ``dequant/*`` — the final dequantize: ``Cast(acc, double) · scale`` → float32.

Outputs: ``logits`` (float32; tokens ``[B, T, D]`` for a headless model) and
``int_logits`` (int64, the integer result before the dequantize). Inputs:
``images`` (float32 ``[B, C, H, W]``, batch symbolic) or, with
``integer_input=True``, ``images_int8`` (int8) with the quantizer left out.

Files load in onnxruntime 1.31: opset 21, IR version 10.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__, ops
from ..files import check_regular_file, check_writable_target, write_atomic
from ..models.spec import EMBEDDING_HEAD_FAMILIES
from .onnx_functions import DOMAIN, OPSET, all_functions
from .preprocessing import METADATA_KEY as PREPROCESSING_KEY
from .preprocessing import to_metadata

IR_VERSION = 10
FLOAT_NODE_PREFIXES = ("input_quant/", "dequant/")


class OnnxExportError(ValueError):
    """The model cannot be exported (not calibrated, wrong mode, or an unwritable path)."""


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.k = [], [], 0
        self.consts: dict = {}

    def op(self, op_type, *inputs, name=None, domain="", **attrs):
        self.k += 1
        out = f"{name or op_type.lower()}_{self.k}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, domain=domain, **attrs))
        return out

    def fn(self, fname, *inputs, name):
        return self.op(fname, *inputs, name=name, domain=DOMAIN)

    def init(self, name, array, dtype=None):
        arr = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const(self, value, dtype=np.int64):
        key = (repr(value), np.dtype(dtype).str)
        if key not in self.consts:
            self.consts[key] = self.init(f"c{len(self.consts)}", np.asarray(value, dtype=dtype))
        return self.consts[key]


def _i64(t):
    return t.detach().cpu().numpy().astype(np.int64)


class _Exporter:
    def __init__(self, model):
        self.m, self.g = model, _Graph()

    def p(self, name):
        return self.m.p(name)

    def dyadic_consts(self, name):
        """Initializers ``m``, ``2**e`` and ``2**(e-1)`` of the dyadic pair stored under ``name``."""
        g, e = self.g, _i64(self.p(name + ".e"))
        return [g.init(name + ".m", _i64(self.p(name + ".m"))),
                g.init(name + ".pow2e", np.left_shift(np.int64(1), e)),
                g.init(name + ".half", np.left_shift(np.int64(1), e - 1))]

    def range_consts(self, bits):
        return [self.g.const(v) for v in ops.signed_range(bits)]

    def requant(self, z, name, bits):
        """The requant stored under ``name``, with its offset (β, a zero point) or zeros where it has none."""
        offset = self.m.requant_offset(name)
        off = _i64(offset) if offset is not None else np.zeros_like(_i64(self.p(name + ".e")))
        consts = self.dyadic_consts(name) + [self.g.init(name + ".offset", off)] + self.range_consts(bits)
        return self.g.fn("Requant", z, *consts, name=name + "/requant")

    def rescale(self, z, name):
        return self.g.fn("Rescale", z, *self.dyadic_consts(name), name=name + "/rescale")

    def to_int8(self, x, name):
        return self.g.op("Cast", x, to=TensorProto.INT8, name=name)

    def linear_from(self, x, point, name, cast_name=None):
        """The linear layer ``name`` on the activation of quant point ``point``: cast to int8, or, when the
        layout widens the point to 16 bits (``quantize.layout``), left int64 for an int64 ``MatMul``."""
        wide = self.m.bits[point] > 8
        return self.linear(x if wide else self.to_int8(x, cast_name or point + "/int8"), name, wide)

    def linear(self, x, name, wide=False):
        """int8 activations × int8 weights → int32 (MatMulInteger) → int64 + int32 bias; a ``wide``
        (int64-typed, 16-bit valued) input multiplies int64 weights in a ``MatMul`` instead."""
        g = self.g
        w = _i64(self.p(name + ".w")).T.copy()
        if wide:
            acc = g.op("MatMul", x, g.init(name + ".wT", w), name=name + "/gemm")
        else:
            ops.check_accumulator_fits(w.shape[0], f"linear layer {name}")
            acc = g.op("MatMulInteger", x, g.init(name + ".wT", w, np.int8), name=name + "/gemm")
            acc = g.op("Cast", acc, to=TensorProto.INT64, name=name + "/acc")
        return g.op("Add", acc, g.init(name + ".b", _i64(self.p(name + ".b"))), name=name + "/bias")

    def saturate(self, x, bits, name):
        return self.g.fn("Saturate", x, *self.range_consts(bits), name=name)

    def layernorm(self, h, name):
        z = self.g.fn("IntLayerNorm", h, name=name + "/ilayernorm")
        return self.requant(z, name, self.m.bits[name])

    def nonlinear_consts(self, x0, n, out_bits, name):
        g = self.g
        return [g.init(name + ".x0", np.int64(x0)), g.init(name + ".nx0", np.int64(n * x0)),
                g.const(n), g.const(1 << (63 - out_bits))]

    def block(self, h, pre, heads):
        g, spec = self.g, self.m.spec
        t, d = spec.num_tokens, spec.dim
        dh = d // heads
        qkv = self.requant(self.linear_from(self.layernorm(h, pre + "norm1"), pre + "norm1", pre + "qkv"),
                           pre + "qkv.rq", 8)
        q, k, v = (g.op("Transpose", g.op("Reshape", part, g.const([-1, t, heads, dh]), name=pre + nm + "/heads"),
                        perm=[0, 2, 1, 3], name=pre + nm + "/split_heads")
                   for nm, part in zip("qkv", self._split3(qkv, d, pre)))
        q8, k8 = self.to_int8(q, pre + "q/int8"), self.to_int8(k, pre + "k/int8")
        kt = g.op("Transpose", k8, perm=[0, 1, 3, 2], name=pre + "kT")
        logits = g.op("Cast", g.op("MatMulInteger", q8, kt, name=pre + "qk/gemm"), to=TensorProto.INT64,
                      name=pre + "qk/acc")
        logits = self.requant(logits, pre + "logits.rq", 16)
        x0 = int(self.p(pre + "softmax.x0"))
        probs = g.fn("Shiftmax", logits, *self.nonlinear_consts(x0, ops.SHIFTMAX_N, 16, pre + "softmax"),
                     name=pre + "softmax/shiftmax")
        av = g.op("MatMul", g.op("Cast", probs, to=TensorProto.INT32, name=pre + "probs/int32"),
                  g.op("Cast", v, to=TensorProto.INT32, name=pre + "v/int32"), name=pre + "av/gemm")
        ctx = self.requant(g.op("Cast", av, to=TensorProto.INT64, name=pre + "av/acc"), pre + "ctx.rq",
                           self.m.bits[pre + "ctx"])
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3], name=pre + "ctx/merge"),
                   g.const([-1, t, d]), name=pre + "ctx/merge_heads")
        branch = self.linear_from(ctx, pre + "ctx", pre + "proj")
        h = self.residual(h, branch, pre + "resid1")
        f = self.requant(self.linear_from(self.layernorm(h, pre + "norm2"), pre + "norm2", pre + "fc1"),
                         pre + "fc1.rq", 8)
        gl = self.gelu(f, pre)
        branch = self.linear_from(gl, pre + "gelu", pre + "fc2")
        return self.residual(h, branch, pre + "resid2")

    def gelu(self, f, pre):
        """GELU of the int8 fc1 output: a ``Lookup`` in the stored table, or ShiftGELU + requant."""
        g = self.g
        if self.m.gelu == "table":
            table = g.init(pre + "gelu.table", _i64(self.p(pre + "gelu.table")))
            return g.fn("Lookup", f, table, g.const(ops.signed_range(8)[0]), name=pre + "gelu/lookup")
        x0 = int(self.p(pre + "gelu.x0"))
        gl = g.fn("ShiftGELU", f, *self.nonlinear_consts(x0, ops.SHIFTGELU_N, 8, pre + "gelu"),
                  name=pre + "gelu/shiftgelu")
        return self.requant(gl, pre + "gelu.rq", self.m.bits[pre + "gelu"])

    def _split3(self, x, d, pre):
        g = self.g
        return [g.op("Slice", x, g.const([i * d]), g.const([(i + 1) * d]), g.const([-1]),
                     name=pre + f"qkv/slice{i}") for i in range(3)]

    def residual(self, h, branch, name):
        s = self.g.op("Add", self.rescale(h, name + ".skip"), self.rescale(branch, name + ".branch"),
                      name=name + "/add")
        return self.saturate(s, 16, name + "/saturate")

    def pool(self, n):
        g, spec = self.g, self.m.spec
        parts = []
        for item in spec.pool:
            if item == "cls" or item.startswith("token"):
                idx = 0 if item == "cls" else int(item[5:])
                parts.append(g.op("Gather", n, g.const(idx), axis=1, name=f"pool/{item}"))
            elif item != "mean":
                raise OnnxExportError(f"unknown pooling {item!r}")
            else:
                patches = g.op("Slice", n, g.const([spec.num_prefix]), g.const([spec.num_tokens]),
                               g.const([1]), name="pool/patches")
                count = spec.num_tokens - spec.num_prefix
                total = g.op("Add", g.op("ReduceSum", patches, g.const([1]), keepdims=0, name="pool/sum"),
                             g.const(count // 2), name="pool/round")
                parts.append(g.fn("FloorDiv", total, g.const(count), name="pool/mean"))
        return parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=-1, name="pool/concat")

    def build(self, integer_input: bool):
        g, m, spec = self.g, self.m, self.m.spec
        c, hgt, wid = spec.in_chans, *spec.image_size
        pz = spec.patch_size
        if integer_input:
            inp = helper.make_tensor_value_info("images_int8", TensorProto.INT8, ["batch", c, hgt, wid])
            x8 = "images_int8"
        else:
            inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", c, hgt, wid])
            s = g.init("input.scale", np.float32(m.scales["input"]))
            q = g.op("Round", g.op("Div", "images", s, name="input_quant/div"), name="input_quant/round")
            q = g.op("Clip", q, g.const(-128.0, np.float32), g.const(127.0, np.float32), name="input_quant/clip")
            x8 = g.op("Cast", q, to=TensorProto.INT8, name="input_quant/cast")
        np_ = (hgt // pz) * (wid // pz)
        x = g.op("Reshape", x8, g.const([-1, c, hgt // pz, pz, wid // pz, pz]), name="patchify/reshape")
        x = g.op("Transpose", x, perm=[0, 2, 4, 1, 3, 5], name="patchify/transpose")
        x = g.op("Reshape", x, g.const([-1, np_, c * pz * pz]), name="patchify/rows")
        tok = g.op("Add", self.rescale(self.linear(x, "patch_embed"), "patch_embed.rq"),
                   g.init("embed.pos", _i64(m.p("embed.pos"))), name="embed/pos")
        batch = g.op("Shape", x8, start=0, end=1, name="embed/batch")
        shape = g.op("Concat", batch, g.const([spec.num_prefix, spec.dim]), axis=0, name="embed/prefix_shape")
        prefix = g.op("Expand", g.init("embed.prefix", _i64(m.p("embed.prefix"))[None]), shape,
                      name="embed/prefix")
        h = self.saturate(g.op("Concat", prefix, tok, axis=1, name="embed/concat"), 16, "embed/saturate")
        if spec.pre_norm is not None:
            h = self.layernorm(h, "norm_pre")
        for i, blk in enumerate(spec.blocks):
            h = self.block(h, f"blocks.{i}.", blk.num_heads)
        out = self.layernorm(h, "norm") if spec.final_norm is not None else h
        if m.has_head:
            out = self.linear_from(self.pool(out), "norm", "head", cast_name="head/int8_in")
            scale = g.init("head.out_scale", m.p("head.out_scale").numpy().astype(np.float64))
        else:
            from .qparams import output_point
            out = self.pool(out) if spec.pooled_output else out
            point = output_point(spec)
            scale = g.init("out_scale", np.float64(m.scales[point]))
            zero = m.zeros[point]
        g.nodes.append(helper.make_node("Identity", [out], ["int_logits"], name="int_logits"))
        deq = g.op("Cast", out, to=TensorProto.DOUBLE, name="dequant/cast")
        if not m.has_head and zero:                       # tokens with a zero point: (q − zero)·scale
            deq = g.op("Sub", deq, g.init("out_zero", np.float64(zero)), name="dequant/zero")
        deq = g.op("Mul", deq, scale, name="dequant/mul")
        g.nodes.append(helper.make_node("Cast", [deq], ["logits"], to=TensorProto.FLOAT, name="dequant/float"))
        out_shape = ["batch", spec.head.weight.shape[0]] if m.has_head else \
            ["batch", len(spec.pool) * spec.dim] if spec.pooled_output else ["batch", spec.num_tokens, spec.dim]
        outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape),
                helper.make_tensor_value_info("int_logits", TensorProto.INT64, out_shape)]
        graph = helper.make_graph(g.nodes, "intvit_integer_vit", [inp], outs, g.inits)
        model = helper.make_model(graph, functions=all_functions(), producer_name="intvit",
                                  producer_version=__version__,
                                  opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])
        model.ir_version = IR_VERSION
        props = {"intvit.family": spec.family, "intvit.source_class": spec.source_class,
                 OUTPUT_KIND_KEY: output_kind(spec),
                 # how images become images_int8 (the graph's own input quantizer, or the caller's job)
                 INPUT_QUANTIZER_KEY: json.dumps({"scale": float(m.scales["input"]), "zero_point": 0,
                                                  "images_int8": "clip(round_half_even(images / scale), -128, 127)",
                                                  "in_graph": not integer_input})}
        if m.meta.get("preprocessing"):
            props[PREPROCESSING_KEY] = to_metadata(m.meta["preprocessing"])
        helper.set_model_props(model, props)
        return model


OUTPUT_KIND_KEY = "intvit.output"
INPUT_QUANTIZER_KEY = "intvit.input_quantizer"
DIGEST_KEY = "intvit.graph_sha256"      # in the files export_onnx writes: read_onnx checks it


def graph_digest(proto: onnx.ModelProto) -> str:
    """SHA-256 of ``proto`` serialized deterministically, leaving out its own ``DIGEST_KEY`` property: what
    ``export_onnx`` stores in the file and ``read_onnx`` recomputes (a flipped bit in a weight, a scale or a
    node changes it; ONNX Runtime and the compiler would otherwise run the damaged graph as given)."""
    body = onnx.ModelProto()
    body.CopyFrom(proto)
    kept = [(p.key, p.value) for p in body.metadata_props if p.key != DIGEST_KEY]
    del body.metadata_props[:]
    for key, value in kept:
        body.metadata_props.add(key=key, value=value)
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()


def output_kind(spec) -> str:
    """What the graph's ``logits`` output holds: ``logits``, ``tokens`` ([B, T, D], headless), ``features``
    ([B, len(pool)·D], headless with ``pooled_output``) or ``embeddings`` (a projection head, CLIP's
    ``image_embeds``); ``intvit run`` ranks classes for ``logits`` only."""
    if spec.head is not None:
        return "embeddings" if spec.family in EMBEDDING_HEAD_FAMILIES else "logits"
    return "features" if spec.pooled_output else "tokens"


def to_onnx(model, integer_input: bool = False) -> onnx.ModelProto:
    """Build the integer ONNX graph of an ``IntegerViT`` (in memory)."""
    if not callable(getattr(model, "forward_int_core", None)):
        raise OnnxExportError(f"export_onnx needs an IntegerViT (from intvit.quantize), got {type(model).__name__}")
    return _Exporter(model).build(integer_input)


def export_onnx(model, path, integer_input: bool = False, check: bool = True) -> str:
    """Write the integer ONNX graph to ``path`` atomically (no partial file on error)."""
    path = os.fspath(path)
    try:
        check_writable_target(path, "the ONNX file")
    except OSError as exc:
        raise OnnxExportError(str(exc)) from None
    proto = to_onnx(model, integer_input)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    proto.metadata_props.add(key=DIGEST_KEY, value=graph_digest(proto))
    return write_atomic(path, proto.SerializeToString())


def read_onnx(path) -> onnx.ModelProto:
    """Read an ONNX file, with one clear error for a missing or unreadable one (not protobuf's DecodeError),
    or one ``export_onnx`` wrote that changed since (``graph_digest``; files without the digest, from other
    tools or older intvit versions, are read as they are)."""
    path = os.fspath(path)
    check_regular_file(path, "ONNX file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes), not an ONNX file; give the .onnx written by `intvit export`")
    try:
        proto = onnx.load(path)
    except Exception as exc:  # onnx raises several unrelated types for unreadable files
        raise ValueError(f"{path} is not a readable ONNX file ({type(exc).__name__}); give the .onnx written by "
                         "`intvit export`") from None
    stored = next((p.value for p in proto.metadata_props if p.key == DIGEST_KEY), None)
    if stored is not None and stored != graph_digest(proto):
        raise ValueError(f"{path} was changed after `intvit export` wrote it (its content no longer matches the "
                         f"SHA-256 stored in it: damage, or an edit); export it again — or, if you edited it on "
                         f"purpose, remove its metadata property {DIGEST_KEY!r}")
    return proto
