"""MetaSchedule tuning of the CPU GEMMs (``--tune N``): the search space is exact, tuned modules are
bit-exact, the database is reused, and the CLI records what it did."""
import json

import numpy as np
import pytest
import torch

from intvit import ops
from intvit.quantize.onnx_export import to_onnx
from intvit.tvm_backend import gemm, schedules, tuning
from intvit.tvm_backend.build import compile_onnx, fuse, make_target, resolve_target
from intvit.tvm_backend.importer import to_relax
from conftest import assert_matches_reference, images
from test_onnx_export import adversarial_inputs
from test_tvm_gemm import HOST_HAS_VNNI, NO_VNNI, _run_prim


@pytest.mark.parametrize("vnni", [pytest.param(True, marks=pytest.mark.skipif(
    not HOST_HAS_VNNI, reason="this CPU has no AVX-512 VNNI")), False])
@pytest.mark.parametrize("order", schedules.BLOCK_ORDERS)
def test_every_point_of_the_design_space_is_exact(vnni, order):
    """Sampled cache blockings and K unrolls (both block orders, several draws) only move loops: each
    scheduled kernel equals ``ops.int_linear`` on a ragged GEMM with a batch axis."""
    import tvm
    from tvm import te
    rng = np.random.default_rng(3)
    lead, rows, k, n = (2,), 61, 72, 128      # 4 panels, 9 row tiles, 18 K steps: several blockings
    x = rng.integers(-128, 128, (*lead, rows, k)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = rng.integers(-2**20, 2**20, n)
    mr, nr = gemm.linear_tile(n)
    wp = gemm.pack_linear_weight(w, nr)
    xt, wt = te.placeholder(x.shape, "int8", name="x"), te.placeholder(wp.shape, "int8", name="w")
    bt = te.placeholder((n,), "int64", name="b")
    func = te.create_prim_func([xt, wt, bt, gemm.packed_gemm_te(xt, wt, bt, mr, n)])
    ref = ops.int_linear(torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(bias)).numpy()
    decisions = set()
    for seed in range(1, 7):
        sch = tvm.s_tir.Schedule(func, seed=seed)
        schedules.apply_gemm_schedule(sch, vnni, blocking=order)
        decisions.add(str([d for _, d in sch.trace.decisions.items()]))
        got = _run_prim(sch.mod["main"], resolve_target("llvm") if vnni else NO_VNNI, x, wp,
                        gemm.folded_bias(w, bias), out_shape=(*lead, rows, n), out_dtype="int64")
        assert np.array_equal(got, ref)
    assert len(decisions) > 1          # the draws did explore different blockings


def test_tuned_module_is_exact_and_its_database_is_reused(tiny_qvit, tmp_path):
    proto = to_onnx(tiny_qvit)
    db = str(tmp_path / "tuning")
    first = compile_onnx(proto, "llvm", batch=4, tune=2, tuning_dir=db)
    s = first.tuning
    assert s.tuned == s.shapes > 0 and s.reused == 0 and s.verified is True
    assert s.kernels >= s.shapes          # layers of one shape share a task
    x = adversarial_inputs(8, 3, 32, tiny_qvit.scales["input"])
    assert_matches_reference(tiny_qvit, x, lambda batch: first, batches=(4,))
    again = compile_onnx(proto, "llvm", batch=4, tune=2, tuning_dir=db)
    assert (again.tuning.tuned, again.tuning.reused, again.tuning.verified) == (0, s.shapes, True)
    assert_matches_reference(tiny_qvit, x, lambda batch: again, batches=(4,))


def test_database_schedules_every_gemm_with_a_tuned_trace(tiny_qvit, tmp_path):
    """After tuning, each GEMM kernel (also the layers that were not the task's representative) is
    scheduled from a record: its body has the sampled cache-block loops the hand schedule lacks."""
    target = make_target(resolve_target("llvm"))
    fused = fuse(to_relax(to_onnx(tiny_qvit), 2), target)
    database, summary = tuning.tune_gemms(fused, target, 2, str(tmp_path / "db"), vnni=HOST_HAS_VNNI)
    kernels = tuning.gemm_functions(fused)
    assert len(kernels) == summary.kernels
    scheduled = tuning.schedule_with_database(fused, database, target)
    for gv in kernels:
        func = scheduled[gv]
        assert schedules.SCHEDULED_ATTR in func.attrs and "global_symbol" not in func.attrs
        hand = schedules.schedule_gemm(kernels[gv], HOST_HAS_VNNI)
        assert func.script().count("for ") > hand.script().count("for ")


def test_verification_catches_a_module_that_differs(tiny_qvit):
    """The post-tuning check is not vacuous: a module built from another graph (one requant
    multiplier changed) differs from ONNX Runtime on this graph."""
    from onnx import numpy_helper
    proto = to_onnx(tiny_qvit)
    other = to_onnx(tiny_qvit)
    init = next(t for t in other.graph.initializer if t.name == "blocks.0.qkv.rq.m")
    arr = numpy_helper.to_array(init).copy()
    arr += arr // 3          # every qkv output channel rescaled by 4/3
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    assert not tuning.differs_from_onnx_runtime(compile_onnx(proto, "llvm", batch=2), proto)
    assert tuning.differs_from_onnx_runtime(compile_onnx(other, "llvm", batch=2), proto)


def test_compile_cli_tune_records_tuning_in_the_sidecar(tiny_qvit, tmp_path, capsys):
    from intvit.cli import main
    from intvit.runtime import load
    onnx_path, so = tmp_path / "m.onnx", tmp_path / "m.so"
    tiny_qvit.export_onnx(onnx_path)
    assert main(["compile", str(onnx_path), "--batch", "2", "--tune", "2", "-o", str(so)]) == 0
    out = capsys.readouterr().out
    assert "tuned module equals ONNX Runtime" in out
    meta = json.loads((tmp_path / "m.so.json").read_text())
    assert meta["tuning"]["verified"] is True and meta["tuning"]["tuned"] == meta["tuning"]["shapes"]
    assert meta["tuning"]["tune_wall_s"] > 0 and meta["tuning"]["database"] == str(so) + ".tuning"
    assert (tmp_path / "m.so.tuning" / "database_tuning_record.json").stat().st_size > 0
    x = images(2, seed=9)
    assert np.array_equal(load(so).run(x)[1], tiny_qvit.forward_int(x).numpy())
    # bad input: tuning a CUDA module, a negative trial count; nothing written
    assert main(["compile", str(onnx_path), "--target", "cuda", "--arch", "sm_90", "--tune", "2",
                 "-o", str(tmp_path / "c.so")]) == 2
    assert "--tune tunes the CPU kernels" in capsys.readouterr().err
    assert main(["compile", str(onnx_path), "--tune", "-1", "-o", str(tmp_path / "d.so")]) == 2
    assert "argument --tune: must be at least 0" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("c.so", "d.so", "c.so.tuning", "d.so.tuning"))


def test_a_tuned_module_that_fails_verification_falls_back_to_the_hand_schedules(tiny_qvit, tmp_path,
                                                                                  monkeypatch):
    """If the post-tuning check reports a difference, the module is rebuilt with the hand schedules
    (from a fresh import: tuning must not have rewritten them) and the summary says so."""
    proto = to_onnx(tiny_qvit)
    monkeypatch.setattr(tuning, "differs_from_onnx_runtime", lambda compiled, proto: True)
    with pytest.warns(UserWarning, match="using the hand schedules"):
        module = compile_onnx(proto, "llvm", batch=2, tune=2, tuning_dir=str(tmp_path / "db"))
    assert module.tuning.verified is False and module.tuning.tuned > 0
    assert_matches_reference(tiny_qvit, adversarial_inputs(4, 3, 32, tiny_qvit.scales["input"]),
                             lambda batch: module, batches=(2,))
