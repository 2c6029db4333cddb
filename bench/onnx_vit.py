"""A float ViT classifier given as ONNX, rebuilt as the Hugging Face model it was exported from.

``intvit bench --model FILE.onnx`` needs the float model twice: as the ONNX file
itself (ONNX Runtime FP32 and INT8, TVM FP32 run it as given) and as a PyTorch
module (torch FP32, ``torch.compile``, and intvit, which quantizes a PyTorch ViT).
``load_float_vit`` reads the file's structure — one float ``[N, C, H, W]`` input,
a patch ``Conv`` with stride = kernel, one class token, position embeddings,
``2·L + 1`` ``LayerNormalization`` nodes and ``6·L + 1`` weight GEMMs
(q, k, v, out, fc1, fc2 per layer, then the classifier) — copies the weights
into a ``ViTForImageClassification`` of the shapes it found, and accepts the
result only if that module reproduces the ONNX file's logits under ONNX
Runtime on random images (the head count is not in the weights; the candidate
that reproduces the logits is taken). What it accepts in practice: a
``torch.onnx.export`` of an HF ViT / DeiT (single class token) classifier.
Anything else gets one ``NotAFloatViTError`` saying what was missing.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np


class NotAFloatViTError(ValueError):
    """The file is missing, unreadable, or not a float ViT classifier intvit can rebuild."""


@dataclasses.dataclass
class FloatViT:
    model: object               # transformers.ViTForImageClassification, eval mode
    channels: int
    image: int
    input_name: str
    fixed_batch: int | None     # the ONNX input's batch size when it is not symbolic


def load_float_vit(path: str) -> FloatViT:
    """Rebuild the float HF ViT exported to ``path``; raises ``NotAFloatViTError`` if it is not one."""
    import onnx
    from onnx import numpy_helper

    if not os.path.isfile(path):
        raise NotAFloatViTError(f"--model {path}: no such file (give deit_tiny, deit_small, vit_base, tiny, "
                                "fmnist or the path of a float ViT .onnx)")
    try:
        proto = onnx.load(path)
    except Exception as exc:  # onnx raises several unrelated types for unreadable files
        raise NotAFloatViTError(f"--model {path}: not a readable ONNX file ({type(exc).__name__})") from None

    def fail(why):
        raise NotAFloatViTError(f"--model {path} is not a float ViT classifier intvit can rebuild: {why}")

    g = proto.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT \
            or len(inputs[0].type.tensor_type.shape.dim) != 4:
        fail("it must have exactly one float32 input of shape [N, C, H, W]")
    dims = inputs[0].type.tensor_type.shape.dim
    channels, height, width = (d.dim_value for d in dims[1:])
    if not channels or not height or height != width:
        fail(f"its input must be square images of a fixed size, got {[d.dim_param or d.dim_value for d in dims]}")
    fixed_batch = dims[0].dim_value or None

    w = lambda n, i: consts.get(n.input[i]) if len(n.input) > i else None  # noqa: E731
    convs = [n for n in g.node if n.op_type == "Conv" and w(n, 1) is not None and w(n, 1).ndim == 4]
    if len(convs) != 1:
        fail(f"expected one patch-embedding Conv, found {len(convs)}")
    conv_w, conv_b = w(convs[0], 1), w(convs[0], 2)
    dim, patch = conv_w.shape[0], conv_w.shape[2]
    if conv_w.shape[1] != channels or conv_w.shape[3] != patch or height % patch or conv_b is None:
        fail(f"the Conv {list(conv_w.shape)} is not a patch embedding of {channels}x{height}x{width} images")
    tokens = (height // patch) ** 2 + 1
    cls = [c for n in g.node if n.op_type == "Expand" for c in [w(n, 0)] if c is not None and c.shape == (1, 1, dim)]
    pos = [c for n in g.node if n.op_type == "Add" for c in (w(n, 0), w(n, 1))
           if c is not None and c.shape == (1, tokens, dim)]
    if len(cls) != 1 or len(pos) != 1:
        fail(f"expected one class token [1, 1, {dim}] and position embeddings [1, {tokens}, {dim}] "
             f"(found {len(cls)} and {len(pos)}; DeiT's distillation token is not supported)")

    norms = [n for n in g.node if n.op_type == "LayerNormalization"]
    linears = _linears(g, consts)
    layers = (len(norms) - 1) // 2
    if layers < 1 or len(norms) != 2 * layers + 1 or len(linears) != 6 * layers + 1:
        fail(f"found {len(norms)} LayerNormalization nodes and {len(linears)} weight GEMMs; a ViT of L layers "
             "has 2L+1 and 6L+1 (opset 17+ export with LayerNormalization kept whole)")
    mlp, labels = linears[4][0].shape[1], linears[-1][0].shape[1]
    expected = [(dim, dim)] * 4 + [(dim, mlp), (mlp, dim)]
    if [lw.shape for lw, _ in linears[:-1]] != expected * layers or linears[-1][0].shape[0] != dim:
        fail("the GEMM weight shapes do not follow q, k, v, out, fc1, fc2 per layer and a classifier")
    if any(b is None for _, b in linears):
        fail("every GEMM needs a bias (qkv_bias=True)")
    ops = {n.op_type for n in g.node}
    gelu = [n for n in g.node if n.op_type == "Gelu"]
    tanh = "Tanh" in ops or any(a.s == b"tanh" for n in gelu for a in n.attribute if a.name == "approximate")
    if not ({"Erf", "Tanh"} & ops or gelu):
        fail("no GELU (Erf, Tanh or Gelu) found")
    eps = next((a.f for a in norms[0].attribute if a.name == "epsilon"), 1e-5)

    weights = dict(conv=(conv_w, conv_b), cls=cls[0], pos=pos[0],
                   norms=[(consts.get(n.input[1]), consts.get(n.input[2])) for n in norms], linears=linears)
    config = dict(image_size=height, patch_size=patch, num_channels=channels, hidden_size=dim,
                  num_hidden_layers=layers, intermediate_size=mlp, num_labels=labels, layer_norm_eps=eps,
                  hidden_act="gelu_pytorch_tanh" if tanh else "gelu", qkv_bias=True)
    x = np.random.default_rng(0).standard_normal((fixed_batch or 2, channels, height, width)).astype(np.float32)
    try:
        ref = _onnx_logits(proto, inputs[0].name, x)
    except Exception as exc:  # ORT's errors have no common base class
        fail(f"ONNX Runtime cannot run it ({type(exc).__name__}: {str(exc)[:200]})")
    for heads in _head_candidates(dim, consts):
        model = _build(config, heads, weights)
        if _reproduces(model, x, ref):
            return FloatViT(model, channels, height, inputs[0].name, fixed_batch)
    fail(f"a ViT with these weights (hidden {dim}, {layers} layers, MLP {mlp}, {labels} labels) does not "
         "reproduce its logits for any head count")


def _linears(g, consts) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Every weight GEMM in graph order as (weight [in, out], bias or None)."""
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for n in g.node:
        if n.op_type == "MatMul" and n.input[1] in consts and consts[n.input[1]].ndim == 2:
            bias = None
            for c in consumers.get(n.output[0], []):
                if c.op_type == "Add":
                    other = c.input[0] if c.input[1] == n.output[0] else c.input[1]
                    if other in consts and consts[other].ndim == 1:
                        bias = consts[other]
            out.append((consts[n.input[1]], bias))
        elif n.op_type == "Gemm" and n.input[1] in consts:
            attrs = {a.name: a.i for a in n.attribute if a.name in ("transA", "transB")}
            wt = consts[n.input[1]]
            out.append((wt.T if attrs.get("transB") else wt, consts.get(n.input[2]) if len(n.input) > 2 else None))
    return out


