"""The sampling profile (``bench/sampling_profile.py``): perf's samples attributed to the kernels of a
module by its ELF function symbols; the bad arguments refused before anything runs."""
import shutil
import subprocess

import pytest

from intvit.bench import sampling_profile as sp
from intvit.tvm_backend.elf import function_symbols

LIB = "/tmp/intvit-modules-0/abc123.so"
SCRIPT = f"""\
          python     0     0.000000: PERF_RECORD_MMAP2 16142/16142: [0x7f2000002000(0x8e000) @ 0x2000 fe:00 2 0]: \
r-xp {LIB}
          python     0     0.000000: PERF_RECORD_MMAP2 16142/16142: [0x7f3000000000(0x1000) @ 0 fe:00 3 0]: \
r-xp /usr/lib/libc.so.6
     7f2000001010 ({LIB})
     7f2000001020 ({LIB})
     7f2000002500 ({LIB})
     7f2000000f00 ({LIB})
     ffffffff81000000 ([kernel.kallsyms])
     7f3000000100 (/usr/lib/libc.so.6)
"""
SYMBOLS = [(0x1000, 0x40, "shiftmax3_compute_"), (0x2400, 0x40, "int8_linear_requant_residual17_compute_")]


def test_samples_go_to_the_kernel_whose_code_holds_them():
    samples, mappings = sp.parse_perf_script(SCRIPT)
    assert mappings == {LIB: 0x7F2000000000, "/usr/lib/libc.so.6": 0x7F3000000000}
    assert len(samples) == 6 and samples[0] == (0x7F2000001010, LIB)
    counts = sp.attribute(samples, mappings, SYMBOLS, LIB)
    assert counts == {"shiftmax": 2,                           # 0x1010 and 0x1020: in or after its symbol
                      "int8_linear_requant_residual": 1,       # 0x2500: a parallel body after the symbol
                      "(module, before its first function)": 1,
                      "[kernel] (threads waiting, system calls)": 1, "[libc.so.6]": 1}
    by_function = sp.attribute(samples, mappings, SYMBOLS + [(0x900, 8, "__tvm_ffi_shiftmax3")], LIB,
                               sp.kernel_function)
    assert by_function["shiftmax3"] == 2 and by_function["int8_linear_requant_residual17"] == 1
    assert by_function["(kernel call wrappers)"] == 1


def test_a_compiled_modules_kernels_are_among_its_function_symbols(compiled_pair):
    _, so, _, _, _ = compiled_pair
    names = {sp.kernel_family(name) for _, _, name in function_symbols(so) if name.endswith("_compute_")}
    assert {"shiftmax", "intlayernorm_requant"} <= names and any(n.startswith("int8_linear") for n in names)


def test_bad_arguments_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as out:
        sp.main(["m.so"])
    assert out.value.code == 2 and "needs Linux perf on PATH" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/perf")
    for argv, phrase in ((["m.so", "--seconds", "0"], "must be positive"),
                         (["m.so", "--json", str(tmp_path / "no" / "r.json")], "does not exist")):
        with pytest.raises(SystemExit) as out:
            sp.main(argv)
        assert out.value.code == 2 and phrase in capsys.readouterr().err


def _perf_can_sample() -> bool:
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "record", "-q", "-o", "/dev/null", "--", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _perf_can_sample(), reason="needs Linux perf with permission to sample")
def test_a_real_module_is_profiled_with_its_kernels_named(compiled_pair, tmp_path, capsys):
    import json
    _, so, _, _, _ = compiled_pair
    assert sp.main([str(so), "--seconds", "2", "--warmup", "0.5", "--json", str(tmp_path / "p.json")]) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["runs"] > 0 and report["samples"] > 0 and abs(sum(r["share"] for r in report["rows"]) - 1) < 1e-9
    assert any(r["what"] == "shiftmax" for r in report["rows"]) and report["command"].startswith("python -m")
    assert "ms a run" in capsys.readouterr().out
