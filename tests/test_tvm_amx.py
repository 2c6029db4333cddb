"""The AMX GEMM schedule (``tvm_backend.amx``): bit-exact against ``ops`` and the VNNI schedule, kernel and model;
and the GELU byte table (``vpermi2b``) on both schedules.

Where this CPU has no AMX the same schedules run on the AMX emulator (``amx_emulator``: the tile instructions
modelled in C, everything else the AMX build's own code), so these tests check the AMX path on every CPU with
AVX-512 VNNI and VBMI; the instructions LLVM emits for a real AMX CPU are checked by compiling for one."""
import numpy as np
import pytest
import torch

from intvit import ops
from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend import amx, amx_emulator, build, gemm, schedules
from intvit.tvm_backend.build import IsaUnavailableError, compile_onnx, resolve_target
from intvit.tvm_backend.kernels import requant_value
from intvit.tvm_backend.x86 import target_has_vbmi, target_has_vnni
from conftest import assert_matches_reference
from test_onnx_export import adversarial_inputs, session

HOST_HAS_AMX = amx.host_has_amx()
needs_amx = pytest.mark.skipif(not HOST_HAS_AMX, reason="this CPU has no AMX-INT8, or Linux refuses this process "
                                                        "the AMX tile state (arch_prctl XTILEDATA)")
HOST_HAS_VBMI_VNNI = all(f(__import__("tvm").target.Target(resolve_target("llvm"))) for f in (target_has_vnni,
                                                                                               target_has_vbmi))
EMULATOR_UNAVAILABLE = amx_emulator.unavailable_reason() or (
    None if HOST_HAS_VBMI_VNNI else "this CPU has no AVX-512 VNNI and VBMI, which an AMX module's other kernels use")
runs_amx = pytest.mark.skipif(not HOST_HAS_AMX and EMULATOR_UNAVAILABLE is not None,
                              reason=f"this CPU has no AMX and the AMX emulator cannot run: {EMULATOR_UNAVAILABLE}")
needs_emulator = pytest.mark.skipif(EMULATOR_UNAVAILABLE is not None, reason=str(EMULATOR_UNAVAILABLE))


@pytest.fixture
def amx_tiles():
    """Run the test's AMX kernels on this CPU's tiles, or, without AMX, inside ``amx_emulator.emulation()``;
    yields the name the kernels' assembly holds for ``tdpbusd`` (the instruction, or the emulator's call)."""
    if HOST_HAS_AMX:
        yield "tdpbusd\t"
    else:
        with amx_emulator.emulation():
            yield amx_emulator.PREFIX + "tdpbusd"
E = 24          # the requant shift of the kernel-level epilogue: with m < 2**12, outputs span int8, few saturate


def _compile(sch):
    import tvm
    return tvm.compile(sch.mod, target=tvm.target.Target(resolve_target("llvm")))


def _run(lib, *arrays, out_shape, out_dtype):
    import tvm
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays] + [tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)]
    lib["main"](*args)
    if amx_emulator.active():
        amx_emulator.check()        # an emulated tile instruction that would fault on the hardware fails the test
    return args[-1].numpy()


def _linear_kernel(x_shape, w_shape, n: int, mr: int):
    """``packed_gemm_te`` with a per-channel requant to int8 (``kernels.requant_value``) as its epilogue."""
    from tvm import te
    xt = te.placeholder(x_shape, "int8", name="x")
    wt = te.placeholder(w_shape, "int8", name="w")
    bt = te.placeholder((n,), "int64", name="b")
    mt = te.placeholder((n,), "int64", name="m")
    ep = lambda z, idx: requant_value(z, idx, mt, E, 1 << (E - 1), 0, -128, 127)  # noqa: E731
    return te.create_prim_func([xt, wt, bt, mt, gemm.packed_gemm_te(xt, wt, bt, mr, n, epilogue=ep, out_dtype="int8")])


@runs_amx
@pytest.mark.parametrize("lead,rows,k,n", [
    ((), 197, 384, 1152), ((), 1, 64, 16), ((8,), 197, 384, 1536), ((), 197, 1536, 384), ((), 5, 100, 1000),
    # DeiT-S fc2 at batch 8: one column chunk of 12 blocks per task, so the rows are staged inside the tasks
    ((8,), 197, 1536, 384),
    # the embedded Fashion-MNIST model: patch embedding K = 49 (7×7×1), 17 tokens (alone and ×8 folded),
    # the 10-class head on 1 and 8 rows (one 32×32 block: a single task)
    ((), 17, 49, 128), ((8,), 17, 49, 128), ((8,), 16, 49, 128), ((), 17, 128, 384), ((8,), 17, 256, 128),
    ((), 1, 128, 10), ((), 8, 128, 10), ((), 17, 49, 10)])
