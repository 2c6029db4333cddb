"""The next-panel prefetch of the hand-scheduled linear GEMMs (``tvm_backend.prefetch``)."""
import numpy as np
import pytest

from intvit.tvm_backend import gemm, schedules
from intvit.tvm_backend.prefetch import CACHE_LINE, PanelWalk, next_tile_offsets, prefetch_offsets


@pytest.mark.parametrize("row_tiles,blocks,block_bytes", [
    (40, 32, 18432),        # DeiT-S fc1 at batch 1: K = 384, NR = 3
    (40, 8, 73728),         # fc2: K = 1536
    (316, 24, 18432),       # qkv at batch 8: more tiles than the block has lines
    (3, 2, 6 * 64 + 8),     # a block that is not whole cache lines
    (1, 1, 640),
])
def test_the_tiles_of_each_block_prefetch_all_of_the_next_block(row_tiles, blocks, block_bytes):
    walk = PanelWalk("w", row_tiles, blocks, block_bytes, blocks * block_bytes)
    for lead in range(2):                      # a leading index (batch item) repeats the walk
        for block in range(blocks):
            tasks = [(lead * blocks + block) * row_tiles + t for t in range(row_tiles)]
            offsets = [o for task in tasks for o in prefetch_offsets(walk, task)]
            assert all(0 <= o < walk.weight_bytes for o in offsets)
            nxt = (block + 1) % blocks
            wanted = {(nxt * block_bytes + b) // CACHE_LINE for b in range(0, block_bytes, CACHE_LINE)}
            wanted.add((nxt * block_bytes + block_bytes - 1) // CACHE_LINE)
            assert wanted <= {o // CACHE_LINE for o in offsets}


@pytest.mark.parametrize("leads,rows,cols,tile_rows,block_cols,element_bytes", [
    (2, 197, 384, 5, 48, 2),        # DeiT-S's residual stream at batch 2: int16, 5 × 3 tiles
    (1, 13, 40, 7, 32, 2),          # ragged: the last tile's rows and the last block's columns past the end
    (3, 5, 97, 5, 48, 8),           # int64 skip values
])
def test_each_task_prefetches_every_skip_line_the_next_task_reads(leads, rows, cols, tile_rows, block_cols,
                                                                  element_bytes):
    row_tiles, blocks = -(-rows // tile_rows), -(-cols // block_cols)
    walk = PanelWalk("w", row_tiles, blocks, 64, 64 * blocks, leads=leads, tile_rows=tile_rows, rows=rows,
                     block_cols=block_cols, cols=cols, skips=(("h", element_bytes),))
    line = lambda element: element * element_bytes // CACHE_LINE  # noqa: E731
    for task in range(walk.tasks):
        offsets = next_tile_offsets(walk, task, element_bytes)
        assert all(0 <= o < leads * rows * cols for o in offsets)
        nxt = min(task + 1, walk.tasks - 1)
        t, j, b = nxt % row_tiles, nxt // row_tiles % blocks, nxt // (row_tiles * blocks)
        read = {line((b * rows + r) * cols + c)
                for r in range(t * tile_rows, min((t + 1) * tile_rows, rows))
                for c in range(j * block_cols, min((j + 1) * block_cols, cols))}
        assert read <= {line(o) for o in offsets}


def _linear_kernel(rows, k, n, lead=()):
    from tvm import te
    mr, nr = gemm.linear_tile(n)
    wp = gemm.pack_linear_weight(np.zeros((k, n), np.int8), nr, amx=False)
    xt = te.placeholder((*lead, rows, k), "int8", name="x")
    wt = te.placeholder(wp.shape, "int8", name="w")
    bt = te.placeholder((n,), "int64", name="b")
    with gemm.amx_layout(False):
        return te.create_prim_func([xt, wt, bt, gemm.packed_gemm_te(xt, wt, bt, mr, n)]), wp.shape, mr, nr


def test_a_vnni_linear_kernel_prefetches_its_next_panel_block_in_each_task():
    func, shape, mr, nr = _linear_kernel(197, 384, 1536)
    text = schedules.schedule_gemm(func, vnni=True).script()
    row_tiles, block_bytes = -(-197 // mr), nr * shape[1] * shape[2] * shape[3]
    lines = -(-block_bytes // (CACHE_LINE * row_tiles))
    assert text.count("\"llvm.prefetch") == lines
    # inside the parallel tile loop, ahead of the tile's blocks
    assert text.index("T.parallel") < text.index("\"llvm.prefetch") < text.rindex("int_gemm_acc")


def test_attention_and_non_vnni_kernels_are_left_without_prefetch():
    from tvm import te
    func, _, _, _ = _linear_kernel(197, 384, 1536)
    assert "llvm.prefetch" not in schedules.schedule_gemm(func, vnni=False).script()
    # Q·Kᵀ: keys packed per batch item and head in-graph (hot in cache), no shared weight to walk
    mr, nr = gemm.import_tile(197)
    q = te.placeholder((2, 3, 197, 64), "int8", name="q")
    panels = te.placeholder((2, 3, -(-197 // (16 * nr)) * nr, 16, 16, 4), "int8", name="panels")
    comp = te.placeholder((2, 3, int(panels.shape[2]) * 16), "int64", name="comp")
    with gemm.amx_layout(False):
        qk = te.create_prim_func([q, panels, comp, gemm.packed_gemm_te(q, panels, comp, mr, 197)])
    assert "llvm.prefetch" not in schedules.schedule_gemm(qk, vnni=True).script()


def test_a_residual_kernel_also_prefetches_the_next_tiles_skip_rows():
    from tvm import te
    from intvit.tvm_backend.kernels import rescale_value, residual_value
    rows, k, n = 197, 384, 384
    mr, nr = gemm.linear_tile(n)
    wp = gemm.pack_linear_weight(np.zeros((k, n), np.int8), nr, amx=False)
    xt = te.placeholder((rows, k), "int8", name="x")
    wt = te.placeholder(wp.shape, "int8", name="w")
    skip = te.placeholder((rows, n), "int16", name="skip")
    epilogue = lambda z, idx: residual_value(rescale_value(z, idx, 3, 2, 2), skip, idx, [5, 3, 4],  # noqa: E731
                                             -32768, 32767)
    with gemm.amx_layout(False):
        out = gemm.packed_gemm_te(xt, wt, None, mr, n, epilogue=epilogue, out_dtype="int16", nr=nr)
        text = schedules.schedule_gemm(te.create_prim_func([xt, wt, skip, out]), vnni=True).script()
    row_tiles, block_bytes = -(-rows // mr), nr * wp.shape[1] * wp.shape[2] * wp.shape[3]
    weight_lines = -(-block_bytes // (CACHE_LINE * row_tiles))
    skip_lines = mr * len({*range(0, nr * 16 * 2, CACHE_LINE), nr * 16 * 2 - 2})
    assert text.count("\"llvm.prefetch") == weight_lines + skip_lines
    assert text.count("skip.data") >= skip_lines


def test_the_prefetch_kernel_benchmark_compares_equal_outputs_and_refuses_bad_arguments(tmp_path, capsys):
    import json
    from intvit.bench import prefetch_kernels
    r = prefetch_kernels.compare(batch=1, k=64, n=48, epilogue="residual", reps=1, cold_mb=0.05)
    assert r["without_ms"] > 0 and r["with_ms"] > 0 and r["input_copies"] >= 2
    with pytest.raises(SystemExit) as bad:
        prefetch_kernels.main(["--models", "resnet50"])
    assert bad.value.code == 2 and "unknown model 'resnet50'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prefetch_kernels.main(["--batch", "0"])
    with pytest.raises(SystemExit) as bad:                 # before any kernel is built
        prefetch_kernels.main(["--json", str(tmp_path / "no" / "k.json")])
    assert bad.value.code == 2 and "does not exist" in capsys.readouterr().err
    out = tmp_path / "k.json"
    assert prefetch_kernels.main(["--models", "deit_small", "--batch", "1", "--reps", "1", "--cold-mb", "1",
                                  "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    results = record["results"]
    assert record["command"].startswith("python -m intvit.bench.prefetch_kernels --models deit_small")
    assert record["machine"]["cpu"] and record["date"]
    assert [(r["gemm"], r["epilogue"]) for r in results] == [("qkv", "requant"), ("proj", "residual"),
                                                             ("fc1", "requant"), ("fc2", "residual")]
