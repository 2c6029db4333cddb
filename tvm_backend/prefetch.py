"""Software prefetch in the hand-scheduled linear GEMMs (VNNI): the next weight panel block, the next tile's
residual rows.

The hand schedule (``schedules.apply_gemm_schedule``) walks a linear layer's
register tiles in one parallel loop over (leading index, panel block, row
tile), row tiles innermost: task ``f = (b·J + j)·T + t``. Two of a tile's
inputs arrive late, because the hardware prefetchers do not see them coming:

* **The weights.** A panel block is the ``NR`` 16-column panels one tile
  reads, ``NR·16·Kp`` bytes (18 KB for K = 384, NR = 3); its first row tile
  reads it from memory, the others from L1/L2. At batch 1 a block serves only
  40 row tiles, and the model's weights (DeiT-S 22 MB, ViT-B 86 MB) are not in
  cache when the kernel starts. So each tile also prefetches its share of the
  *next* block: the tile at ``(j, t)`` prefetches the cache lines
  ``[t·L, (t+1)·L)`` of block ``(j + 1) mod J``, ``L = ceil(block bytes / (64·T))``.
* **The residual stream.** A kernel that finishes a residual add (proj, fc2)
  reads, in its epilogue, the skip values of its own ``MR`` rows × ``NR·16``
  columns: pieces of ``MR`` rows far apart, a new set of cache lines every
  tile, written a whole attention block earlier. So each tile also prefetches
  the skip rows of the tile after it (task ``f + 1``).

Measured with ``python -m intvit.bench.prefetch_kernels`` (weights and skip
stream cold; AMD Zen 5, 2 threads; ``bench/results/prefetch-kernels-*.json``):
ViT-B's proj at batch 8 1.177 → 1.019 ms, DeiT-S's fc2 1.109 → 1.033 ms,
DeiT-S's fc1 at batch 1 0.148 → 0.139 ms; the others 1.00–1.16×. End to end
DeiT-S 1.038× at batch 1, ViT-B 1.02–1.06× at batch 8 (``bench.ab``).

Prefetches use ``llvm.prefetch`` (read, keep in every cache level); a
prefetch never faults and changes no value, only time.
"""
from __future__ import annotations

from dataclasses import dataclass

CACHE_LINE = 64


@dataclass(frozen=True)
class PanelWalk:
    """How the hand schedule's parallel loop walks a linear layer: task ``f = (b·blocks + j)·row_tiles + t``
    computes rows ``[t·tile_rows, (t+1)·tile_rows)`` (of ``rows``) × columns ``[j·block_cols, (j+1)·block_cols)``
    (of ``cols``) of leading index ``b`` (of ``leads``), reading panel block ``j`` of the weight."""
    weight: str             # the packed weight's buffer name (``[Np/16, Kp/g, 16, g]``)
    row_tiles: int          # T: row tiles per panel block
    blocks: int             # J: panel blocks
    block_bytes: int        # bytes of one panel block (NR consecutive panels)
    weight_bytes: int       # bytes of the whole packed weight
    leads: int = 1          # product of the leading extents
    tile_rows: int = 1      # MR
    rows: int = 1           # the output's real rows per leading index
    block_cols: int = 16    # NR·16
    cols: int = 16          # the output's columns N
    skips: tuple = ()       # ``(name, bytes per element)`` of epilogue inputs shaped like the output

    @property
    def lines_per_tile(self) -> int:
        return -(-self.block_bytes // (CACHE_LINE * self.row_tiles))

    @property
    def tasks(self) -> int:
        return self.leads * self.blocks * self.row_tiles


def _blocks_in(stmt, name: str) -> bool:
    """Whether the s_tir statement ``stmt`` holds a block whose name starts with ``name`` (tensorize and
    decompose_reduction rename the accumulator block, e.g. ``int_gemm_acc_o``)."""
    from tvm import s_tir, tirx
    if isinstance(stmt, s_tir.SBlockRealize):
        return _blocks_in(stmt.block, name)
    if isinstance(stmt, s_tir.SBlock):
        return stmt.name_hint.startswith(name) or _blocks_in(stmt.body, name)
    if isinstance(stmt, tirx.SeqStmt):
        return any(_blocks_in(s, name) for s in stmt.seq)
    if isinstance(stmt, tirx.For):
        return _blocks_in(stmt.body, name)
    return False


def _read_buffer(stmt, name: str):
    """The buffer called ``name`` that a block in ``stmt`` reads, or None."""
    from tvm import s_tir, tirx
    if isinstance(stmt, s_tir.SBlockRealize):
        return _read_buffer(stmt.block, name)
    if isinstance(stmt, s_tir.SBlock):
        found = next((r.source for r in stmt.reads if r.source.name == name), None)
        return found if found is not None else _read_buffer(stmt.body, name)
    if isinstance(stmt, tirx.SeqStmt):
        return next((b for b in (_read_buffer(s, name) for s in stmt.seq) if b is not None), None)
    if isinstance(stmt, tirx.For):
        return _read_buffer(stmt.body, name)
    return None


def _rebuild(stmt, visit):
    """``stmt`` with the first statement ``visit`` maps to a replacement replaced (s_tir blocks, loops, sequences)."""
    from tvm import s_tir, tirx
    new = visit(stmt)
    if new is not None:
        return new
    if isinstance(stmt, s_tir.SBlockRealize):
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, _rebuild(stmt.block, visit))
    if isinstance(stmt, s_tir.SBlock):
        return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, _rebuild(stmt.body, visit),
                            stmt.init, stmt.alloc_buffers, stmt.match_buffers, stmt.annotations)
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([_rebuild(s, visit) for s in stmt.seq])
    if isinstance(stmt, tirx.For):
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, _rebuild(stmt.body, visit),
                        stmt.thread_binding, stmt.annotations)
    return stmt


