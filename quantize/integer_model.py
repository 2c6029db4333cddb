"""``IntegerViT``: the integer-only vision transformer, in two execution modes.

* ``mode = "int"`` (default) — ``forward_int`` runs the whole network on
  integer tensors with the kernels of ``intvit.ops``; only the input quantizer
  (float image → int8) and the final dequantize (int32 logits → float) touch
  floating point. This is the reference the ONNX export and the TVM module
  must match bit for bit.
* ``mode = "fake"`` — fake quantization for QAT: the float network
  (``models.spec.float_forward``) with every weight and activation quant point
  rounded to its integer grid (straight-through gradients). Its input
  quantizer, patch-embedding GEMM and first residual stream are exactly the
  integer mode's values times their scales; after the first nonlinearity the
  two differ by the I-ViT approximations (ShiftGELU, Shiftmax, I-LayerNorm).

The integer dataflow of one block (I-ViT Fig. 2), scales in brackets::

    a  = requant(ILN(h), γ, β)                      int8  [s_norm1]
    q,k,v = requant(a @ Wqkvᵀ + b)                   int8  [s_q, s_k, s_v]
    l  = requant(q @ kᵀ)  (1/√d folded in)           int16 [s_logits]
    p  = Shiftmax(l)                                 int16 [2^-15]
    c  = requant(p @ v)                              int8  [s_ctx]
    h  = h·(s_h/s_r1) + (c @ Woᵀ + b)·(...)          int16 [s_resid1]
    a  = requant(ILN(h), γ, β)                      int8  [s_norm2]
    f  = requant(a @ W1ᵀ + b)                        int8  [s_fc1]
    g  = T[f + 128]  (or requant(ShiftGELU(f)))      int8  [s_gelu]
    h  = h·(...) + (g @ W2ᵀ + b)·(...)               int16 [s_resid2]
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..models.spec import ViTSpec, check_input, check_spec, float_forward, linear_layers
from .fake_quant import fake_quant, fake_quant_weight
from .layout import check_zero_points, point_bits
from .onnx_export import export_onnx
from .qparams import act_grids, freeze, output_point, param_domain_error, stand_in_spec
from .serialize import read_integer_vit, save_integer_vit

MODES = ("int", "fake", "float")


class FloatWeightsMissingError(ValueError):
    """The operation needs the float weights, which the model's file did not keep."""