def test_amx_linear_kernel_equals_ops(lead, rows, k, n, amx_tiles):
    """Rows that are not whole 32-row blocks, K not a multiple of 64, N not of 32, leading axes folded into
    the rows, kernels of one task: the AMX kernel equals ``ops.requantize(ops.int_linear(...))`` at the
    int8 extremes."""
    rng = np.random.default_rng(rows + k + n)
    x = rng.integers(-128, 128, (*lead, rows, k)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    x[..., 0, :], w[0] = -128, 127
    x[..., -1, :], w[:, -1] = 127, -128
    bias = rng.integers(-2**20, 2**20, n)
    m = rng.integers(1, 2**12, n).astype(np.int64)
    mr, nr = gemm.linear_tile(n)
    wp = gemm.pack_linear_weight(w, nr, amx=True)
    assert wp.shape == (gemm.ceil_to(n, 32) // 16, gemm.ceil_to(k, 64) // 4, 16, 4)
    with gemm.amx_layout():
        func = _linear_kernel(x.shape, wp.shape, n, mr)
    import tvm
    assert amx.amx_shape(tvm.s_tir.Schedule(func)) is not None
    scheduled = schedules.schedule_gemm(func, vnni=True, amx=True)
    text = scheduled.script()
    request = "syscall" if HOST_HAS_AMX else amx_emulator.PREFIX + "arch_prctl"
    assert "ldtilecfg" in text and text.count(request) == 1      # the tile-state request at entry
    lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}),
                      target=tvm.target.Target(resolve_target("llvm")))
    assert amx_tiles in lib.mod.inspect_source("asm")
    got = _run(lib, x, wp, gemm.folded_bias(w, bias), m, out_shape=x.shape[:-1] + (n,), out_dtype="int8")
    acc = ops.int_linear(torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(bias))
    ref = ops.requantize(acc, torch.from_numpy(m), torch.tensor(E), 8).numpy()
    assert np.array_equal(got, ref)
    assert len(np.unique(ref)) > min(200, ref.size // 4)          # the outputs span int8, not just its ends


needs_vbmi = pytest.mark.skipif(not HOST_HAS_VBMI_VNNI, reason="this CPU has no AVX-512 VNNI and VBMI")


@pytest.mark.parametrize("isa", [pytest.param("amx", marks=runs_amx), pytest.param("vnni", marks=needs_vbmi)])
@pytest.mark.parametrize("lead,rows,k,n", [((8,), 197, 384, 1536), ((), 197, 384, 64), ((3,), 17, 100, 32),
                                           ((), 1, 64, 96), ((2,), 32, 64, 64)])
def test_gelu_byte_table_kernel_equals_ops(isa, lead, rows, k, n, request):
    """fc1 with its GELU table, on AMX tiles or VNNI register tiles: requant to int8, then ``ops.lookup`` in a
    256-entry int8 table, looked up 32 bytes at a time with ``vpermi2b`` (``tvm_backend.byte_table``). Rows
    that are not whole blocks or register tiles (197, 17, 1), batches (folded on AMX); every table entry is
    hit, in all four 64-entry quarters."""
    import tvm
    from tvm import te
    from intvit.tvm_backend.byte_table import BYTE_TABLE_BLOCK
    rng = np.random.default_rng(rows + k + n)
    x = rng.integers(-128, 128, (*lead, rows, k)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    x[..., 0, :], w[0] = -128, 127
    bias = rng.integers(-2**20, 2**20, n)
    m = rng.integers(1, 2**12, n).astype(np.int64)
    table = ops.gelu_table(0.05, 0.02).to(torch.int8).numpy()          # GELU of [-6.4, 6.35], saturating
    table[::7] = rng.integers(-128, 128, table[::7].shape)              # and arbitrary entries
    mr, nr = gemm.linear_tile(n, lookup=True)
    wp = gemm.pack_linear_weight(w, nr, amx=isa == "amx")
    xt, wt = te.placeholder(x.shape, "int8", name="x"), te.placeholder(wp.shape, "int8", name="w")
    bt, mt = te.placeholder((n,), "int64", name="b"), te.placeholder((n,), "int64", name="m")
    lt = te.placeholder((256,), "int8", name="table")
    ep = lambda z, idx: requant_value(z, idx, mt, E, 1 << (E - 1), 0, -128, 127)  # noqa: E731
    with gemm.amx_layout(isa == "amx"):
        out = gemm.packed_gemm_te(xt, wt, bt, mr, n, epilogue=ep, out_dtype="int8", byte_table=lt)
        func = te.create_prim_func([xt, wt, bt, mt, lt, out])
    assert BYTE_TABLE_BLOCK in schedules.block_names(tvm.s_tir.Schedule(func))
    tdpbusd = request.getfixturevalue("amx_tiles") if isa == "amx" else None
    scheduled = schedules.schedule_gemm(func, vnni=True, amx=isa == "amx")
    lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}),
                      target=tvm.target.Target(resolve_target("llvm")))
    asm = lib.mod.inspect_source("asm")
    # vpermi2b, or its twin vpermt2b (the same lookup, overwriting the other table register): LLVM's choice
    assert (tdpbusd if isa == "amx" else "vpdpbusd") in asm
    assert ("vpermi2b" in asm or "vpermt2b" in asm) and "gather" not in asm
    got = _run(lib, x, wp, gemm.folded_bias(w, bias), m, table, out_shape=x.shape[:-1] + (n,), out_dtype="int8")
    acc = ops.int_linear(torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(bias))
    q = ops.requantize(acc, torch.from_numpy(m), torch.tensor(E), 8)
    ref = ops.lookup(q, torch.from_numpy(table.astype(np.int64)), -128).numpy()
    assert np.array_equal(got, ref)
    if q.numel() > 10_000:
        assert len(np.unique(q.numpy())) == 256                        # every entry of the table was read