def prefetch_offsets(walk: PanelWalk, task, minimum=min) -> list:
    """Byte offsets into the weight that parallel task ``task`` prefetches: its row tile's share of the next
    panel block. ``task`` is an int, or the fused loop variable (then ``minimum`` is ``tirx.min``)."""
    block, tile = (task // walk.row_tiles) % walk.blocks, task % walk.row_tiles
    start = (block + 1) % walk.blocks * walk.block_bytes + tile * walk.lines_per_tile * CACHE_LINE
    # the last tile's share can run past the block (and the last block's past the weight): clamp
    return [minimum(start + line * CACHE_LINE, walk.weight_bytes - 1) for line in range(walk.lines_per_tile)]


def next_tile_offsets(walk: PanelWalk, task, element_bytes: int, minimum=min) -> list:
    """Element offsets into an output-shaped skip input (``walk.skips``) that task ``task`` prefetches: the
    rows × columns the next task (``task + 1``, the last task's own) reads, one offset per cache line of each
    row piece plus its last element."""
    nxt = minimum(task + 1, walk.tasks - 1)
    tile, block = nxt % walk.row_tiles, (nxt // walk.row_tiles) % walk.blocks
    lead = nxt // (walk.row_tiles * walk.blocks)
    piece = walk.block_cols * element_bytes
    steps = sorted({*range(0, piece, CACHE_LINE), piece - element_bytes})
    offsets = []
    for r in range(walk.tile_rows):
        row = minimum(tile * walk.tile_rows + r, walk.rows - 1)
        for step in steps:
            col = minimum(block * walk.block_cols + step // element_bytes, walk.cols - 1)
            offsets.append((lead * walk.rows + row) * walk.cols + col)
    return offsets


def _prefetch(buffer, offset):
    """``llvm.prefetch`` of ``buffer``'s element ``offset``: read, keep in every cache level, data."""
    from tvm import tirx
    return tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", buffer.access_ptr("r", offset=offset),
                                               tirx.const(0, "int32"), tirx.const(3, "int32"), tirx.const(1, "int32")))


def prefetch_calls(buffers: dict, walk: PanelWalk, task) -> list:
    """The prefetch statements of parallel task ``task``: the weight's next block share, then the next tile's
    rows of every skip input (``buffers``: name → buffer)."""
    from tvm import tirx
    calls = [_prefetch(buffers[walk.weight], o) for o in prefetch_offsets(walk, task, tirx.min)]
    for name, element_bytes in walk.skips:
        calls += [_prefetch(buffers[name], o) for o in next_tile_offsets(walk, task, element_bytes, tirx.min)]
    return calls


def with_panel_prefetch(func, walk: PanelWalk, acc_block: str):
    """``func`` (a scheduled linear GEMM) with each task of its parallel tile loop (the parallel loop holding
    the ``acc_block`` blocks) prefetching its share of the next panel block and the next tile's skip rows
    (module docstring)."""
    from tvm import tirx
    buffers = {}
    for name in [walk.weight] + [n for n, _ in walk.skips]:
        buffers[name] = _read_buffer(func.body, name)
        if buffers[name] is None:
            raise ValueError(f"no block of this kernel reads {name!r}")

    def visit(stmt):
        if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.PARALLEL and _blocks_in(stmt.body, acc_block):
            body = tirx.SeqStmt(prefetch_calls(buffers, walk, stmt.loop_var) + [stmt.body])
            return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding,
                            stmt.annotations)
        return None
    return func.with_body(_rebuild(func.body, visit))
