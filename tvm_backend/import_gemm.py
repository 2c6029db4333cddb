"""The importer's GEMM patterns: each integer GEMM of the graph, with its epilogue, as one kernel.

Four patterns (found by ``importer.to_relax``), each in one of two forms:

* ``"vnni"`` (x86, ``gemm``): operands in ``[N/16, K/g, 16, g]`` panels for
  ``vpdpbusd``/``vpdpwssd``; int8 activations enter shifted by +128 with the
  ``−128·Σw`` compensation folded into the bias (inside ``gemm.word_gemm()``,
  for CPUs without VNNI, the int8 GEMMs take the int16 ``vpdpwssd`` form
  instead: no shift, no compensation, int16 panels for ``vpmaddwd``; inside
  ``gemm.int8_gemm(arm.SDOT)``, for AArch64, signed int8 as they are, no
  shift, no compensation, int8 panels for ``sdot``);
* ``"tiled"`` (CUDA, ``gpu_gemm``): plain ``[N, K]`` operands padded to
  whole thread-block tiles, signed int8 straight into ``__dp4a``.

| pattern | graph | vnni | tiled |
|---|---|---|---|
| ``linear`` | ``MatMulInteger(x, W const)`` | W packed offline, bias folded | W transposed + padded offline |
| ``keys`` | ``MatMulInteger(q, Transpose(k))`` | keys packed in-graph + compensation | keys read as ``[N, K]`` |
| ``probs_values`` | ``MatMul(Cast(p16), Cast(v))`` | values packed as int16 (``vpdpwssd``) | int32 multiply-adds |
| ``bmm`` | any other activation GEMM | ``gemm.int_bmm_te`` | ``tiled_gemm_te`` (``"kn"``) |

The epilogue (``Cast → [Add bias] → [Requant|Rescale]``, then possibly a
tabulated ShiftGELU chain) is the same for both forms: ``make_epilogue``.
"""
from __future__ import annotations

import numpy as np
from tvm import relax

from ..ops.gemm import check_accumulator_fits
from ..quantize.onnx_functions import DOMAIN
from .graph_facts import kernel_args, narrowest_int
from .kernels import EPILOGUE_VALUES, residual_value

GEMM_FORMS = ("vnni", "tiled")


def split_probs_apply(probs_range: tuple[int, int], values_range: tuple[int, int], width: int) -> bool:
    """Whether ``A·V`` splits into two u8 × s8 products (``gemm.split_probs_gemm_te``): probabilities in
    ``[0, 2**16)`` (two unsigned bytes each), values in int8, heads a multiple of 32 wide."""
    from .gemm import AMX_COLS
    return (0 <= probs_range[0] and probs_range[1] < (1 << 16) and -128 <= values_range[0]
            and values_range[1] <= 127 and width % AMX_COLS == 0)


def split_probs_tiled_apply(probs_range: tuple[int, int], values_range: tuple[int, int], k: int) -> bool:
    """Whether ``A·V`` is one int8 × int8 tensor-core GEMM (``gpu_gemm.split_probs_tiled_te``): probabilities
    in ``[0, 2**15)`` (two signed bytes), int8 values, and ``3·K·2**14`` inside int32."""
    from .gpu_gemm import PROBS_LIMIT
    return (0 <= probs_range[0] and probs_range[1] < PROBS_LIMIT and -128 <= values_range[0]
            and values_range[1] <= 127 and 3 * k * (1 << 14) < (1 << 31))