@runs_amx
@pytest.mark.parametrize("batch,heads,tokens,head_dim", [(2, 3, 197, 64), (1, 4, 17, 32), (1, 1, 17, 32),
                                                         (8, 6, 197, 64), (2, 2, 64, 96)])
def test_amx_probs_values_byte_split_equals_ops(batch, heads, tokens, head_dim, amx_tiles):
    """Attention's ``A·V`` on AMX (``gemm.split_probs_gemm_te``): 16-bit probabilities split into their two
    unsigned bytes, two u8 × s8 tile GEMMs on the values packed in-graph, ``256·hi + lo`` in the
    epilogue; equal to ``ops.int_matmul`` + requant at the extremes (p = 0 and 2**15 − 1, every byte value,
    v = −128), 197 and 17 tokens (rows and K not whole tiles), one task and many."""
    import tvm
    from tvm import te
    rng = np.random.default_rng(batch * tokens + head_dim)
    p = rng.integers(0, 2**15, (batch, heads, tokens, tokens)).astype(np.int16)
    p[..., 0, :], p[..., -1, :] = 2**15 - 1, 0
    p[..., 1, :min(tokens, 256)] = (np.arange(min(tokens, 256)) * 257)[None, None] % 2**15   # both bytes vary
    v = rng.integers(-128, 128, (batch, heads, tokens, head_dim)).astype(np.int8)
    v[..., 0, :] = -128
    m = rng.integers(1, 2**10, head_dim).astype(np.int64)
    e = 20
    pt, vt = te.placeholder(p.shape, "int16", name="p"), te.placeholder(v.shape, "int8", name="v")
    mt = te.placeholder((head_dim,), "int64", name="m")
    with gemm.amx_layout():
        panels = gemm.pack_panels_te(vt, "kn")
        pack = te.create_prim_func([vt, panels])
        pp = te.placeholder(tuple(int(d) for d in panels.shape), "int8", name="panels")
        out = gemm.split_probs_gemm_te(pt, pp, head_dim, lambda z, idx: requant_value(
            z, idx, mt, e, 1 << (e - 1), 0, -128, 127), "int8")
        func = te.create_prim_func([pt, pp, mt, out])
    assert amx.amx_shape(tvm.s_tir.Schedule(func)) is not None
    lib = tvm.compile(tvm.IRModule({"main": schedules.schedule_gemm(func, vnni=True, amx=True).with_attr(
        "global_symbol", "main")}), target=tvm.target.Target(resolve_target("llvm")))
    assert amx_tiles in lib.mod.inspect_source("asm") and "vpdpwssd" not in lib.mod.inspect_source("asm")
    packed = _run(_compile(tvm.s_tir.Schedule(schedules.schedule_rowwise(pack))), v,
                  out_shape=tuple(int(d) for d in panels.shape), out_dtype="int8")
    got = _run(lib, p, packed, m, out_shape=(batch, heads, tokens, head_dim), out_dtype="int8")
    acc = ops.int_matmul(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(v.astype(np.int64)))
    ref = ops.requantize(acc, torch.from_numpy(m), torch.tensor(e), 8).numpy()
    assert np.array_equal(got, ref)
    assert len(np.unique(ref)) > min(100, ref.size // 20)          # the outputs span int8, not just its ends


def test_byte_table_kernels_that_cannot_take_it_are_refused():
    """The byte-table form is a sum over 256 entries that only the AMX and VNNI schedules turn into lookups
    of 32 bytes: a kernel whose columns are not whole lookups, or one with a weight per batch item, is
    refused when built, and scheduling one without VNNI is refused instead of run 256 times slower."""
    from tvm import te
    xt, lt = te.placeholder((4, 64), "int8", name="x"), te.placeholder((256,), "int8", name="table")
    with pytest.raises(ValueError, match="multiple of 32 columns"):
        gemm.packed_gemm_te(xt, te.placeholder((3, 16, 16, 4), "int8", name="w"), None, 4, 48, out_dtype="int8",
                            byte_table=lt)
    with pytest.raises(ValueError, match="one weight"):
        gemm.packed_gemm_te(te.placeholder((2, 4, 64), "int8", name="x"),
                            te.placeholder((2, 4, 16, 16, 4), "int8", name="w"), None, 4, 64, out_dtype="int8",
                            byte_table=lt)
    wt = te.placeholder((4, 16, 16, 4), "int8", name="w")
    out = gemm.packed_gemm_te(xt, wt, None, gemm.linear_tile(64, lookup=True)[0], 64, out_dtype="int8", byte_table=lt)
    func = te.create_prim_func([xt, wt, lt, out])
    with pytest.raises(ValueError, match="AMX or VNNI schedule only"):
        schedules.schedule_gemm(func, vnni=False, amx=False)
    with gemm.amx_layout():                     # 4 rows padded to one 32-row AMX block: not VNNI tiles
        out = gemm.packed_gemm_te(xt, wt, None, 4, 64, out_dtype="int8", byte_table=lt)
    with pytest.raises(ValueError, match="schedule it with amx=True"):
        schedules.schedule_gemm(te.create_prim_func([xt, wt, lt, out]), vnni=True, amx=False)


@runs_amx
@pytest.mark.parametrize("rows,n", [(1, 10), (8, 10), (17, 10), (32, 32), (8, 7)])
def test_amx_single_task_kernel_without_epilogue_equals_ops(rows, n, amx_tiles):
    """A kernel that is one 32 × 32 block (a classifier head: N ≤ 32 on at most 32 rows) without an
    epilogue, as the importer emits it: one task, so its parallel loop vanishes and TVM's StorageRewrite
    may give the int32 accumulator the uint8 staged rows' memory (dead after the last tile load). The
    tile intrinsics address their operands through typed buffer elements, which that reuse rewrites."""
    import tvm
    from tvm import te
    rng = np.random.default_rng(rows * n)
    x = rng.integers(-128, 128, (rows, 128)).astype(np.int8)
    w = rng.integers(-128, 128, (128, n)).astype(np.int8)
    x[0], w[:, 0] = -128, 127
    bias = rng.integers(-2**20, 2**20, n)
    mr, nr = gemm.linear_tile(n)
    wp = gemm.pack_linear_weight(w, nr, amx=True)
    xt, wt = te.placeholder(x.shape, "int8", name="x"), te.placeholder(wp.shape, "int8", name="w")
    bt = te.placeholder((n,), "int64", name="b")
    with gemm.amx_layout():
        func = te.create_prim_func([xt, wt, bt, gemm.packed_gemm_te(xt, wt, bt, mr, n, out_dtype="int64")])
    scheduled = schedules.schedule_gemm(func, vnni=True, amx=True)
    lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}),
                      target=tvm.target.Target(resolve_target("llvm")))
    assert amx_tiles in lib.mod.inspect_source("asm")
    got = _run(lib, x, wp, gemm.folded_bias(w, bias), out_shape=(rows, n), out_dtype="int64")
    ref = ops.int_linear(torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(bias)).numpy()
    assert np.array_equal(got, ref)


