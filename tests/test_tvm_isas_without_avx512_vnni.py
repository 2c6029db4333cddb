"""The int8 GEMMs of CPUs without AVX-512 VNNI (``x86.gemm_isa``): the 16-bit form (``gemm.word_gemm``,
``isa="avx2"``) with ``vpmaddwd`` on ymm (AVX2) and zmm (AVX-512BW) builds, and VNNI on ymm (``isa="avxvnni"``,
Intel client cores since Alder Lake): kernels and whole models equal ``ops``, ONNX Runtime and the VNNI build.

AVX-VNNI's VEX encoding cannot run on a CPU without it, so its kernels run here in their EVEX form (the same
intrinsics on a target with AVX-512 VL + VNNI, which LLVM encodes as EVEX) and the ``alderlake`` build is checked
by its assembly: ``{vex} vpdpbusd`` on ymm, no zmm."""
import numpy as np
import pytest
import torch

from intvit import ops
from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend import build, gemm, schedules, x86
from intvit.tvm_backend.build import IsaUnavailableError, compile_onnx, make_target, resolve_target
from intvit.tvm_backend.inspect_ir import float_ops_in_integer_region
from intvit.tvm_backend.x86 import VPDPWSSD, gemm_isa, has_features, host_cpu, isa_features, target_has_vnni
from conftest import assert_matches_reference, int8_linear_case, packed_linear_kernel
from test_onnx_export import adversarial_inputs, session

AVX2 = {"kind": "llvm", "mcpu": "x86-64-v3"}                 # any AVX2 CPU (Haswell, Zen 1-3): ymm vpmaddwd
AVX512_NO_VNNI = {"kind": "llvm", "mcpu": "skylake-avx512"}  # AVX-512BW without VNNI: zmm vpmaddwd
ALDERLAKE = {"kind": "llvm", "mcpu": "alderlake"}            # AVX-VNNI (VEX), no AVX-512
HOST_AVX2 = has_features(host_cpu(), "avx2")
HOST_AVX512BW = has_features(host_cpu(), "avx512bw", "avx512f")
needs_avx2 = pytest.mark.skipif(not HOST_AVX2, reason="this CPU has no AVX2")
needs_avx512 = pytest.mark.skipif(not HOST_AVX512BW, reason="this CPU has no AVX-512BW")
needs_avx512_vnni = pytest.mark.skipif(not has_features(host_cpu(), "avx512vnni", "avx512vl"),
                                       reason="this CPU has no AVX-512 VNNI (the EVEX form of AVX-VNNI's kernels)")
WIDTHS = [pytest.param("ymm", AVX2, marks=needs_avx2), pytest.param("zmm", AVX512_NO_VNNI, marks=needs_avx512)]
E = 24


def _compile(func, target):
    import tvm
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                       target=tvm.target.Target(target))


def _run(lib, *arrays, out_shape, out_dtype):
    import tvm
    args = [tvm.runtime.tensor(a) for a in arrays] + [tvm.runtime.tensor(np.zeros(out_shape, out_dtype))]
    lib["main"](*args)
    return args[-1].numpy()


def _word_linear(x_shape, n: int, k: int, width: str):
    """A linear layer as the importer builds it in the 16-bit form (int16 panels, the tile of ``width``)."""
    return packed_linear_kernel(x_shape, n, k, VPDPWSSD, width, E)


@pytest.mark.parametrize("width,target", WIDTHS)
@pytest.mark.parametrize("lead,rows,k,n", [
    ((), 197, 384, 1152), ((8,), 197, 1536, 384), ((), 1, 64, 16), ((2,), 13, 30, 20), ((), 5, 100, 1000),
    ((8,), 17, 49, 128), ((), 17, 128, 10)])
def test_word_linear_kernel_equals_ops(width, target, lead, rows, k, n):
    """Ragged rows (197, 17, 13, 5, 1), odd K (49, 30, 100) and N (1000, 20, 10), batches folded or not,
    every int8 extreme in the products; the kernel is ``vpmaddwd`` + ``vpaddd``, no VNNI, and with ymm no
    512-bit register at all."""
    x, w, bias, m, ref = int8_linear_case(lead, rows, k, n, E)
    func, nr = _word_linear(x.shape, n, k, width)
    lib = _compile(schedules.schedule_gemm(func, vnni=False, dots=gemm_isa("avx2", make_target(target)).dots),
                   target)
    wp = gemm.pack_linear_weight(w.astype(np.int16), nr, VPDPWSSD.group)
    got = _run(lib, x, wp, bias, m, out_shape=(*lead, rows, n), out_dtype="int8")
    assert np.array_equal(got, ref)
    asm = lib.mod.inspect_source("asm")
    assert "vpmaddwd" in asm and "vpdpbusd" not in asm and "vpdpwssd" not in asm
    assert ("zmm" in asm) == (width == "zmm")


