"""``bench.profile``: the instrumented VM run classifies every kernel call and counts the model's GEMM work
exactly (timings are not checked: tests never time)."""
from intvit.bench.profile import format_profile, kernel_class, peak_of, profile
from intvit.tvm_backend.build import compile_onnx
from intvit.quantize.onnx_export import to_onnx


def _analytic_macs(spec, batch):
    """Multiply-accumulates of one forward pass, from the spec's shapes."""
    t, d, p = spec.num_tokens, spec.dim, spec.pos_patches.shape[0]
    total = batch * p * spec.patch_embed.weight.shape[1] * d
    for blk in spec.blocks:
        f = blk.fc1.weight.shape[0]
        total += batch * t * (3 * d * d + d * d + 2 * d * f) + 2 * batch * t * t * d
    if spec.head is not None:
        total += batch * spec.head.weight.numel()
    return total


def test_profile_counts_every_gemm_multiply_accumulate(tiny_qvit):
    compiled = compile_onnx(to_onnx(tiny_qvit), "llvm", batch=2)
    result = profile(compiled, repeat=2, peaks=False)
    classes = result["classes"]
    assert "other" not in classes, classes
    gemm = sum(c["gmac"] for label, c in classes.items() if label.startswith("GEMM")) * 1e9
    assert round(gemm) == _analytic_macs(tiny_qvit.spec, 2)
    blocks = len(tiny_qvit.spec.blocks)
    assert classes["GEMM int8: Q·Kᵀ"]["calls"] == blocks and classes["GEMM int16×int8: A·V"]["calls"] == blocks
    assert classes["LayerNorm"]["calls"] == 2 * blocks + 1
    table = format_profile(result)
    assert "GEMM int8: linear" in table and "T MAC/s" in table


def test_kernel_classes_by_name_and_shape():
    assert kernel_class("vm.builtin.alloc_tensor", []) == "VM builtins (allocation, checks)"
    assert kernel_class("int8_linear_requant2", [(1, 4, 17, 32), (1, 4, 17, 17)]) == "GEMM int8: Q·Kᵀ"
    assert kernel_class("int8_linear_requant2", [(1, 4, 17, 32), (1, 4, 17, 32)]) == "GEMM int8: Q·Kᵀ"  # padded
    assert kernel_class("int16_gemm_requant", [(1, 4, 17, 17), (1, 4, 17, 32)]) == "GEMM int16×int8: A·V"
    assert kernel_class("int8_linear_requant", [(1, 17, 128), (1, 17, 384)]) == "GEMM int8: linear"
    assert kernel_class("intlayernorm", [(1, 17, 128)]) == "LayerNorm"


def test_peaks_run_the_instruction_they_name_and_the_profile_compares_with_them(tiny_qvit):
    """``bench.peaks``: each loop's machine code holds its instruction and reaches a positive rate where
    the CPU has it (None where it does not); the profile then prints each GEMM class against the peak
    of its module's ISA. (Rates are printed, never checked: tests do not time.)"""
    from intvit.bench import peaks
    from intvit.tvm_backend.amx import host_has_amx
    from intvit.tvm_backend.x86 import has_features, host_cpu
    measured = peaks.measure_peaks(iterations=2000, repeats=1)
    assert measured["threads"] >= 1
    zmm = has_features(host_cpu(), "avx512bw", "avx512f")
    vnni = has_features(host_cpu(), "avx512vnni") or has_features(host_cpu(), "avxvnni")
    for key, (isa, _, features) in peaks.DOT_PEAKS.items():
        runs_here = has_features(host_cpu(), *features) and not (
            isa == "avx2" and (vnni or zmm != (key == "pmaddwd_zmm_tmacs")))
        assert (measured[key] > 0) if runs_here else (measured[key] is None), key
    # each loop holds one instruction per chain (none hoisted out as loop-invariant), on a CPU it is measured
    # for: the vpmaddwd loops read for CPUs without VNNI (on this one LLVM may fuse them into vpdpwssd)
    for key, cpu in (("vnni_tmacs", "icelake-server"), ("avxvnni_tmacs", "alderlake"),
                     ("pmaddwd_zmm_tmacs", "skylake-avx512"), ("pmaddwd_ymm_tmacs", "x86-64-v3")):
        asm = peaks._dot_kernel(measured["threads"], key, cpu).mod.inspect_source("asm")
        instruction = "vpdpbusd" if peaks.dot_of(key).accumulates else "vpmaddwd"
        assert asm.count(instruction) >= peaks.VNNI_CHAINS and ("zmm" in asm) == (peaks.dot_of(key).lanes == 16), key
    if host_has_amx():
        assert "tdpbusd" in peaks._amx_kernel(measured["threads"]).mod.inspect_source("asm")
        assert measured["amx_tmacs"] > 0
    else:
        assert measured["amx_tmacs"] is None
    compiled = compile_onnx(to_onnx(tiny_qvit), "llvm", batch=1)
    result = profile(compiled, repeat=1, peaks=False)
    result["peaks"] = measured
    table = format_profile(result)
    assert "measured int8 peaks" in table
    if (compiled.isa == "amx" and measured["amx_tmacs"]) or (compiled.isa != "amx" and measured["vnni_tmacs"]):
        assert "peak" in table.splitlines()[2] and "%" in next(l for l in table.splitlines() if "linear" in l)
    # a module on vpmaddwd (the 16-bit form) is compared with the vpmaddwd peak of its width
    assert peak_of({"isa": "avx2", "peaks": {"pmaddwd_ymm_tmacs": 0.2, "vnni_tmacs": 0.5}}) == ("vpmaddwd", 0.2)
    assert peak_of({"isa": "avxvnni", "peaks": {"avxvnni_tmacs": 0.4}}) == ("AVX-VNNI", 0.4)
    assert peak_of({"isa": "generic", "peaks": {"vnni_tmacs": 0.5}}) == ("VNNI", 0.5)
    assert peak_of({"isa": "amx", "peaks": {"vnni_tmacs": 0.5}}) is None


def test_ab_refuses_modules_that_compute_different_things(tiny_qvit, tiny_qvit_shiftgelu):
    """``bench.ab``: two builds of one model (AMX or VNNI and generic GEMMs) are compared and timed; modules
    of different models (or batch sizes) are refused with one message each, before any timing."""
    import pytest
    from intvit.bench.ab import compare
    proto = to_onnx(tiny_qvit)
    a, b = compile_onnx(proto, "llvm", batch=1), compile_onnx(proto, "llvm", batch=1, isa="generic")
    result = compare(a, b, repeat=1)
    assert set(result) == {"before_ms", "after_ms", "speedup", "disturbed"} and result["speedup"] > 0
    with pytest.raises(ValueError, match="different integer outputs"):
        compare(a, compile_onnx(to_onnx(tiny_qvit_shiftgelu), "llvm", batch=1), repeat=1)
    with pytest.raises(ValueError, match="same model and --batch"):
        compare(a, compile_onnx(proto, "llvm", batch=2), repeat=1)