@runs_amx
@pytest.mark.parametrize("batch,heads,tokens,head_dim", [
    (2, 3, 197, 40),
    (1, 4, 17, 32), (8, 4, 17, 32),     # the embedded model: head_dim 32 (K < 64), 17 tokens
    (1, 1, 17, 32),                     # one batch item and head: a single task
    (2, 6, 18, 8)])                     # the distilled DeiT of test_tvm_backend: 6 heads of width 8
def test_amx_attention_scores_kernel_equals_ops(batch, heads, tokens, head_dim, amx_tiles):
    """Attention's ``Q·Kᵀ`` on AMX: keys packed in-graph in the AMX layout (as ``pack_linear_weight``
    packs a weight), one weight per batch item and head, the ``−128·Σk`` compensation as the bias."""
    import tvm
    from tvm import te
    rng = np.random.default_rng(tokens + head_dim)
    shape = (batch, heads, tokens, head_dim)
    q = rng.integers(-128, 128, shape).astype(np.int8)
    keys = rng.integers(-128, 128, shape).astype(np.int8)
    q[..., 0, :], keys[..., 0, :] = -128, 127
    kt = te.placeholder(keys.shape, "int8", name="k")
    with gemm.amx_layout():
        panels_te, comp_te = gemm.pack_panels_te(kt, "nk"), gemm.panel_compensation_te(kt)
        packing = te.create_prim_func([kt, panels_te])
        comp = te.create_prim_func([kt, comp_te])
    panels_shape = (batch, heads, gemm.ceil_to(tokens, 32) // 16, gemm.ceil_to(head_dim, 64) // 4, 16, 4)
    assert tuple(int(d) for d in panels_te.shape) == panels_shape
    target = tvm.target.Target(resolve_target("llvm"))
    panels = _run(tvm.compile(tvm.IRModule({"main": packing}), target=target), keys, out_shape=panels_shape,
                  out_dtype="int8")
    for b, h in np.ndindex(batch, heads):
        assert np.array_equal(panels[b, h], gemm.pack_linear_weight(keys[b, h].T.copy(), 1, amx=True))
    bias = _run(tvm.compile(tvm.IRModule({"main": comp}), target=target), keys,
                out_shape=tuple(int(d) for d in comp_te.shape), out_dtype="int64")
    qt, pt = te.placeholder(q.shape, "int8", name="q"), te.placeholder(panels_shape, "int8", name="p")
    bt = te.placeholder(bias.shape, "int64", name="b")
    with gemm.amx_layout():
        func = te.create_prim_func([qt, pt, bt, gemm.packed_gemm_te(qt, pt, bt, 7, tokens)])
    sch = tvm.s_tir.Schedule(func)
    assert amx.amx_shape(sch) is not None
    schedules.apply_gemm_schedule(sch, vnni=True, amx=True)
    lib = _compile(sch)
    assert amx_tiles in lib.mod.inspect_source("asm")
    got = _run(lib, q, panels, bias, out_shape=(batch, heads, tokens, tokens), out_dtype="int64")
    ref = ops.int_matmul(torch.from_numpy(q), torch.from_numpy(keys).transpose(-1, -2)).numpy()
    assert np.array_equal(got, ref)


@runs_amx
def test_amx_and_vnni_modules_equal_torch_and_ort(tiny_qvit, amx_tiles):
    """The whole model with its int8 GEMMs on AMX equals the VNNI build, the torch integer model and ORT."""
    q = tiny_qvit
    x = adversarial_inputs(16, 3, 32, q.scales["input"])
    proto = to_onnx(q)
    modules = {isa: compile_onnx(proto, "llvm", batch=8, isa=isa) for isa in ("amx", "vnni")}
    assert modules["amx"].isa == "amx" and modules["vnni"].isa == "vnni"
    assert modules["amx"].amx_emulated == (not HOST_HAS_AMX)
    s = session(proto)
    assert_matches_reference(q, x, lambda batch: lambda xb: s.run(None, {"images": xb.numpy()}), (8,))
    assert_matches_reference(q, x, lambda batch: modules["amx"], (8,))
    for i in range(0, 16, 8):
        assert np.array_equal(modules["amx"](x[i:i + 8])[1], modules["vnni"](x[i:i + 8])[1])
    # and every block's fc1 + GELU table ran as a byte-table lookup (the AMX import; without VBMI lookups the
    # VNNI one gathers)
    assert _kernels_with(proto, True, _ends_in_byte_table) == len(q.spec.blocks)
    assert _kernels_with(proto, False, _ends_in_byte_table) == 0


@needs_vbmi
def test_vnni_module_looks_gelu_up_with_vbmi_and_equals_the_gather_build_torch_and_ort(tiny_qvit):
    """On a CPU with VNNI and VBMI the default build looks fc1's GELU table up with ``vpermi2b`` in every
    block; the whole model equals the build that gathers, the torch integer model and ONNX Runtime."""
    import tvm
    from intvit.tvm_backend.importer import to_relax
    q = tiny_qvit
    x = adversarial_inputs(16, 3, 32, q.scales["input"])
    proto = to_onnx(q)
    looked_up = compile_onnx(proto, "llvm", batch=8, isa="vnni")
    tgt = build.make_target(resolve_target("llvm"))
    with gemm.vbmi_lookup(False):
        fused = build.fuse(to_relax(proto, 8), tgt)
    gathered = build.wrap_executable(tvm.compile(build.schedule(fused, tgt, isa="vnni"), target=tgt), proto, 8)
    assert _kernels_with(proto, False, _ends_in_byte_table, vbmi_lookup=True) == len(q.spec.blocks)
    s = session(proto)
    assert_matches_reference(q, x, lambda batch: lambda xb: s.run(None, {"images": xb.numpy()}), (8,))
    assert_matches_reference(q, x, lambda batch: looked_up, (8,))
    for i in range(0, 16, 8):
        assert np.array_equal(looked_up(x[i:i + 8])[1], gathered(x[i:i + 8])[1])


def _ends_in_byte_table(sch) -> bool:
    from intvit.tvm_backend.byte_table import BYTE_TABLE_BLOCK
    return BYTE_TABLE_BLOCK in schedules.block_names(sch)


def _splits_bytes(sch) -> bool:
    return gemm.ACC_BLOCK in schedules.block_names(sch) and gemm.BYTE_SPLIT in sch.get(
        sch.get_sblock(gemm.ACC_BLOCK)).annotations


def _kernels_with(proto, amx_layout: bool, test, vbmi_lookup: bool = False) -> int:
    """How many kernel calls of the module imported from ``proto`` (batch 8, in the AMX layout or not, with
    VBMI byte-table lookups or not) run a kernel that passes ``test`` (equal kernels are one function
    called several times)."""
    import re
    import tvm
    from intvit.tvm_backend.importer import to_relax
    with gemm.amx_layout(amx_layout), gemm.vbmi_lookup(vbmi_lookup):
        mod = to_relax(proto, 8)
    calls = re.findall(r"R\.call_tir\((?:cls\.)?(\w+),", mod["main"].script())
    passing = {gv.name_hint for gv, f in mod.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and test(tvm.s_tir.Schedule(f))}
    return sum(name in passing for name in calls)


@runs_amx
def test_embedded_model_amx_equals_vnni_and_torch(embedded_qvit, amx_tiles):
    """The embedded Fashion-MNIST model (patch K = 49, head_dim 32, 10 classes, 17 tokens) with its int8
    GEMMs on AMX equals the VNNI build and the torch integer model exactly, at batch 1 (every linear a
    single 32-row block) and 8."""
    from intvit.models import fmnist
    q = embedded_qvit
    x, _ = fmnist.load_test_set(16)
    proto = to_onnx(q)
    for batch in (1, 8):
        modules = {isa: compile_onnx(proto, "llvm", batch=batch, isa=isa) for isa in ("amx", "vnni")}
        assert modules["amx"].isa == "amx" and modules["vnni"].isa == "vnni"
        assert_matches_reference(q, x, lambda b: modules["amx"], (batch,))
        for i in range(0, 16, batch):
            assert np.array_equal(modules["amx"](x[i:i + batch])[1], modules["vnni"](x[i:i + batch])[1])
    # every block's A·V (heads 32 wide) ran as two byte GEMMs on AMX, and its fc1 + GELU as a byte table
    assert _kernels_with(proto, True, _splits_bytes) == len(q.spec.blocks)
    assert _kernels_with(proto, True, _ends_in_byte_table) == len(q.spec.blocks)
    assert _kernels_with(proto, False, _splits_bytes) == 0


@needs_amx
def test_default_isa_is_amx_on_this_host():
    assert build.resolve_isa(None, build.make_target(resolve_target("llvm"))) == "amx"


def test_512_bit_vectors_only_where_amx_is():
    """LLVM's 256-bit preference is turned off for AMX CPUs only (``x86.vectorize_512``)."""
    from intvit.tvm_backend.x86 import vectorize_512
    assert vectorize_512("sapphirerapids") and vectorize_512("emeraldrapids")
    assert not vectorize_512("skylake-avx512") and not vectorize_512("znver4") and not vectorize_512("haswell")
    assert not vectorize_512("")


@needs_amx
def test_row_kernels_use_512_bit_vectors_on_this_host():
    """On this AMX host the host target drops ``prefer-256-bit``, so a row kernel (Shiftmax, compiled as the
    importer emits it) is vectorized on zmm registers; the result is unchanged (``ops.shiftmax``)."""
    import tvm
    from tvm import te
    from intvit.tvm_backend.kernels import shiftmax_te
    assert "-prefer-256-bit" in resolve_target("llvm").get("mattr", [])
    scale = 0.02
    x0 = ops.shiftexp_x0(scale)
    xt = te.placeholder((6, 197, 197), "int16", name="x")
    func = te.create_prim_func([xt, shiftmax_te(xt, x0, ops.SHIFTMAX_N * x0, ops.SHIFTMAX_N, 2**47, "int16")])
    lib = tvm.compile(tvm.IRModule({"main": schedules.schedule_rowwise(func).with_attr("global_symbol", "main")}),
                      target=build.make_target(resolve_target("llvm")))
    assert "zmm" in lib.mod.inspect_source("asm")
    x = np.random.default_rng(0).integers(-400, 400, (6, 197, 197)).astype(np.int16)     # logits up to 16 apart
    got = _run(lib, x, out_shape=x.shape, out_dtype="int16")
    assert np.array_equal(got, ops.shiftmax(torch.from_numpy(x), x0, 16).numpy())


def test_forced_amx_where_it_cannot_run_is_refused(tiny_qvit, monkeypatch):
    """``isa="amx"`` on a host that refuses the tile state, or for a CPU without AMX: a clear error, no SIGILL;
    the default then falls back to VNNI."""
    proto = to_onnx(tiny_qvit)
    monkeypatch.setattr(amx, "request_tile_permission", lambda: False)
    assert not amx.host_has_amx()
    host = build.make_target(resolve_target("llvm"))
    if amx.target_has_amx(host):
        with pytest.raises(IsaUnavailableError, match="refused this process the AMX tile state.*the best this target has \\('vnni'\\)"):
            compile_onnx(proto, "llvm", batch=1, isa="amx")
    with pytest.raises(IsaUnavailableError, match="haswell has no AMX-INT8.*the best this target has \\('avx2'\\)"):
        compile_onnx(proto, {"kind": "llvm", "mcpu": "haswell"}, batch=1, isa="amx")
    with pytest.raises(IsaUnavailableError, match="haswell has no AVX-512 VNNI"):
        compile_onnx(proto, {"kind": "llvm", "mcpu": "haswell"}, batch=1, isa="vnni")
    with pytest.raises(build.UnknownTargetError, match="unknown isa 'sme'"):
        compile_onnx(proto, "llvm", batch=1, isa="sme")
    assert build.resolve_isa(None, host) in ("vnni", "avx2", "generic")


@needs_amx
def test_amx_module_refuses_to_run_without_the_tile_permission(tiny_qvit, monkeypatch):
    module = compile_onnx(to_onnx(tiny_qvit), "llvm", batch=1, isa="amx")
    monkeypatch.setattr(amx, "request_tile_permission", lambda: False)
    with pytest.raises(IsaUnavailableError, match="use Intel AMX"):
        module(adversarial_inputs(5, 3, 32, tiny_qvit.scales["input"])[:1])


@runs_amx
def test_tuning_with_amx_keeps_the_amx_gemms_and_tunes_the_rest(tiny_qvit, tmp_path, amx_tiles):
    """``tune`` with ``isa="amx"``: the AMX kernels keep their fixed schedule; only the int16 (A·V) GEMMs,
    which stay on VNNI, are tuned; the module is exact."""
    proto = to_onnx(tiny_qvit)
    module = compile_onnx(proto, "llvm", batch=2, tune=2, tuning_dir=str(tmp_path / "db"), isa="amx")
    s = module.tuning
    assert module.isa == "amx" and s.verified is True
    assert s.kernels == len(tiny_qvit.spec.blocks) and s.shapes == s.tuned == 1      # one A·V per block
    assert_matches_reference(tiny_qvit, adversarial_inputs(4, 3, 32, tiny_qvit.scales["input"]),
                             lambda batch: module, batches=(2,))


def _scheduled_linear_kernel(n: int = 64):
    """A 197 × 384 × ``n`` AMX linear kernel with its requant epilogue, scheduled (more than one block per task
    when ``n`` > 32)."""
    w_shape = (gemm.ceil_to(n, 32) // 16, 384 // 4, 16, 4)
    with gemm.amx_layout():
        func = _linear_kernel((197, 384), w_shape, n, gemm.linear_tile(n)[0])
    return schedules.schedule_gemm(func, vnni=True, amx=True)


def test_amx_kernels_compile_to_tile_instructions_for_an_amx_cpu():
    """What the emulated tests cannot show: built for an AMX CPU (here without running it), the kernel issues
    the tile instructions themselves and requests the tile state with the system call; under emulation the
    same kernel calls the emulator for each, and holds no tile instruction."""
    import tvm
    real = tvm.compile(tvm.IRModule({"main": _scheduled_linear_kernel().with_attr("global_symbol", "main")}),
                       target=build.make_target(resolve_target({"kind": "llvm", "mcpu": "sapphirerapids"})))
    asm = real.mod.inspect_source("asm")
    for instruction in ("ldtilecfg", "tilezero", "tileloadd", "tdpbusd", "tilestored", "tilerelease"):
        assert f"\t{instruction}" in asm, instruction
    assert "syscall" in asm and amx_emulator.PREFIX not in asm
    if EMULATOR_UNAVAILABLE is None:
        with amx_emulator.emulation():
            emulated = tvm.compile(tvm.IRModule({"main": _scheduled_linear_kernel().with_attr("global_symbol",
                                                                                             "main")}),
                                   target=build.make_target(resolve_target("llvm")))
        asm = emulated.mod.inspect_source("asm")
        for call in ("ldtilecfg", "tilezero", "tileloadd64", "tdpbusd", "tilestored64", "tilerelease",
                     "arch_prctl"):
            assert amx_emulator.PREFIX + call in asm, call
        assert not any(f"\t{i}" in asm for i in ("ldtilecfg", "tdpbusd", "tileloadd", "tilestored"))


@needs_emulator
def test_an_amx_module_checks_the_tile_state_in_its_kernels(tiny_qvit):
    """The kernels' own request at entry (``amx.with_tile_request``), reached by calling the VM directly (past
    ``CompiledIntViT``'s check): where the tile state is refused, the call raises the message instead of
    running a tile instruction; granted, the module is exact."""
    import tvm
    q = tiny_qvit
    with amx_emulator.emulation():
        module = compile_onnx(to_onnx(q), "llvm", batch=1, isa="amx")
    x = adversarial_inputs(4, 3, 32, q.scales["input"])[:1]
    with amx_emulator.tile_permission(False), pytest.raises(Exception, match="Linux refused this process the AMX"):
        module.vm["main"](tvm.runtime.tensor(x.numpy(), module.dev))
    amx_emulator.check()                # and no tile instruction ran
    assert_matches_reference(q, x, lambda batch: module, (1,))


@needs_emulator
def test_a_wrong_tile_configuration_fails_the_model_call(tiny_qvit, monkeypatch):
    """Faults surface: with B tiles configured 32 bytes wide (a schedule bug), the emulated ``tdpbusd`` shapes
    disagree, and calling the model raises ``AmxEmulatorFault`` naming it instead of returning wrong logits."""
    original = amx.tile_config_words

    def narrow_b_tiles():
        cfg = bytearray(b"".join(w.to_bytes(8, "little", signed=True) for w in original()))
        cfg[16 + 2 * 6] = cfg[16 + 2 * 7] = 32              # bytes per row of tmm6 and tmm7, the B tiles
        return [int.from_bytes(cfg[8 * i:8 * i + 8], "little", signed=True) for i in range(8)]
    monkeypatch.setattr(amx, "tile_config_words", narrow_b_tiles)
    amx._register_amx_intrinsics.cache_clear()
    try:
        with amx_emulator.emulation():
            module = compile_onnx(to_onnx(tiny_qvit), "llvm", batch=1, isa="amx")
        with pytest.raises(amx_emulator.AmxEmulatorFault, match="TDPBUSD shapes disagree"):
            module(adversarial_inputs(4, 3, 32, tiny_qvit.scales["input"])[:1])
    finally:
        amx._register_amx_intrinsics.cache_clear()       # the next tests register the real intrinsics again


@needs_emulator
def test_an_emulated_amx_module_is_not_written_to_a_file(tiny_qvit, tmp_path):
    from intvit.tvm_backend.runtime import compile_to_file
    path = tmp_path / "tiny.onnx"
    path.write_bytes(to_onnx(tiny_qvit).SerializeToString())
    with amx_emulator.emulation(), pytest.raises(ValueError, match="runs only in the process that compiled it"):
        compile_to_file(path, tmp_path / "tiny.so", isa="amx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


@pytest.fixture(scope="module")
def deit_shaped_qvit():
    """DeiT-Tiny's shape (224 px, patch 16: 197 tokens; 192-d, 3 heads, MLP 768; 1,000 classes) in 2 blocks,
    random weights, quantized."""
    import intvit
    from conftest import hf_vit, images
    model = hf_vit(image=224, patch=16, dim=192, layers=2, heads=3, mlp=768, labels=1000)
    return intvit.quantize(model, images(8, size=224), intvit.QuantConfig(progress=False))


@pytest.mark.parametrize("isa", [pytest.param("amx", marks=runs_amx), pytest.param("vnni", marks=needs_vbmi),
                                 "avx2", "generic"])
def test_deit_shaped_model_is_exact_on_every_x86_gemm_path(deit_shaped_qvit, isa, request):
    """197 tokens and 1,000 classes (DeiT's odd widths), the GEMMs forced onto each x86 path, batch 1 and 8:
    the compiled module's integer logits equal ONNX Runtime's and the torch integer model's."""
    from conftest import images
    q = deit_shaped_qvit
    proto = to_onnx(q)
    x = images(8, size=224)
    want = session(proto).run(None, {"images": x.numpy()})[1]
    assert np.array_equal(want, q.forward_int(x).numpy())
    if isa == "amx":
        request.getfixturevalue("amx_tiles")
    for batch in (1, 8):
        module = compile_onnx(proto, "llvm", batch=batch, isa=isa)
        assert module.isa == isa
        assert np.array_equal(module(x)[1], want), (isa, batch)


@needs_emulator
def test_emulated_amx_builds_for_this_cpu_only(tiny_qvit):
    """Under emulation the tile instructions are this process's calls: another target CPU is one clear error."""
    with amx_emulator.emulation(), pytest.raises(IsaUnavailableError, match="under the AMX emulator builds for "
                                                                           "this CPU only.*haswell"):
        compile_onnx(to_onnx(tiny_qvit), {"kind": "llvm", "mcpu": "haswell"}, batch=1, isa="amx")
