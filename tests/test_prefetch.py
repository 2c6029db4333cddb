"""The next-panel prefetch of the hand-scheduled linear GEMMs (``tvm_backend.prefetch``)."""
import numpy as np
import pytest

from intvit.tvm_backend import gemm, schedules
from intvit.tvm_backend.prefetch import CACHE_LINE, PanelWalk, prefetch_offsets


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
