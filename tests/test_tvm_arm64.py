"""ARM64 (AArch64) builds: the int8 GEMMs on ``sdot`` (``isa="dotprod"``, ``arm.SDOT``: signed int8 operands, no
+128 shift, no compensation), compiled here by LLVM's AArch64 backend (``--cpu neoverse-n1``, ...).

AArch64 code cannot run on this x86 machine, so the signed operand form's arithmetic is checked here by building
the same import for this CPU without the tensor intrinsic (exact against the torch integer model), the AArch64
build by its assembly (``sdot`` in every int8 GEMM kernel), and the whole module under an AArch64 emulator where
one is set up (``INTVIT_AARCH64_PYTHON``: a command running an AArch64 Python with the aarch64 wheels of intvit's
dependencies, e.g. qemu-user; ``bench/aarch64_emulator.sh`` builds one)."""
import json
import os
import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest
import torch

from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend import arm, build, gemm, x86
from intvit.tvm_backend.build import IsaUnavailableError, UnknownTargetError, compile_onnx, make_target, resolve_target
from intvit.tvm_backend.inspect_ir import float_ops_in_integer_region
from conftest import assert_matches_reference, int8_linear_case, packed_linear_kernel
from test_onnx_export import adversarial_inputs

N1 = "neoverse-n1"          # Graviton2, Ampere Altra: NEON + dotprod
A72 = "cortex-a72"          # Graviton1, Raspberry Pi 4: NEON, no dotprod
V1 = "neoverse-v1"          # Graviton3: dotprod + i8mm
EMULATOR = os.environ.get("INTVIT_AARCH64_PYTHON")
HAS_CROSS = shutil.which("aarch64-linux-gnu-gcc") is not None
E = 24


def _functions(asm: str) -> dict:
    """The functions of an assembly listing by label."""
    parts = re.split(r"\n(?=[A-Za-z_][\w.]*:\n)", asm)
    return {p.split(":", 1)[0]: p for p in parts}


def _library_asm(compiled) -> str:
    ex = compiled.executable.mod
    (llvm,) = [m for m in (ex.imports if hasattr(ex, "imports") else ex.imported_modules) if m.kind == "llvm"]
    return llvm.inspect_source("asm")


def test_targets_defaults_and_refusals():
    """An ARM CPU name gets the AArch64 triple and ``sdot`` where it has the dot-product extension, ``generic``
    where not; forcing an instruction set of the other architecture, or ``dotprod`` on a CPU without it, is one
    clear error naming the default."""
    n1 = resolve_target("llvm", cpu=N1)
    assert n1["mtriple"] == arm.TRIPLE and n1["mcpu"] == N1 and "mattr" not in n1
    assert "mtriple" not in resolve_target("llvm", cpu="x86-64-v3")
    assert build.resolve_isa(None, make_target(n1)) == "dotprod"
    assert build.resolve_isa(None, make_target(resolve_target("llvm", cpu=V1))) == "dotprod"
    assert build.resolve_isa(None, make_target(resolve_target("llvm", cpu=A72))) == "generic"
    with pytest.raises(IsaUnavailableError, match="cortex-a72 has no dot-product extension.*leave isa unset for "
                                                  "the best this target has \\('generic'\\)"):
        build.resolve_isa("dotprod", make_target(resolve_target("llvm", cpu=A72)))
    with pytest.raises(IsaUnavailableError, match="'vnni' is an x86 instruction set and the target CPU neoverse-n1"):
        build.resolve_isa("vnni", make_target(n1))
    with pytest.raises(IsaUnavailableError, match="'dotprod' is an AArch64 instruction set"):
        build.resolve_isa("dotprod", make_target(resolve_target("llvm", cpu="x86-64-v3")))
    with pytest.raises(UnknownTargetError, match="or of an ARM64 one, e.g. neoverse-n1"):
        resolve_target("llvm", cpu="neoverse-n99")
    plan = x86.gemm_isa("dotprod", make_target(n1))
    assert (plan.int8_dot, plan.vectors, plan.dots) == (arm.SDOT, "neon", {"int8": arm.SDOT})
    assert x86.gemm_isa("generic", make_target(resolve_target("llvm", cpu=A72))).int8_dot is arm.SDOT
    assert x86.isa_features(V1, triple=arm.TRIPLE) == ["neon", "dotprod", "i8mm"]
    assert x86.isa_features(A72, triple=arm.TRIPLE) == ["neon"]


def test_cpuinfo_features_line_of_an_arm_cpu():
    """On AArch64 Linux reports extensions on a ``Features`` line: ``asimddp`` is LLVM's ``dotprod``."""
    text = ("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
            "asimdrdm lrcpc dcpop asimddp i8mm\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n")
    assert x86.reported_features(text) == ("neon", "dotprod", "i8mm")