@pytest.mark.parametrize("width,target", WIDTHS)
def test_word_dot_wraps_like_vpdpwssd(width, target):
    """``vpmaddwd``'s one overflow, ``(-32768)·(-32768)`` twice in a pair, and the accumulation past int32
    wrap exactly as ``vpdpwssd`` and int32 arithmetic do (A·V's 16-bit operands take this instruction)."""
    from tvm import te
    rng = np.random.default_rng(1)
    a = rng.integers(-2**15, 2**15, (7, 40)).astype(np.int16)
    b = rng.integers(-2**15, 2**15, (40, 48)).astype(np.int16)
    a[0], b[:, 0] = -2**15, -2**15                          # every pair sum 2**31: wraps
    a[1, :4], b[:4, 1] = -2**15, -2**15
    with gemm.gemm_vectors(width):
        mr, nr = gemm.import_tile(48)
    at, bt = te.placeholder(a.shape, "int16", name="a"), te.placeholder(b.shape, "int16", name="b")
    out = gemm.packed_gemm_te(at, gemm.pack_panels_te(bt, "kn", VPDPWSSD), None, mr, 48, VPDPWSSD,
                              out_dtype="int32", nr=nr)
    func = te.create_prim_func([at, bt, out])
    lib = _compile(schedules.schedule_gemm(func, vnni=False, dots=gemm_isa("avx2", make_target(target)).dots),
                   target)
    got = _run(lib, a, b, out_shape=(7, 48), out_dtype="int32")
    assert np.array_equal(got, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32))
    assert got[0, 0] == np.int64(40 * 2**30).astype(np.int32)


@pytest.mark.parametrize("width,target", WIDTHS)
def test_whole_model_in_the_word_form_equals_torch_ort_and_vnni(tiny_qvit, width, target):
    """The tiny model compiled with ``isa="avx2"`` (every int8 GEMM in the 16-bit form) equals the torch
    integer model and ONNX Runtime at batch 1 and 8, and the VNNI build where this CPU has VNNI; the lowered
    module holds no float op between quantizer and dequantize, and every GEMM is ``vpmaddwd``."""
    q = tiny_qvit
    x = adversarial_inputs(16, 3, 32, q.scales["input"])
    proto = to_onnx(q)
    modules = {b: compile_onnx(proto, dict(target), batch=b) for b in (1, 8)}
    assert {m.isa for m in modules.values()} == {"avx2"}
    assert_matches_reference(q, x, lambda batch: modules[batch])
    s = session(proto)
    assert_matches_reference(q, x, lambda batch: lambda xb: s.run(None, {"images": xb.numpy()}), (8,))
    host = build.make_target(resolve_target("llvm"))
    if target_has_vnni(host):
        vnni = compile_onnx(proto, "llvm", batch=8, isa="vnni")
        for i in range(0, 16, 8):
            assert np.array_equal(vnni(x[i:i + 8])[1], modules[8](x[i:i + 8])[1])
    tgt = build.make_target(target)
    with gemm.word_gemm(), gemm.gemm_vectors(width):
        fused = build.fuse(build.to_relax(proto, 8), tgt)
    scheduled = build.schedule(fused, tgt, isa="avx2")
    assert float_ops_in_integer_region(scheduled) == []
    gemms = [f for gv, f in scheduled.functions.items() if gv.name_hint.startswith(("int8_linear", "int16_gemm"))]
    assert len(gemms) >= 5 * len(q.spec.blocks) and all(str(f.params[1].ty.dtype) == "int16" for f in gemms)