class GemmEmitter:
    """Emit the GEMM patterns into ``bb`` in one ``form``; ``static``/``val`` are the importer's constants and values."""

    def __init__(self, bb, form: str, static: dict, val):
        if form not in GEMM_FORMS:
            raise ValueError(f"unknown GEMM form {form!r}; choose one of {GEMM_FORMS}")
        self.bb, self.form, self.static, self.val = bb, form, static, val
        self._column_padded: dict = {}        # sliced output -> (padded output, columns): see column_padded

    # -- the four patterns -------------------------------------------------------------------
    def linear(self, x, w_kn: np.ndarray, chain: list, consts: dict, table=None, residual=None):
        """``x @ W (+ b)``: W constant ``[K, N]``."""
        check_accumulator_fits(w_kn.shape[0], f"a linear layer ({w_kn.shape[0]} → {w_kn.shape[1]})")
        n = w_kn.shape[1]
        add = next((c for c in chain if c.op_type == "Add"), None)
        bias = consts[add.input[1]] if add is not None else None
        if self.form == "vnni":
            from .gemm import folded_bias, import_tile, int8_gemm_dot, pack_linear_weight
            from .x86 import VPDPBUSD
            dot = int8_gemm_dot()
            if dot is not VPDPBUSD:         # signed operands (the 16-bit form, AArch64's sdot): no compensation
                wp = relax.const(pack_linear_weight(w_kn.astype(dot.b_dtype), import_tile(n)[1], dot.group),
                                 dot.b_dtype)
                b = None if bias is None else relax.const(
                    np.broadcast_to(bias.astype(np.int64), (n,)).copy(), "int64")
                return self._vnni(x, wp, b, n, chain, table, dot=dot, residual=residual, name="int8_linear")
            lookup = self._byte_lookup("int8_linear", n, table, self._epilogue_args(chain))
            wp = relax.const(pack_linear_weight(w_kn, import_tile(n, lookup)[1]), "int8")
            fb = relax.const(folded_bias(w_kn, bias), "int64")
            return self._vnni(x, wp, fb, n, chain, table, residual=residual, lookup=lookup)
        from .gpu_gemm import pad_weight
        b = None if bias is None else relax.const(np.broadcast_to(bias.astype(np.int64), (n,)).copy(), "int64")
        return self._tiled(x, relax.const(pad_weight(w_kn), "int8"), b, "nk", chain, table, n=n, residual=residual)

    def wide_linear(self, x, w_kn: np.ndarray, chain: list, consts: dict, table=None, residual=None):
        """``x @ W (+ b)`` for a 16-bit activation (int64-typed) of a widened layer (``quantize.layout``):
        int64 accumulation in the tiled form on every target (no int8 dot-product instruction applies)."""
        from .gpu_gemm import pad_weight, tiled_gemm_te
        n = w_kn.shape[1]
        add = next((c for c in chain if c.op_type == "Add"), None)
        bias = consts[add.input[1]] if add is not None else None
        b = None if bias is None else relax.const(np.broadcast_to(bias.astype(np.int64), (n,)).copy(), "int64")
        w = relax.const(pad_weight(w_kn.astype(np.int64)), "int64")
        return self._emit(x, w, b, chain, table, "int16_linear",
                          lambda xt, wt, bt, ep, od: tiled_gemm_te(xt, wt, bt, "nk", ep, od, n=n, acc_dtype="int64"),
                          plain_dtype="int64", residual=residual)

    def keys(self, x, keys_nk, chain: list, table=None, residual=None):
        """``x @ keysᵀ`` for an int8 activation ``keys`` ``[..., N, K]`` (attention's ``Q·Kᵀ``)."""
        check_accumulator_fits(int(self.bb.normalize(keys_nk).ty.shape[-1]), "attention's Q·Kᵀ")
        if self.form == "tiled":
            return self._tiled(x, keys_nk, None, "nk", chain, table, residual=residual)
        from .gemm import int8_gemm_dot, pack_panels_te, panel_compensation_te
        from .x86 import VPDPBUSD
        dot = int8_gemm_dot()
        wp = self.bb.emit_te(lambda kt: pack_panels_te(kt, "nk", dot), keys_nk, primfunc_name_hint="pack_panels")
        fb = None if dot is not VPDPBUSD else \
            self.bb.emit_te(panel_compensation_te, keys_nk, primfunc_name_hint="panel_compensation")
        n = int(self.bb.normalize(keys_nk).ty.shape[-2])
        width = self._padded_width(wp, n, chain, table, residual)
        out = self._vnni(x, wp, fb, width, chain, table, dot=dot, residual=residual, name="int8_linear")
        if width == n:
            return out
        rank = len(self.bb.normalize(out).ty.shape)
        sliced = self.bb.emit(relax.op.strided_slice(out, [rank - 1], [0], [n]))
        self._column_padded[sliced] = (out, n)
        return sliced

    def column_padded(self, value):
        """``(padded, n)`` when ``value`` is the first ``n`` columns of a kernel output ``padded`` (a ``Q·Kᵀ``
        computed on its padding columns, ``_padded_width``), else None: a row kernel may read ``padded``
        directly (``kernels.shiftmax_te(cols=n)``), leaving the slice dead."""
        return self._column_padded.get(value)

    def _padded_width(self, wp, n: int, chain: list, table, residual) -> int:
        """The output width of a ``Q·Kᵀ`` kernel: ``n``, or the panels' padded width when the epilogue can
        run on every padded column (x86 form outside the AMX layout, a requant whose constants do not vary
        along the columns, no table, no residual).

        Computing the padding columns too (zero keys and zero compensation: their logits are the requant
        of 0, and are never read) lets the epilogue run as whole 16-lane vectors. With ``n`` columns (197 tokens), the
        last panel's column predicate made LLVM run the whole epilogue element by element. The kernel's
        output is then sliced back to ``n`` columns; a Shiftmax reading it reads the padded output in place
        (``column_padded``), and the slice is dropped as dead code.
        """
        from .gemm import amx_layout_active
        from .x86 import LANES
        padded = int(self.bb.normalize(wp).ty.shape[-4]) * LANES
        if padded == n or amx_layout_active() or table is not None or residual is not None:
            return n
        args = self._epilogue_args(chain)
        per_column = [a for a in args if not isinstance(a, int)
                      and int(self.bb.normalize(a).ty.shape[-1]) != 1] if args else []
        return n if per_column else padded

    def probs_values(self, probs, values, chain: list, table=None, residual=None, ranges=None):
        """``A·V``: 16-bit probabilities ``[..., T, T]`` × int8 values ``[..., T, N]``; ``ranges`` = the
        ``(lo, hi)`` bounds of both operands where known. In the AMX layout, with probabilities in
        ``[0, 2**16)`` and int8 values, as two u8 × s8 GEMMs (``gemm.split_probs_gemm_te``); else
        ``vpdpwssd`` on int16 panels. In the CUDA form under ``gpu_gemm.imma_layout()``, with
        probabilities in ``[0, 2**15)``, as one int8 × int8 GEMM for tensor cores
        (``gpu_gemm.split_probs_tiled_te``); else the plain tiled GEMM (int32 multiply-adds)."""
        if self.form == "tiled":
            from .gpu_gemm import imma_layout_active, split_probs_tiled_te
            k = int(self.bb.normalize(probs).ty.shape[-1])
            if imma_layout_active() and ranges is not None and split_probs_tiled_apply(*ranges, k):
                return self._emit(probs, values, None, chain, table, "int8x2_attention_av",
                                  lambda xt, wt, bt, ep, od: split_probs_tiled_te(xt, wt, ep, od), residual=residual)
            return self._tiled(probs, values, None, "kn", chain, table, residual=residual)
        from .gemm import amx_layout_active, pack_panels_te, split_probs_gemm_te
        from .x86 import VPDPBUSD, VPDPWSSD
        n = int(self.bb.normalize(values).ty.shape[-1])
        if amx_layout_active() and ranges is not None and split_probs_apply(*ranges, n):
            check_accumulator_fits(int(self.bb.normalize(probs).ty.shape[-1]), "attention's A·V (two byte GEMMs)")
            vp = self.bb.emit_te(lambda v: pack_panels_te(v, "kn", VPDPBUSD), values,
                                 primfunc_name_hint="pack_values")
            return self._emit(probs, vp, None, chain, table, "int16_gemm",
                              lambda xt, wt, bt, ep, od: split_probs_gemm_te(xt, wt, n, ep, od), residual=residual)
        vp = self.bb.emit_te(lambda v: pack_panels_te(v, "kn", VPDPWSSD), values, primfunc_name_hint="pack_values")
        return self._vnni(probs, vp, None, int(self.bb.normalize(values).ty.shape[-1]), chain, table, dot=VPDPWSSD,
                          residual=residual)

    def bmm(self, a, b):
        """``a @ b`` over the last two axes, int32, no epilogue."""
        if self.form == "tiled":
            from .gpu_gemm import tiled_gemm_te
            return self.bb.emit_te(lambda at, bt: tiled_gemm_te(at, bt, None, "kn", out_dtype="int32"), a, b,
                                   primfunc_name_hint="int_bmm")
        from .gemm import import_tile, int_bmm_te
        mr, nr = import_tile(int(self.bb.normalize(b).ty.shape[-1]))
        return self.bb.emit_te(lambda at, bt: int_bmm_te(at, bt, mr, nr), a, b, primfunc_name_hint="int_bmm")

    # -- shared plumbing ---------------------------------------------------------------------
    def _byte_lookup(self, name: str, n: int, table, requant_args: list) -> bool:
        """Whether a table after this kernel's requant is looked up as a byte table (``byte_table``): an
        int8 u8 × s8 kernel of the x86 form, imported for ``vpermi2b`` lookups (``gemm.byte_lookup_active``:
        the AMX layout, or a VBMI target's VNNI schedule), ``n`` a multiple of 32 columns, a requant to the
        whole int8 range, a 256-entry int8 table."""
        from .byte_table import LOOKUP_LANES, byte_table_applies
        from .gemm import byte_lookup_active
        low, high = requant_args[-2:] if len(requant_args) >= 2 else (None, None)
        return (self.form == "vnni" and name == "int8_linear" and table is not None and byte_lookup_active()
                and n % LOOKUP_LANES == 0 and isinstance(low, int) and isinstance(high, int)
                and byte_table_applies(table[0], table[1], low, high))

    def _vnni(self, x, wp, fb, n: int, chain: list, table, dot=None, residual=None, lookup: bool = False,
              name: str | None = None):
        """The x86 form's kernel; ``lookup``: a linear layer whose table is a byte table (``_byte_lookup``);
        ``name``: the kernel's name (default: by ``dot``)."""
        from .gemm import import_tile, packed_gemm_te
        from .x86 import VPDPBUSD
        dot = dot or VPDPBUSD
        name = name or ("int8_linear" if dot is VPDPBUSD else "int16_gemm")
        mr, nr = import_tile(n, lookup)
        return self._emit(x, wp, fb, chain, table, name,
                          lambda xt, wt, bt, ep, od, lut=None: packed_gemm_te(xt, wt, bt, mr, n, dot, epilogue=ep,
                                                                              out_dtype=od, byte_table=lut, nr=nr),
                          residual=residual, byte_lookup=lookup)

    def _tiled(self, x, w, bias, layout: str, chain: list, table, n=None, residual=None):
        from .gpu_gemm import tiled_gemm_te
        int8 = str(self.bb.normalize(x).ty.dtype) == "int8"
        return self._emit(x, w, bias, chain, table, "int8_linear" if int8 else "int16_gemm",
                          lambda xt, wt, bt, ep, od: tiled_gemm_te(xt, wt, bt, layout, ep, od, n=n), residual=residual)

    def _epilogue_args(self, chain: list) -> list:
        """The kernel arguments of the chain's closing requant/rescale (``graph_facts.kernel_args``), or []."""
        rq = chain[-1] if chain and chain[-1].domain == DOMAIN else None
        return kernel_args(rq.op_type, list(rq.input[1:]), self.static, self.val) if rq is not None else []

    def _emit(self, x, w, bias, chain: list, table, name: str, make, plain_dtype=None, residual=None,
              byte_lookup: bool = False):
        """One kernel: ``make(x, w, bias, epilogue, out_dtype)`` with the chain's requant (and the
        ``table = (values, lo)`` lookup ``table[v − lo]`` after it) as the epilogue. With ``residual =
        (h, skip_args, lo, hi)`` the chain ends in the branch's ``Rescale`` and the epilogue finishes the
        residual add it feeds (``graph_facts.residual_after``):
        ``saturate(rescale(z) + rescale(h[idx]; skip_args), lo, hi)``, stored in the narrowest type of
        ``[lo, hi]`` (int16 for the residual stream). ``byte_lookup``: the table is a byte table looked up
        by ``make``'s last argument (``_byte_lookup``), not gathered in the epilogue."""
        rq = chain[-1] if chain and chain[-1].domain == DOMAIN else None
        args = self._epilogue_args(chain)
        skip_args, (lo, hi) = (residual[1], residual[2:]) if residual else ([], (None, None))
        tensors = [a for a in args + skip_args if not isinstance(a, int)]
        # a saturating requant's output is stored in the narrowest type that holds it (int8 for
        # 8-bit activations: an eighth of the memory traffic of int64) and widened by its readers
        store = narrowest_int(args[-2], args[-1]) if rq is not None and rq.op_type == "Requant" else "int64"
        if residual:
            tensors.append(residual[0])
            store = narrowest_int(lo, hi)
        if byte_lookup:
            tensors.append(relax.const(table[0]))
            store = "int8"
        elif table is not None:      # int32 entries: on x86 the lookup vectorizes as a 16-lane gather
            tensors.append(relax.const(table[0].astype(np.int32)))
            store = str(table[0].dtype)
        extra = [] if bias is None else [bias]

        def kernel(xt, wt, *rest):
            bt, tens = (rest[0], rest[1:]) if bias is not None else (None, rest)
            if rq is None:
                return make(xt, wt, bt, None, plain_dtype or ("int64" if chain else "int32"))
            it = iter(tens)
            bound = [a if isinstance(a, int) else next(it) for a in args]
            fn = EPILOGUE_VALUES[rq.op_type]
            if residual:
                skip = [a if isinstance(a, int) else next(it) for a in skip_args]
                ht = next(it)
                epilogue = lambda z, idx: residual_value(fn(z, idx, *bound), ht, idx, skip, lo, hi)  # noqa: E731
            elif table is None or byte_lookup:
                epilogue = lambda z, idx: fn(z, idx, *bound)  # noqa: E731
            else:
                lut = next(it)
                epilogue = lambda z, idx: lut[(fn(z, idx, *bound) - table[1]).astype("int32")]  # noqa: E731
            if byte_lookup:
                return make(xt, wt, bt, epilogue, store, next(it))
            return make(xt, wt, bt, epilogue, store)
        suffix = ("_requant" + ("_table" if table is not None else "") if rq else "") + ("_residual" if residual else "")
        return self.bb.emit_te(kernel, x, w, *extra, *tensors, primfunc_name_hint=name + suffix)