def _signed_linear(x_shape, n: int, k: int):
    """A linear layer as the importer builds it for ``sdot``: int8 activations unshifted against int8 panels,
    the NEON tile."""
    return packed_linear_kernel(x_shape, n, k, arm.SDOT, "neon", E)


@pytest.mark.parametrize("lead,rows,k,n", [((), 197, 64, 1000), ((2,), 17, 30, 20), ((), 5, 100, 10)])
def test_signed_linear_kernel_is_exact_here_and_sdot_on_arm64(lead, rows, k, n):
    """The sdot-form linear kernel (ragged rows, K not a multiple of 4, N not a multiple of 16; int8 extremes)
    scheduled without the intrinsic runs here equal to ``ops``' arithmetic; the same kernel tensorized for an
    ARM64 CPU holds ``sdot`` (four per 16-lane panel and K step) and no x86 instruction."""
    import tvm
    from intvit.tvm_backend import schedules
    x, w, bias, m, ref = int8_linear_case(lead, rows, k, n, E)
    func, nr = _signed_linear(x.shape, n, k)
    here = schedules.schedule_gemm(func, vnni=False, dots={})
    lib = tvm.compile(tvm.IRModule({"main": here.with_attr("global_symbol", "main")}), target="llvm")
    out = tvm.runtime.tensor(np.zeros((*lead, rows, n), np.int8))
    lib["main"](*[tvm.runtime.tensor(a) for a in (x, gemm.pack_linear_weight(w, nr, arm.SDOT.group), bias, m)], out)
    assert np.array_equal(out.numpy(), ref)
    n1 = make_target(resolve_target("llvm", cpu=N1))
    arm_func = schedules.schedule_gemm(func, vnni=False, dots={"int8": arm.SDOT})
    asm = tvm.compile(tvm.IRModule({"main": arm_func.with_attr("global_symbol", "main")}),
                      target=n1).mod.inspect_source("asm")
    assert asm.count("sdot\t") >= 4 and "vpdpbusd" not in asm and "zmm" not in asm


@pytest.mark.parametrize("order", ["columns", "rows"])
def test_tuning_space_of_the_sdot_form_is_exact_and_keeps_sdot(order):
    """``--tune`` on an ARM64 machine: the sampled cache blockings of an sdot-form kernel
    (``schedules.apply_gemm_schedule`` with ``blocking``, as ``tuning`` samples it) run exactly here without the
    intrinsic, and tensorized for ``neoverse-n1`` keep ``sdot``."""
    import tvm
    from intvit.tvm_backend import schedules
    x, w, bias, m, ref = int8_linear_case((2,), 61, 72, 128, E)
    func, nr = _signed_linear(x.shape, 128, 72)
    wp = gemm.pack_linear_weight(w, nr, arm.SDOT.group)
    n1 = make_target(resolve_target("llvm", cpu=N1))
    decisions = set()
    for seed in range(1, 5):
        for dots, target in (({}, "llvm"), ({"int8": arm.SDOT}, n1)):
            sch = tvm.s_tir.Schedule(func, seed=seed)
            schedules.apply_gemm_schedule(sch, False, blocking=order, dots=dots)
            lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}),
                              target=target)
            if dots:
                assert "sdot\t" in lib.mod.inspect_source("asm")
                decisions.add(str([d for _, d in sch.trace.decisions.items()]))
            else:
                out = tvm.runtime.tensor(np.zeros((2, 61, 128), np.int8))
                lib["main"](*[tvm.runtime.tensor(a) for a in (x, wp, bias, m)], out)
                assert np.array_equal(out.numpy(), ref)
    assert len(decisions) > 1


def _arm_form(proto, batch: int, isa: str | None, target):
    """``proto`` imported and scheduled as for an ARM64 CPU (``isa`` on ``target``'s GEMM plan)."""
    plan = x86.gemm_isa(isa, target)
    with gemm.int8_gemm(plan.int8_dot), gemm.gemm_vectors(plan.vectors):
        return build.fuse(build.to_relax(proto, batch), target)