def test_default_isa_by_target_and_forced_isa_the_target_lacks():
    """No VNNI but AVX2 → ``"avx2"``; neither → ``"generic"``; forcing ``avx2`` on a CPU without it, or
    ``vnni`` on an AVX2 CPU, is one clear error naming what to use."""
    make = build.make_target
    assert build.resolve_isa(None, make(AVX2)) == "avx2"
    assert build.resolve_isa(None, make(AVX512_NO_VNNI)) == "avx2"
    assert build.resolve_isa(None, make({"kind": "llvm", "mcpu": "x86-64"})) == "generic"
    assert build.resolve_isa("generic", make(AVX2)) == "generic"
    with pytest.raises(IsaUnavailableError, match=r"x86-64 has no AVX2; leave isa unset for the best this target has \('generic'\)"):
        build.resolve_isa("avx2", make({"kind": "llvm", "mcpu": "x86-64"}))
    with pytest.raises(IsaUnavailableError, match=r"x86-64-v3 has no AVX-512 VNNI; .*best this target has \('avx2'\)"):
        build.resolve_isa("vnni", make(AVX2))
    with pytest.raises(IsaUnavailableError, match=r"x86-64-v3 has no AVX-VNNI; .*\('avx2'\)"):
        build.resolve_isa("avxvnni", make(AVX2))
    assert build.resolve_isa(None, make(ALDERLAKE)) == "avxvnni"
    assert build.resolve_isa(None, make({"kind": "llvm", "mcpu": "znver5"})) == "vnni"      # both: AVX-512 wins
    assert (gemm_isa("avx2", make(AVX2)).vectors, gemm_isa("avx2", make(AVX2)).int8_dot) == ("ymm", VPDPWSSD)
    assert gemm_isa("avx2", make(AVX512_NO_VNNI)).vectors == "zmm"
    assert gemm_isa("vnni", make(AVX512_NO_VNNI)).int8_dot is x86.VPDPBUSD
    with pytest.raises(ValueError, match="gemm_vectors width 'xmm'"):
        gemm.gemm_vectors("xmm")


def _vnni_ymm_kernel(staged: str, x_shape, panels_shape, n: int):
    """A ``Q·Kᵀ``-like u8 × s8 kernel (``"uint8"``: x + 128 against per-head panels, the compensation as its
    bias) or an ``A·V``-like s16 × s16 one (``"int16"``) with the ymm tile, as imported for AVX-VNNI."""
    from tvm import te
    with gemm.gemm_vectors("ymm"):
        mr, nr = gemm.import_tile(n)
    dot = {"uint8": x86.VPDPBUSD, "int16": VPDPWSSD}[staged]
    xt = te.placeholder(x_shape, "int8" if staged == "uint8" else "int16", name="x")
    pt = te.placeholder(panels_shape, dot.b_dtype, name="panels")
    bt = te.placeholder((x_shape[0], panels_shape[1] * 16), "int64", name="b") if staged == "uint8" else None
    out = gemm.packed_gemm_te(xt, pt, bt, mr, n, dot, nr=nr)
    return te.create_prim_func([xt, pt, *([bt] if bt is not None else []), out]), nr