def _head_candidates(dim: int, consts: dict) -> list[int]:
    """Head counts to try: those whose head size appears as a graph constant first, then every divisor."""
    seen = {int(v) for a in consts.values() if a.dtype.kind == "i" and a.size <= 8 for v in a.ravel()}
    divisors = [h for h in range(1, dim + 1) if dim % h == 0]
    return sorted(divisors, key=lambda h: (dim // h not in seen, abs(dim // h - 64)))


def _build(config: dict, heads: int, weights: dict):
    import torch
    from transformers import ViTConfig, ViTForImageClassification
    model = ViTForImageClassification(ViTConfig(num_attention_heads=heads, **config)).eval()
    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ln = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float32))  # noqa: E731  (copies: onnx arrays are read-only)
    emb = model.vit.embeddings
    with torch.no_grad():
        emb.patch_embeddings.projection.weight.copy_(t(weights["conv"][0]))
        emb.patch_embeddings.projection.bias.copy_(t(weights["conv"][1]))
        emb.cls_token.copy_(t(weights["cls"]))
        emb.position_embeddings.copy_(t(weights["pos"]))
        for m, (wt, b) in zip(lin, weights["linears"], strict=True):    # registration order = graph order
            m.weight.copy_(t(wt.T))
            m.bias.copy_(t(b))
        for m, (scale, bias) in zip(ln, weights["norms"], strict=True):
            m.weight.copy_(t(scale if scale is not None else np.ones(config["hidden_size"])))
            m.bias.copy_(t(bias if bias is not None else np.zeros(config["hidden_size"])))
    return model


def _onnx_logits(proto, input_name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: x})[0]


def _reproduces(model, x: np.ndarray, ref: np.ndarray) -> bool:
    """Whether ``model`` gives the ONNX file's logits ``ref`` on ``x``, to float tolerance."""
    import torch
    with torch.no_grad():
        got = model(torch.from_numpy(x)).logits.numpy()
    return got.shape == ref.shape and bool(np.abs(got - ref).max() <= 1e-3 * max(1.0, float(np.abs(ref).max())))