def test_signed_form_of_the_whole_model_equals_torch_here(tiny_qvit):
    """The tiny model imported as for ARM64 (every int8 GEMM on unshifted int8 operands and int8 panels, no
    compensation kernel, the NEON tile) and built for this CPU without the intrinsic equals the torch integer
    model at batch 1 and 8; no float op between quantizer and dequantize."""
    import tvm
    q = tiny_qvit
    x = adversarial_inputs(16, 3, 32, q.scales["input"])
    proto = to_onnx(q)
    here = make_target(resolve_target("llvm"))
    modules = {}
    for batch in (1, 8):
        fused = _arm_form(proto, batch, "dotprod", make_target(resolve_target("llvm", cpu=N1)))
        names = [gv.name_hint for gv in fused.functions]
        assert not any("compensation" in name for name in names)
        from intvit.tvm_backend.schedules import schedule_module
        scheduled = schedule_module(fused, vnni=False, dots={})
        assert float_ops_in_integer_region(scheduled) == []
        linears = [f for gv, f in scheduled.functions.items() if gv.name_hint.startswith("int8_linear")]
        assert len(linears) >= 4 * len(q.spec.blocks) and all(str(f.params[1].ty.dtype) == "int8" for f in linears)
        modules[batch] = build.wrap_executable(tvm.compile(scheduled, target=here), proto, batch)
    assert_matches_reference(q, x, lambda batch: modules[batch])


@pytest.mark.parametrize("cpu,isa,sdot", [(N1, "dotprod", True), (A72, "generic", False)])
def test_whole_model_for_arm64_has_sdot_in_every_int8_gemm(tiny_qvit, cpu, isa, sdot):
    """``compile_onnx(cpu=...)`` for an ARM64 CPU: with the dot-product extension every int8 GEMM kernel
    (linear layers and ``Q·Kᵀ``) runs ``sdot`` and A·V widening multiply-adds (``smlal``); without it no
    ``sdot`` anywhere. Called here, the module refuses in one line (it is AArch64 code)."""
    compiled = compile_onnx(to_onnx(tiny_qvit), "llvm", batch=8, cpu=cpu)
    assert (compiled.isa, compiled.cpu_arch) == (isa, "aarch64")
    funcs = _functions(_library_asm(compiled))
    int8_gemms = {k: v for k, v in funcs.items() if k.startswith("int8_linear") and k.endswith("_compute_")}
    assert len(int8_gemms) >= 5 * len(tiny_qvit.spec.blocks)
    assert all(("sdot\t" in body) == sdot for body in int8_gemms.values())
    if not sdot:
        assert not any("sdot\t" in body for body in funcs.values())
    av = [body for name, body in funcs.items() if name.startswith("int16_gemm") and name.endswith("_compute_")]
    assert av and all("smlal" in body for body in av)
    with pytest.raises(IsaUnavailableError, match="compiled for aarch64 CPUs and this machine is x86_64"):
        compiled(np.zeros(compiled.input_shape, np.float32))


def test_module_file_for_arm64(tiny_qvit, tmp_path, monkeypatch, capfd):
    """``intvit compile --cpu neoverse-n1``: with the cross compiler on PATH the sidecar records the
    architecture and the extensions, and this x86 machine refuses to load it in one line; without it, one
    error says what to install, before anything is compiled or written."""
    from intvit.cli import main
    from intvit.tvm_backend.runtime import ModuleMismatchError, load
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(to_onnx(tiny_qvit).SerializeToString())
    out = tmp_path / "arm.so"
    if HAS_CROSS:
        assert main(["compile", str(onnx_path), "-o", str(out), "--cpu", N1]) == 0
        meta = json.loads((tmp_path / "arm.so.json").read_text())
        assert (meta["cpu_arch"], meta["mcpu"], meta["isa"], meta["cpu_features"]) == \
            ("aarch64", N1, "dotprod", ["neon", "dotprod"])
        with pytest.raises(ModuleMismatchError, match="was built for aarch64 CPUs .* and this machine is x86_64"):
            load(out)
        out.unlink()
        (tmp_path / "arm.so.json").unlink()
    monkeypatch.setenv("PATH", str(tmp_path))           # no cross compiler
    with pytest.raises(UnknownTargetError, match="needs the cross compiler aarch64-linux-gnu-gcc.*apt-get install "
                                                 "gcc-aarch64-linux-gnu"):
        from intvit.tvm_backend.runtime import compile_to_file
        compile_to_file(onnx_path, out, cpu=N1)
    capfd.readouterr()
    assert main(["compile", str(onnx_path), "-o", str(out), "--cpu", N1]) not in (0, None)
    printed, err = capfd.readouterr()
    assert printed == "" and len(err.strip().splitlines()) == 1 and "aarch64-linux-gnu-gcc" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_module_for_another_architecture_is_refused_by_load(tiny_qvit, tmp_path):
    """A sidecar that names another CPU architecture (here an x86 module's, re-signed as ``aarch64``, the
    sidecar an ARM64 build writes) makes ``load`` refuse in one line, before the library is opened."""
    from intvit.tvm_backend.runtime import ModuleMismatchError, compile_to_file, load, sidecar_digest
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(to_onnx(tiny_qvit).SerializeToString())
    meta = compile_to_file(onnx_path, tmp_path / "m.so")
    assert meta["cpu_arch"] == "x86_64"
    meta = {**meta, "cpu_arch": "aarch64", "mcpu": N1}
    meta["sidecar_sha256"] = sidecar_digest(meta)
    (tmp_path / "m.so.json").write_text(json.dumps(meta))
    with pytest.raises(ModuleMismatchError, match="was built for aarch64 CPUs \\('neoverse-n1'\\) and this machine "
                                                  "is x86_64; run it on such a machine"):
        load(tmp_path / "m.so")


