"""Compiled-module files that cannot lie, and a loaded module that serves concurrent callers (issue 15)."""
import json
import os
import shutil
import threading

import numpy as np
import pytest

from intvit.runtime import ModuleMismatchError, load
from intvit.tvm_backend.runtime import compile_to_file
from conftest import images


@pytest.fixture(autouse=True)
def private_module_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTVIT_MODULE_CACHE", str(tmp_path / "cache"))


def test_eight_threads_share_one_loaded_module(compiled_pair):
    """8 threads × 200 calls on one module, each thread its own image: every answer is that image's own
    (TVM's VM is not reentrant; without the module's lock this crashed or mixed up outputs)."""
    _, so, _, q, _ = compiled_pair
    module = load(so)
    inputs = [images(1, seed=100 + t) for t in range(8)]
    expected = [q.forward_int(x).numpy() for x in inputs]
    failures = []

    def worker(t):
        for _ in range(200):
            if not np.array_equal(module.run(inputs[t])[1], expected[t]):
                failures.append(t)
                return
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []


def test_recompiling_to_the_same_path_loads_the_new_code(compiled_pair, tmp_path):
    d, so_a, so_b, qa, qb = compiled_pair
    path = tmp_path / "m.so"
    x = images(1, seed=3)
    for src, q in ((so_a, qa), (so_b, qb), (so_a, qa)):
        shutil.copyfile(src, path)
        shutil.copyfile(str(src) + ".json", str(path) + ".json")
        assert np.array_equal(load(path).run(x)[1], q.forward_int(x).numpy())


def test_a_so_that_is_not_its_sidecars_is_refused(compiled_pair, tmp_path):
    d, so_a, so_b, _, _ = compiled_pair
    path, side = tmp_path / "m.so", tmp_path / "m.so.json"
    shutil.copyfile(str(so_a) + ".json", side)
    raw = so_a.read_bytes()
    cases = {"truncated": raw[:-1000], "one flipped bit": raw[:5000] + bytes([raw[5000] ^ 1]) + raw[5001:],
             "another model's": so_b.read_bytes()}
    for what, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(ModuleMismatchError, match="is not the module its sidecar .* was written for"):
            load(path)
    path.write_bytes(raw)
    meta = json.loads(side.read_text())
    del meta["so_sha256"]
    side.write_text(json.dumps(meta))
    with pytest.raises(ModuleMismatchError, match="names no digest of its .so"):
        load(path)


def test_truncated_module_through_the_cli_is_one_line(compiled_pair, tmp_path, capsys):
    from intvit.cli import main
    _, so_a, _, _, _ = compiled_pair
    path = tmp_path / "m.so"
    path.write_bytes(so_a.read_bytes()[:-1000])
    shutil.copyfile(str(so_a) + ".json", str(path) + ".json")
    np.save(tmp_path / "x.npy", images(1).numpy())
    assert main(["run", str(path), "--input", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "is not the module its sidecar" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_two_compiles_to_one_path_leave_a_consistent_pair(compiled_pair, tmp_path):
    """Two `intvit compile` processes writing the same path at once: the .so and sidecar that remain belong
    together (the renames are one unit under a directory lock), and no temp file is left behind."""
    import subprocess
    import sys
    d, _, _, qa, qb = compiled_pair
    out = tmp_path / "m.so"
    procs = [subprocess.Popen([sys.executable, "-m", "intvit", "compile", str(d / f"{name}.onnx"), "-o", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for name in ("a", "b")]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-500:]
    x = images(1, seed=8)
    got = load(out).run(x)[1]
    assert np.array_equal(got, qa.forward_int(x).numpy()) or np.array_equal(got, qb.forward_int(x).numpy())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.so")) == ["m.so", "m.so.json"]


def test_a_killed_writers_temp_files_are_swept_by_the_next_writer(compiled_pair, tmp_path, tiny_qvit):
    """SIGKILL leaves a writer's temp behind; the next compile or save of the same path removes every temp
    whose process is gone, and leaves a live writer's alone."""
    import subprocess
    import sys
    from intvit.files import temp_name
    d, _, _, _, _ = compiled_pair
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    killed.wait()
    for target in (tmp_path / "m.so", tmp_path / "m.safetensors"):
        stale = str(target) + f".tmp-{killed.pid}-0123456789ab.so"
        live = temp_name(target)                       # this process: alive
        for p in (stale, live):
            with open(p, "w") as f:
                f.write("half")
        if target.suffix == ".so":
            compile_to_file(d / "a.onnx", target)
        else:
            tiny_qvit.save(target)
        leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(target.name + ".tmp-"))
        assert leftovers == [os.path.basename(live)]
        os.remove(live)


def test_the_sidecar_records_the_gemm_isa_and_load_checks_amx(compiled_pair, tmp_path, monkeypatch):
    """An AMX module's sidecar says so and lists the AMX features; loading it where Linux refuses the tile
    state is one clear error (simulated), not a SIGILL. --isa forces the schedule."""
    from intvit.tvm_backend import amx, runtime
    d, _, _, q, _ = compiled_pair
    if not amx.host_has_amx():
        pytest.skip("this CPU (or Linux) has no AMX")
    meta = compile_to_file(d / "a.onnx", tmp_path / "amx.so")
    assert meta["isa"] == "amx" and {"amx-tile", "amx-int8"} <= set(meta["cpu_features"])
    vnni = compile_to_file(d / "a.onnx", tmp_path / "vnni.so", isa="vnni")
    assert vnni["isa"] == "vnni" and "amx-int8" not in vnni["cpu_features"]
    x = images(1, seed=4)
    assert np.array_equal(load(tmp_path / "amx.so").run(x)[1], load(tmp_path / "vnni.so").run(x)[1])
    monkeypatch.setattr(runtime, "request_tile_permission", lambda: False)
    with pytest.raises(ModuleMismatchError, match="Linux refused this process the AMX tile state"):
        load(tmp_path / "amx.so")
    load(tmp_path / "vnni.so")                    # a VNNI module does not need the tiles