@needs_avx512_vnni
@pytest.mark.parametrize("staged", ["uint8", "int16"])
def test_avxvnni_kernels_equal_ops_and_are_vex_on_alderlake(staged):
    """VNNI on ymm (two 8-lane ``vpdpbusd``/``vpdpwssd`` per 16-lane panel, the 6 × 16 tile): exact at the
    operands' extremes, run here in the EVEX form; the ``alderlake`` build holds the VEX form and no zmm."""
    rng = np.random.default_rng(7)
    heads, rows, k, n = 3, 197, 100, 1000
    if staged == "uint8":
        x = rng.integers(-128, 128, (heads, rows, k)).astype(np.int8)
        b = rng.integers(-128, 128, (heads, k, n)).astype(np.int8)        # keysᵀ: [K, N] per head
        x[:, 0], b[:, :, 0] = -128, -128
    else:
        x = rng.integers(0, 2**15, (heads, rows, k)).astype(np.int16)
        b = rng.integers(-128, 128, (heads, k, n)).astype(np.int8)
        x[:, 0], b[:, :, 0] = 2**15 - 1, -128
    with gemm.gemm_vectors("ymm"):
        func, nr = _vnni_ymm_kernel(staged, x.shape, (heads, -(-n // 16), -(-k // (4 if staged == "uint8" else 2)),
                                                      16, 4 if staged == "uint8" else 2), n)
    group = 4 if staged == "uint8" else 2
    panels = np.stack([gemm.pack_linear_weight(b[h].astype(np.int8 if group == 4 else np.int16), nr, group)
                       for h in range(heads)])
    extra = [np.stack([np.pad(gemm.folded_bias(b[h], None), (0, panels.shape[1] * 16 - n)) for h in range(heads)])] \
        if staged == "uint8" else []
    here = resolve_target("llvm")
    lib = _compile(schedules.schedule_gemm(func, vnni=False, dots=gemm_isa("avxvnni", make_target(here)).dots), here)
    got = _run(lib, x, panels, *extra, out_shape=(heads, rows, n), out_dtype="int64")
    assert np.array_equal(got, x.astype(np.int64) @ b.astype(np.int64))
    alder = _compile(schedules.schedule_gemm(func, vnni=False, dots=gemm_isa("avxvnni", make_target(ALDERLAKE)).dots),
                     ALDERLAKE).mod.inspect_source("asm")
    assert "zmm" not in alder
    if staged == "uint8":
        assert "{vex}\tvpdpbusd" in alder
    else:       # LLVM tunes Alder Lake to run vpdpwssd as vpmaddwd + vpaddd (the same sums)
        assert "{vex}\tvpdpwssd" in alder or "vpmaddwd" in alder


@needs_avx512_vnni
def test_whole_model_on_avxvnni_equals_torch_and_vnni(tiny_qvit):
    """The tiny model with every GEMM on ymm VNNI (its EVEX form here) equals the torch integer model and the
    zmm VNNI build; ``compile_onnx`` for ``alderlake`` picks ``avxvnni`` by default, and a sidecar for that CPU
    lists AVX-VNNI among the features a host must have (``runtime.load`` refuses a host without them)."""
    import tvm
    q = tiny_qvit
    x = adversarial_inputs(16, 3, 32, q.scales["input"])
    proto = to_onnx(q)
    here = make_target(resolve_target("llvm"))
    with gemm.gemm_vectors("ymm"):
        fused = build.fuse(build.to_relax(proto, 8), here)
    ymm = build.wrap_executable(tvm.compile(build.schedule(fused, here, isa="avxvnni"), target=here), proto, 8)
    assert_matches_reference(q, x, lambda batch: ymm, (8,))
    zmm = compile_onnx(proto, "llvm", batch=8, isa="vnni")
    for i in range(0, 16, 8):
        assert np.array_equal(zmm(x[i:i + 8])[1], ymm(x[i:i + 8])[1])
    assert compile_onnx(proto, dict(ALDERLAKE), batch=1).isa == "avxvnni"
    assert "avxvnni" in isa_features("alderlake") and "avx512f" not in isa_features("alderlake")


@needs_avx2
def test_cli_compiles_for_another_cpu_and_the_module_knows_where_it_runs(tiny_qvit, tmp_path, capsys):
    """``intvit compile --cpu x86-64-v3`` writes an AVX2 module (``avx2`` GEMMs) that runs here and equals the
    build for this CPU; one for ``alderlake`` records AVX-VNNI and, where this CPU lacks it, is refused by
    ``intvit run`` in one line. Nothing is written for an unknown CPU."""
    from intvit.cli import main
    from intvit.runtime import load
    tiny_qvit.export_onnx(tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "v3.so"), "--cpu", "x86-64-v3",
                 "--batch", "8"]) == 0
    assert "(CPU x86-64-v3, GEMMs on vpmaddwd" in capsys.readouterr().out
    v3 = load(tmp_path / "v3.so")
    assert v3.meta["mcpu"] == "x86-64-v3" and v3.meta["isa"] == "avx2" and "avx512f" not in v3.meta["cpu_features"]
    here = compile_onnx(to_onnx(tiny_qvit), "llvm", batch=8)
    x = adversarial_inputs(8, 3, 32, tiny_qvit.scales["input"]).numpy()
    assert np.array_equal(v3.run(x)[1], here(x)[1])
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "al.so"), "--cpu", "alderlake"]) == 0
    meta = __import__("json").loads((tmp_path / "al.so.json").read_text())
    assert meta["isa"] == "avxvnni" and "avxvnni" in meta["cpu_features"]
    np.save(tmp_path / "x.npy", x[:1])
    if not has_features(host_cpu(), "avxvnni"):
        capsys.readouterr()
        assert main(["run", str(tmp_path / "al.so"), "--input", str(tmp_path / "x.npy")]) != 0
        err = capsys.readouterr().err.strip()
        assert "built for CPU 'alderlake' and uses avxvnni, which this CPU" in err and len(err.splitlines()) == 1
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "bad.so"), "--cpu", "bogus"]) != 0
    assert not list(tmp_path.glob("bad.so*"))


