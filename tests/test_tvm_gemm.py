"""The scheduled GEMM kernels, the ShiftGELU table and the lowered module, against ``ops``."""
import numpy as np
import pytest
import torch

from intvit import ops
from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend import gemm, schedules
from intvit.tvm_backend.build import compile_onnx, lower, resolve_target
from intvit.tvm_backend.importer import to_relax
from intvit.tvm_backend.inspect_ir import float_ops_in_integer_region
from intvit.tvm_backend.x86 import VPDPWSSD, target_has_vnni
from conftest import assert_matches_reference
from test_onnx_export import adversarial_inputs

HOST_HAS_VNNI = target_has_vnni(__import__("tvm").target.Target(resolve_target("llvm")))
NO_VNNI = {"kind": "llvm", "mcpu": "haswell"}           # AVX2 only: the generic schedule


def test_unsigned_shift_identity_is_exact_at_the_extremes():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (7, 300), generator=g)
    x[0], x[1] = -128, 127
    w = torch.randint(-128, 128, (24, 300), generator=g)
    w[0], w[1] = -128, 127
    b = torch.randint(-2**20, 2**20, (24,), generator=g)
    assert torch.equal(ops.int_linear_unsigned(x, w, b), ops.int_linear(x, w, b))
    assert torch.equal(ops.unsigned_shift_compensation(w)[:2], torch.tensor([128 * 128 * 300, -128 * 127 * 300]))


def _run_prim(func, target, *arrays, out_shape, out_dtype):
    import tvm
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=tvm.target.Target(target))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays] + [tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)]
    lib["main"](*args)
    return args[-1].numpy()


@pytest.mark.parametrize("vnni", [pytest.param(True, marks=pytest.mark.skipif(
    not HOST_HAS_VNNI, reason="this CPU has no AVX-512 VNNI")), False])