@pytest.mark.skipif(not (EMULATOR and HAS_CROSS), reason="no AArch64 emulator (INTVIT_AARCH64_PYTHON) or no "
                                                         "cross compiler (aarch64-linux-gnu-gcc)")
def test_arm64_module_runs_exactly_under_emulation(tiny_qvit, tmp_path):
    """The module files for ``neoverse-n1`` (sdot) and ``cortex-a72`` (generic), batch 1 and 8, loaded by
    ``intvit.runtime.load`` in an AArch64 Python and run on the adversarial images, equal the torch integer
    model; so does the module that AArch64 Python compiles itself, for its own (emulated Neoverse N1) CPU, whose
    sidecar names that CPU, ``dotprod`` and its features (the native path of an ARM machine)."""
    from intvit.tvm_backend.runtime import compile_to_file
    q = tiny_qvit
    x = adversarial_inputs(16, 3, 32, q.scales["input"])
    ref = torch.cat([q.forward_int(x[i:i + 8]) for i in range(0, 16, 8)]).numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "ref.npy", ref)
    (tmp_path / "m.onnx").write_bytes(to_onnx(q).SerializeToString())
    names = []
    for cpu in (N1, A72):
        for batch in (1, 8):
            names.append(f"{cpu}_b{batch}.so")
            compile_to_file(tmp_path / "m.onnx", tmp_path / names[-1], batch=batch, cpu=cpu)
    script = tmp_path / "check.py"
    script.write_text(
        "import sys, numpy as np\nfrom intvit.runtime import load\n"
        f"d = {str(tmp_path)!r}\nx, ref = np.load(d + '/x.npy'), np.load(d + '/ref.npy')\n"
        "from intvit.tvm_backend.runtime import compile_to_file\n"
        "meta = compile_to_file(d + '/m.onnx', d + '/native_b8.so', batch=8)\n"
        "print('native', meta['mcpu'], meta['isa'], meta['cpu_arch'], ','.join(meta['cpu_features']))\n"
        "for name in sys.argv[1:] + ['native_b8.so']:\n"
        "    m = load(d + '/' + name)\n    b = m.meta['batch']\n"
        "    got = np.concatenate([m.run(x[i:i + b])[1] for i in range(0, 16, b)])\n"
        "    print(name, 'exact' if np.array_equal(got, ref) else 'DIFFERS')\n")
    proc = subprocess.run([*shlex.split(EMULATOR), str(script), *names], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "native neoverse-n1 dotprod aarch64 neon,dotprod" in proc.stdout.splitlines()
    assert [line for line in proc.stdout.splitlines() if line.endswith(("exact", "DIFFERS"))] == \
        [f"{name} exact" for name in names + ["native_b8.so"]]
    from intvit.bench.aarch64_check import check
    assert check(str(tmp_path / "m.onnx"), EMULATOR, batch=8, images=8).startswith("identical (8 images")


def test_aarch64_check_needs_an_aarch64_python(monkeypatch, capsys):
    """``python -m intvit.bench.aarch64_check`` without an AArch64 Python says how to get one."""
    from intvit.bench.aarch64_check import main
    monkeypatch.delenv("INTVIT_AARCH64_PYTHON", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["m.onnx"])
    assert exit_.value.code == 2 and "bash bench/aarch64_emulator.sh" in capsys.readouterr().err


def test_on_an_arm64_machine_without_a_triple(monkeypatch):
    """Compiling natively on an ARM64 machine (a target without a triple): the features a module's sidecar
    lists, and the default instruction set, are the ARM CPU's (checked here with this machine named
    ``aarch64``; under the emulator ``intvit compile`` without ``--cpu`` does the same for real)."""
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert x86.isa_features(N1) == ["neon", "dotprod"] and x86.isa_features(A72) == ["neon"]
    native = make_target({"kind": "llvm", "mcpu": N1})
    assert arm.is_aarch64(native) and arm.target_arch({"kind": "llvm"}) == "aarch64"
    assert build.resolve_isa(None, native) == "dotprod"
    assert build.resolve_isa(None, make_target({"kind": "llvm", "mcpu": A72})) == "generic"
    assert not arm.needs_cross_compiler({"kind": "llvm", "mcpu": N1, "mtriple": arm.TRIPLE})