class IntegerViT(nn.Module):
    """An integer-only ViT built from a ``ViTSpec`` and calibrated clipping ranges."""

    def __init__(self, spec: ViTSpec, amax: dict[str, float], meta: dict | None = None):
        super().__init__()
        check_spec(spec)
        self.spec = spec
        self.amax = dict(amax)
        self.meta = dict(meta or {})
        self.mode = "int"
        self.has_float_weights = True
        self.refreeze()

    @classmethod
    def from_integer_params(cls, spec: ViTSpec, amax: dict[str, float], meta: dict | None,
                            params: dict[str, torch.Tensor]) -> "IntegerViT":
        """An integer-mode model from its stored integer tensors, without float weights (a deployment file,
        ``save(include_float=False)``): ``spec`` gives the structure (its tensors may be shape-only, on the
        ``meta`` device). It runs, exports and compiles; fake/float modes, QAT and ``refreeze`` need the
        float weights and say so."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        check_spec(spec)
        model.spec, model.amax, model.meta, model.mode = spec, dict(amax), dict(meta or {}), "int"
        model.has_float_weights = False
        model._set_grids()
        for name, t in params.items():
            model.register_buffer(_bufname(name), t)
        return model

    # ------------------------------------------------------------------ parameters
    def _set_grids(self) -> None:
        """Each quant point's bits, scale and zero point, from the ranges (no weights needed)."""
        self.bits = point_bits(self.spec, self.meta.get("layout"))
        asymmetric = check_zero_points(self.spec, self.meta.get("asymmetric"), self.bits, self.gelu)
        self.scales, self.zeros = act_grids(self.spec, self.amax, self.bits, self.gelu, asymmetric)

    def param_layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of every integer tensor this model's structure and grids call for, by name: what
        ``freeze`` gives a stand-in spec of the same shapes (values do not matter; no float weights needed)."""
        params = freeze(stand_in_spec(self.spec), self.scales, self.meta.get("temperatures"),
                        self.meta.get("balance"), self.bits, self.gelu, self.zeros)
        return {k: (tuple(v.shape), v.dtype) for k, v in params.items()}

    def require_float_weights(self, what: str) -> None:
        if not self.has_float_weights:
            raise FloatWeightsMissingError(
                f"{what} needs the float weights, and this model was loaded from a file saved without them (for "
                "deployment); save it with include_float=True (intvit quantize --keep-float) to keep them")

    def refreeze(self) -> None:
        """Recompute every integer tensor from the float spec and the ranges."""
        self.require_float_weights("refreezing the integer tensors")
        self._set_grids()
        params = freeze(self.spec, self.scales, self.meta.get("temperatures"), self.meta.get("balance"), self.bits,
                        self.gelu, self.zeros)
        for name in list(self._buffers):
            del self._buffers[name]
        for name, t in params.items():
            self.register_buffer(_bufname(name), t)

    def p(self, name: str) -> torch.Tensor:
        return self._buffers[_bufname(name)]

    def integer_params(self) -> dict[str, torch.Tensor]:
        return {_paramname(k): v for k, v in self._buffers.items()}

    @property
    def gelu(self) -> str:
        """The GELU form (``ops.GELU_MODES``); files written before the table existed used ShiftGELU."""
        return self.meta.get("gelu", "shift")

    @property
    def has_head(self) -> bool:
        return self.spec.head is not None

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode == "int":
            return self.dequantize(self.forward_int(images))
        if self.mode == "fake":
            return self.forward_fake(images)
        if self.mode == "float":
            self.require_float_weights("float mode")
            check_input(self.spec, images)
            return float_forward(self.spec, images)
        raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """The input quantizer: float image → int8 (round half to even, saturate)."""
        check_input(self.spec, images)
        return ops.quantize_float(images.float(), self.scales["input"], 8)

    def dequantize(self, out_int: torch.Tensor) -> torch.Tensor:
        """The final dequantize: int32 logits (or int8 tokens) → float32."""
        if self.has_head:
            return (out_int.to(torch.float64) * self.p("head.out_scale")).float()
        point = output_point(self.spec)
        return ((out_int.to(torch.float64) - self.zeros[point]) * self.scales[point]).float()

    @torch.no_grad()
    def forward_int(self, images: torch.Tensor) -> torch.Tensor:
        """Integer logits (int32 accumulators) or, without a head, the int8 output tokens (the pooled tokens
        when ``spec.pooled_output``).

        Runs ``forward_int_core`` with its GEMMs evaluated through exact float64
        BLAS (``ops.float64_gemm_evaluation``: the same integers, faster on a
        CPU); ``forward_int_core`` alone is the plain int64 definition that the
        integer-only checks walk.
        """
        x = self.quantize_input(images)
        with ops.float64_gemm_evaluation():
            return self.forward_int_core(x)

    def forward_int_core(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        """Everything between the input quantizer and the final dequantize: integers only.

        ``taps``, when given, receives each block's integer attention logits
        (``"blocks.i.logits"``, ``[B, H, T, T]``) and residual-branch
        accumulators (``"blocks.i.proj"``, ``"blocks.i.fc2"``) for scale matching.
        """
        p, spec = self.p, self.spec
        h = self._embed_int(x)
        if spec.pre_norm is not None:
            h = self._layernorm_int(h, "norm_pre")            # 16 bits: the residual stream starts here
        for i, blk in enumerate(spec.blocks):
            h = self._block_int(h, f"blocks.{i}.", blk.num_heads, taps)
        out = self._layernorm_int(h, "norm") if spec.final_norm is not None else h
        if not self.has_head:
            return self._pool_int(out) if spec.pooled_output else out
        return ops.int_linear(self._pool_int(out), p("head.w"), p("head.b"))

    def _embed_int(self, x):
        """Patch-embedding GEMM, rescaled to the residual stream, plus position and prefix tokens (int16)."""
        p = self.p
        acc = ops.int_linear(ops.patchify(x, self.spec.patch_size), p("patch_embed.w"), p("patch_embed.b"))
        tok = ops.rescale(acc, p("patch_embed.rq.m"), p("patch_embed.rq.e")) + p("embed.pos")
        return ops.saturate(torch.cat([p("embed.prefix").expand(x.shape[0], -1, -1), tok], dim=1), 16)

    def _softmax_int(self, logits, pre):
        return ops.shiftmax(logits, int(self.p(pre + "softmax.x0")), out_bits=16)

    def _gelu_int(self, f, pre):
        if self.gelu == "table":
            return ops.lookup(f, self.p(pre + "gelu.table"), ops.signed_range(8)[0])
        g = ops.shift_gelu(f, int(self.p(pre + "gelu.x0")), out_bits=8)
        return self._requant(g, pre + "gelu.rq", self.bits[pre + "gelu"])

    def requant_offset(self, name: str) -> torch.Tensor | None:
        """The integer offset of the requant stored under ``name`` (a LayerNorm's β, a zero point), or None."""
        return self._buffers.get(_bufname(name + ".offset"))

    def _requant(self, z, name, bits):
        """The dyadic requant stored under ``name``, with its offset where it has one."""
        return ops.requantize(z, self.p(name + ".m"), self.p(name + ".e"), bits, self.requant_offset(name))

    def _layernorm_int(self, h, name):
        return self._requant(ops.int_layernorm(h), name, self.bits[name])

    def _linear_int(self, x, name):
        return ops.int_linear(x, self.p(name + ".w"), self.p(name + ".b"))

    def _residual_int(self, h, branch_acc, name):
        p = self.p
        return ops.residual_add(h, p(name + ".skip.m"), p(name + ".skip.e"),
                                branch_acc, p(name + ".branch.m"), p(name + ".branch.e"), 16)

    def _block_int(self, h, pre, heads, taps=None):
        tap = taps.__setitem__ if taps is not None else (lambda name, value: None)
        bsz, t, d = h.shape
        a = self._layernorm_int(h, pre + "norm1")
        qkv = self._requant(self._linear_int(a, pre + "qkv"), pre + "qkv.rq", 8)
        q, k, v = (y.reshape(bsz, t, heads, d // heads).transpose(1, 2) for y in qkv.split(d, dim=-1))
        logits = self._requant(ops.int_matmul(q, k.transpose(-1, -2)), pre + "logits.rq", 16)
        tap(pre + "logits", logits)
        probs = self._softmax_int(logits, pre)
        ctx = self._requant(ops.int_matmul(probs, v), pre + "ctx.rq", self.bits[pre + "ctx"])
        ctx = ctx.transpose(1, 2).reshape(bsz, t, d)
        branch = self._linear_int(ctx, pre + "proj")
        tap(pre + "proj", branch)
        h = self._residual_int(h, branch, pre + "resid1")
        a = self._layernorm_int(h, pre + "norm2")
        f = self._requant(self._linear_int(a, pre + "fc1"), pre + "fc1.rq", 8)
        g = self._gelu_int(f, pre)
        branch = self._linear_int(g, pre + "fc2")
        tap(pre + "fc2", branch)
        return self._residual_int(h, branch, pre + "resid2")

    def _pool_int(self, n):
        parts = []
        for item in self.spec.pool:
            if item == "cls":
                parts.append(n[:, 0])
            elif item.startswith("token"):
                parts.append(n[:, int(item[5:])])
            elif item == "mean":  # over patch tokens; the mean of int8 values stays in int8
                parts.append(ops.round_mean(n[:, self.spec.num_prefix:], dim=1)[:, 0])
            else:
                raise ValueError(f"unknown pooling {item!r}")
        return torch.cat(parts, dim=-1)

    def forward_fake(self, images: torch.Tensor) -> torch.Tensor:
        """Fake-quantized float forward (QAT); gradients flow straight through every rounding."""
        self.require_float_weights("fake-quant mode")
        check_input(self.spec, images)
        bits = self.bits

        def hook(name, x):
            return fake_quant(x, self.scales[name], bits[name], self.zeros[name])

        def wfn(name, w):
            return fake_quant_weight(w)

        return float_forward(self.spec, images, hook, wfn)

    def float_parameters(self):
        """The float tensors of the spec (train these in fake mode, then ``refreeze``)."""
        self.require_float_weights("training")
        for lin in linear_layers(self.spec).values():
            yield lin.weight
            if lin.bias is not None:
                yield lin.bias

    # ------------------------------------------------------------------ persistence
    def export_onnx(self, path, integer_input: bool = False) -> str:
        """Write the integer ONNX graph (``quantize.onnx_export``); returns the path."""
        return export_onnx(self, path, integer_input=integer_input)

    def save(self, path, include_float: bool = False) -> None:
        """Write the model to one ``.safetensors`` file (``quantize.serialize``): the integer tensors at their
        true widths, about the size of the int8 ONNX; ``include_float=True`` keeps the float weights too
        (needed to analyse, fine-tune or refreeze it later)."""
        save_integer_vit(self, path, include_float)

    @classmethod
    def load(cls, path) -> "IntegerViT":
        """A model saved with ``save``; refuses damaged files (``serialize.IntegerModelFileError``). A file
        with float weights is refrozen and must reproduce its stored integer tensors exactly."""
        stored = read_integer_vit(path)
        with stored.building():
            if not stored.float_weights:
                model = cls.from_integer_params(stored.spec, stored.amax, stored.meta, stored.int_params)
                layout = model.param_layout()
            else:
                model = cls(stored.spec, stored.amax, stored.meta)
        if not stored.float_weights:
            stored.check_layout(layout)
            stored.check_values(param_domain_error(model.integer_params(), model.bits))
            return model
        stored.check_refrozen(model.integer_params())
        return model


def _bufname(name: str) -> str:
    return name.replace(".", "__")


def _paramname(buf: str) -> str:
    return buf.replace("__", ".")