@pytest.mark.parametrize("lead,rows,k,n", [((2,), 13, 30, 20), ((), 197, 64, 48), ((3,), 5, 8, 97)])
def test_packed_u8_gemm_equals_ops_for_ragged_shapes(vnni, lead, rows, k, n):
    """Rows, K and N that are not multiples of the tile, the 4-byte group or 16 lanes."""
    from tvm import te
    rng = np.random.default_rng(rows + k + n)
    x = rng.integers(-128, 128, (*lead, rows, k)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    x[..., 0, :], w[0] = -128, 127
    bias = rng.integers(-2**20, 2**20, n)
    mr, nr = gemm.linear_tile(n)
    wp = gemm.pack_linear_weight(w, nr)
    xt = te.placeholder(x.shape, "int8", name="x")
    wt = te.placeholder(wp.shape, "int8", name="w")
    bt = te.placeholder((n,), "int64", name="b")
    func = te.create_prim_func([xt, wt, bt, gemm.packed_gemm_te(xt, wt, bt, mr, n)])
    got = _run_prim(schedules.schedule_gemm(func, vnni), resolve_target("llvm") if vnni else NO_VNNI,
                    x, wp, gemm.folded_bias(w, bias), out_shape=(*lead, rows, n), out_dtype="int64")
    ref = ops.int_linear(torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(bias))
    assert np.array_equal(got, ref.numpy())


@pytest.mark.parametrize("vnni", [pytest.param(True, marks=pytest.mark.skipif(
    not HOST_HAS_VNNI, reason="this CPU has no AVX-512 VNNI")), False])
def test_in_graph_panels_match_offline_packing_and_s16_gemm_is_exact(vnni):
    """``pack_panels_te`` lays out activations exactly as ``pack_linear_weight`` lays out weights, and
    the 16-bit (A·V) GEMM on them equals the exact product for full-range probabilities."""
    from tvm import te
    rng = np.random.default_rng(5)
    keys = rng.integers(-128, 128, (2, 21, 12)).astype(np.int8)       # [heads, N=tokens, K=dh]
    kt = te.placeholder(keys.shape, "int8", name="k")
    packed = _run_prim(te.create_prim_func([kt, gemm.pack_panels_te(kt, "nk")]), NO_VNNI, keys,
                       out_shape=(2,) + gemm.pack_linear_weight(keys[0].T, gemm.linear_tile(21)[1]).shape,
                       out_dtype="int8")
    for h in range(2):
        assert np.array_equal(packed[h], gemm.pack_linear_weight(keys[h].T.copy(), gemm.linear_tile(21)[1]))

    probs = rng.integers(0, 2**15, (2, 19, 21)).astype(np.int16)
    probs[0, 0] = 2**15 - 1
    values = rng.integers(-128, 128, (2, 21, 64)).astype(np.int8)       # [heads, K=tokens, N=dh]
    mr, nr = gemm.linear_tile(64)
    pt = te.placeholder(probs.shape, "int16", name="p")
    vt = te.placeholder(values.shape, "int8", name="v")
    out = gemm.packed_gemm_te(pt, gemm.pack_panels_te(vt, "kn", VPDPWSSD), None, mr, 64, VPDPWSSD)
    func = schedules.schedule_gemm(te.create_prim_func([pt, vt, out]), vnni)
    got = _run_prim(func, resolve_target("llvm") if vnni else NO_VNNI, probs, values, out_shape=(2, 19, 64),
                    out_dtype="int64")
    assert np.array_equal(got, probs.astype(np.int64) @ values.astype(np.int64))


def _gelu_chain_table(qmodel, op_type: str):
    """The first ``op_type`` node of ``qmodel``'s ONNX graph, the elementwise chain the importer tabulates
    from it, and that chain's compile-time table over every int8 input."""
    from onnx import numpy_helper

    from intvit.tvm_backend.tabulate import build_table, tabulable_chain
    proto = to_onnx(qmodel)
    static = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    consumers = {}
    for node in proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    node = next(n for n in proto.graph.node if n.op_type == op_type)
    chain = tabulable_chain(node, consumers, static)
    return node, chain, build_table(chain, static, -128, 127)


def test_shift_gelu_table_equals_ops_on_every_input(tiny_qvit_shiftgelu):
    """The compile-time table of the ShiftGELU → requant → int8 chain is ops applied to each of the 256 inputs."""
    import onnx
    tiny_qvit = tiny_qvit_shiftgelu
    gelu, chain, table = _gelu_chain_table(tiny_qvit, "ShiftGELU")
    assert [n.op_type for n in chain] == ["ShiftGELU", "Requant", "Cast"]
    assert chain[-1].attribute[0].i == onnx.TensorProto.INT8
    x = torch.arange(-128, 128)
    pre = gelu.name.split("gelu/")[0]
    expected = ops.requantize(ops.shift_gelu(x, int(tiny_qvit.p(pre + "gelu.x0")), 8),
                              tiny_qvit.p(pre + "gelu.rq.m"), tiny_qvit.p(pre + "gelu.rq.e"), 8,
                              tiny_qvit.p(pre + "gelu.rq.offset"))          # the GELU output's zero point
    assert tiny_qvit.zeros[pre + "gelu"] != 0
    assert table.dtype == np.int8 and np.array_equal(table, expected.numpy())


def test_gelu_lookup_chain_tabulates_to_the_stored_table(tiny_qvit):
    """With the default GELU table, the chain the importer folds into fc1 is ``Lookup → Cast(int8)``, and its
    compile-time table is the model's stored table itself."""
    import onnx
    lookup, chain, table = _gelu_chain_table(tiny_qvit, "Lookup")
    assert [n.op_type for n in chain] == ["Lookup", "Cast"] and chain[-1].attribute[0].i == onnx.TensorProto.INT8
    pre = lookup.name.split("gelu/")[0]
    assert table.dtype == np.int8 and np.array_equal(table, tiny_qvit.p(pre + "gelu.table").numpy())


def test_generic_schedule_without_vnni_is_bit_exact_on_a_whole_model(tiny_qvit):
    """The fallback for CPUs without AVX-512 VNNI (same kernels, plain int32 multiply-adds)."""
    proto = to_onnx(tiny_qvit)
    x = adversarial_inputs(16, 3, 32, tiny_qvit.scales["input"])
    assert_matches_reference(tiny_qvit, x, lambda batch: compile_onnx(proto, NO_VNNI, batch=batch), (1, 8))


def test_lowered_and_scheduled_module_is_integer_only_and_stores_activations_narrow(tiny_qvit):
    import tvm
    target = tvm.target.Target(resolve_target("llvm"))
    mod = lower(to_relax(to_onnx(tiny_qvit), batch=2), target)
    assert float_ops_in_integer_region(mod) == []
    gemms = {gv.name_hint: f for gv, f in mod.functions.items() if gv.name_hint.startswith("int8_linear")}
    assert any(name.endswith("_table") for name in gemms)                # ShiftGELU folded into fc1
    out_dtypes = {str(f.params[-1].ty.dtype) for name, f in gemms.items() if "_requant" in name}
    assert "int8" in out_dtypes and "int64" in out_dtypes                # qkv/fc1 int8; residual branches int64


def test_plain_batched_gemm_for_other_activation_products():
    """``int_bmm_te``, the kernel for activation GEMMs that match neither attention pattern."""
    from tvm import te
    rng = np.random.default_rng(3)
    a = rng.integers(-2**15, 2**15, (3, 11, 37)).astype(np.int32)
    b = rng.integers(-128, 128, (3, 37, 21)).astype(np.int32)
    mr, nr = gemm.linear_tile(21)
    at, bt = te.placeholder(a.shape, "int32", name="a"), te.placeholder(b.shape, "int32", name="b")
    func = schedules.schedule_gemm(te.create_prim_func([at, bt, gemm.int_bmm_te(at, bt, mr, nr)]), vnni=True)
    got = _run_prim(func, resolve_target("llvm"), a, b, out_shape=(3, 11, 21), out_dtype="int32")
    assert np.array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def _run_te(build, inputs):
    """Compile ``build(*placeholders)`` for the host and run it on numpy ``inputs``."""
    from tvm import te
    holders = [te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(inputs)]
    out = build(*holders)
    func = te.create_prim_func(holders + [out])
    return _run_prim(func, resolve_target("llvm"), *inputs, out_shape=[int(d) for d in out.shape],
                     out_dtype=str(out.dtype))


@pytest.mark.parametrize("compile_time_constants", [True, False])
def test_shiftmax_and_shift_gelu_kernels_equal_ops_on_both_shiftexp_paths(compile_time_constants):
    """Whole models now reach Shiftmax only with int16 logits and constants as literals, and ShiftGELU only
    as a table; the int64 ShiftExp path (constants as tensors, int64 logits) and the plain ShiftGELU
    kernel are held to ``ops`` here, at extreme logits."""
    from intvit.tvm_backend import kernels
    x0, n = ops.shiftexp_x0(2**-6), ops.SHIFTMAX_N
    ops.check_shiftexp_constants(x0, n)
    rng = np.random.default_rng(1)
    logits = rng.integers(-2**15, 2**15, (3, 5, 40)).astype(np.int64)
    logits[0, 0], logits[0, 1, :3] = 2**15 - 1, -2**15
    consts = [x0, n * x0, n, 1 << (63 - 16)]
    for dtype in ("int64", "int16"):
        x = logits.astype(dtype)
        if compile_time_constants:
            got = _run_te(lambda t: kernels.shiftmax_te(t, *consts), [x])
        else:
            arrs = [np.array(c, np.int64) for c in consts]
            got = _run_te(lambda t, *c: kernels.shiftmax_te(t, *c), [x] + arrs)
        assert np.array_equal(got, ops.shiftmax(torch.from_numpy(logits), x0, 16, n).numpy())

    gx0 = ops.shiftexp_x0(1.702 * 2**-4)
    acts = np.arange(-128, 128, dtype=np.int64).reshape(4, 64)
    gconsts = [gx0, ops.SHIFTGELU_N * gx0, ops.SHIFTGELU_N, 1 << (63 - 8)]
    if compile_time_constants:
        got = _run_te(lambda t: kernels.shift_gelu_te(t, *gconsts), [acts])
    else:
        got = _run_te(lambda t, *c: kernels.shift_gelu_te(t, *c), [acts] + [np.array(c, np.int64) for c in gconsts])
    assert np.array_equal(got, ops.shift_gelu(torch.from_numpy(acts), gx0, 8).numpy())


@pytest.mark.parametrize("x0", [-1, -3, -34192, -65535])
def test_shift_exp_kernel_equals_ops_on_every_input(x0):
    """The 32-bit ShiftExp tail (constants as literals: the unsigned quotient ``(−x)/(−x0)``) on every
    ``x − max`` a 16-bit logit row can give, ``[−2**17, 0]``, for ``x0`` from −1 to the most negative
    ``ops.check_shiftexp_constants`` allows with n = 15 (−65535), against ``ops.shift_exp``."""
    from tvm import te
    from intvit.tvm_backend import kernels
    n = ops.SHIFTMAX_N
    ops.check_shiftexp_constants(x0, n)
    xs = np.arange(-2**17, 1, dtype=np.int32)
    got = _run_te(lambda t: te.compute(t.shape, lambda i: kernels._shift_exp(t[i], x0, n * x0, n), name="e"),
                  [xs])
    assert np.array_equal(got, ops.shift_exp(torch.from_numpy(xs.astype(np.int64)), x0, n).numpy())


def test_table_lookup_kernel_reads_narrow_inputs():
    from intvit.tvm_backend.tabulate import lookup_te
    table = np.arange(256, dtype=np.int32)[::-1].copy() - 100
    x = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    got = _run_te(lambda t, tab: lookup_te(t, tab, -128), [x, table])
    assert np.array_equal(got, table[x.astype(np.int64) + 128])