@needs_avx2
@pytest.mark.parametrize("order", schedules.BLOCK_ORDERS)
def test_tuning_space_of_the_word_form_is_exact_and_keeps_vpmaddwd(order):
    """``--tune`` on an AVX2 CPU: the sampled cache blockings of a 16-bit-form kernel (``tuning.design_space``
    with the instruction set's ``dots``) only move loops around the ``vpmaddwd`` tile."""
    import tvm
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (2, 61, 72)).astype(np.int8)
    w = rng.integers(-128, 128, (72, 128)).astype(np.int8)
    bias, m = rng.integers(-2**20, 2**20, 128), rng.integers(1, 1 << 12, 128).astype(np.int64)
    func, nr = _word_linear(x.shape, 128, 72, "ymm")
    wp = gemm.pack_linear_weight(w.astype(np.int16), nr, VPDPWSSD.group)
    acc = ops.int_linear(torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(bias))
    ref = ops.requantize(acc, torch.from_numpy(m), torch.tensor(E), 8).numpy()
    decisions = set()
    for seed in range(1, 5):
        sch = tvm.s_tir.Schedule(func, seed=seed)
        schedules.apply_gemm_schedule(sch, False, blocking=order, dots=gemm_isa("avx2", make_target(AVX2)).dots)
        decisions.add(str([d for _, d in sch.trace.decisions.items()]))
        lib = _compile(sch.mod["main"], AVX2)
        got = _run(lib, x, wp, bias.astype(np.int64), m, out_shape=(2, 61, 128), out_dtype="int8")
        assert np.array_equal(got, ref) and "vpmaddwd" in lib.mod.inspect_source("asm")
    assert len(decisions) > 1


def test_reported_features_read_the_flags_line():
    """``/proc/cpuinfo``'s names map to LLVM's; flags intvit does not choose by are left out."""
    text = "processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512_vnni avx_vnni amx_int8 sha_ni\n\n" \
           "processor\t: 1\nflags\t\t: fpu\n"
    assert x86.reported_features(text) == ("sse4.2", "avx2", "fma", "avx512f", "avx512vnni", "avxvnni", "amx-int8")
    assert x86.reported_features("processor\t: 0\n") == ()


@pytest.fixture
def llvm_misnames_this_cpu(monkeypatch):
    """LLVM names this CPU the baseline ``x86-64`` (a CPU newer than its tables, or a VM hiding the model)."""
    monkeypatch.setattr(x86, "host_cpu", lambda: "x86-64")
    x86.host_extra_features.cache_clear()
    yield
    monkeypatch.undo()
    x86.host_extra_features.cache_clear()


@needs_avx2
def test_a_cpu_llvm_does_not_know_is_compiled_for_what_linux_reports(tiny_qvit, tmp_path, llvm_misnames_this_cpu):
    """With LLVM's model of the host reduced to ``x86-64``, the target still gets the extensions Linux reports
    (as ``mattr``), so the default ISA is the one this CPU really has (not ``generic``); the module's sidecar
    lists them, ``load`` accepts it here, and it equals the torch integer model."""
    from intvit.runtime import load
    from intvit.tvm_backend.amx import host_has_amx
    from intvit.tvm_backend.runtime import compile_to_file
    real = x86.reported_features()
    resolved = resolve_target("llvm")
    assert resolved["mcpu"] == "x86-64" and {f"+{f}" for f in real} <= set(resolved["mattr"])
    expected = "amx" if host_has_amx() else "vnni" if "avx512vnni" in real else \
        "avxvnni" if "avxvnni" in real else "avx2"
    assert build.resolve_isa(None, make_target(resolved)) == expected
    tiny_qvit.export_onnx(tmp_path / "m.onnx")
    meta = compile_to_file(tmp_path / "m.onnx", tmp_path / "m.so", batch=8)
    assert meta["mcpu"] == "x86-64" and meta["isa"] == expected
    assert set(meta["cpu_features"]) >= {f for f in real if f in x86.ISA_FEATURES}
    module = load(tmp_path / "m.so")
    x = adversarial_inputs(8, 3, 32, tiny_qvit.scales["input"])
    assert np.array_equal(module.run(x.numpy())[1], tiny_qvit.forward_int(x).numpy())
