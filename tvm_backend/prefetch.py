"""Software prefetch of a linear GEMM's next weight panel block (the hand VNNI schedule).

The hand schedule (``schedules.apply_gemm_schedule``) walks a linear layer's
register tiles in one parallel loop over (leading index, panel block, row
tile), row tiles innermost. A panel block is the ``NR`` 16-column panels one
tile reads, ``NR·16·Kp`` bytes (18 KB for K = 384, NR = 3); its first row tile
reads it from memory, the others from L1/L2. At batch 1 a block serves only
40 row tiles, and DeiT-S's 22 MB of weights do not stay cached from one call
to the next, so the first pass over each block waits on memory: an isolated
197 × 384 × 1536 GEMM ran 0.143 ms with cold weights against 0.130 ms warm
(AMD Zen 5, 2 threads).

So each row tile also prefetches its share of the *next* block: with ``T``
row tiles per block, the tile at ``(j, t)`` prefetches the cache lines
``[t·L, (t+1)·L)`` of block ``(j + 1) mod J``, ``L = ceil(block bytes / (64·T))``,
with ``llvm.prefetch`` (read, keep in every cache level), so the next block
arrives while this one is in use. A prefetch never faults and changes no
value: only time (0.143 → 0.133 ms for that GEMM, 4–10 % for DeiT-S's four
linear shapes at batch 1, no change at batch 8; ``bench/results``).
"""
from __future__ import annotations

from dataclasses import dataclass

CACHE_LINE = 64


@dataclass(frozen=True)
class PanelWalk:
    """How the hand schedule's parallel loop walks a shared weight: ``f = (lead·blocks + j)·row_tiles + t``."""
    weight: str             # the packed weight's buffer name (``[Np/16, Kp/g, 16, g]``)
    row_tiles: int          # T: row tiles per panel block
    blocks: int             # J: panel blocks
    block_bytes: int        # bytes of one panel block (NR consecutive panels)
    weight_bytes: int       # bytes of the whole packed weight

    @property
    def lines_per_tile(self) -> int:
        return -(-self.block_bytes // (CACHE_LINE * self.row_tiles))


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


def prefetch_calls(weight, walk: PanelWalk, task) -> list:
    """The ``llvm.prefetch`` statements (read, keep in every cache level, data) of parallel task ``task``."""
    from tvm import tirx
    return [tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", weight.access_ptr("r", offset=offset),
                                                tirx.const(0, "int32"), tirx.const(3, "int32"),
                                                tirx.const(1, "int32")))
            for offset in prefetch_offsets(walk, task, tirx.min)]


def with_panel_prefetch(func, walk: PanelWalk, acc_block: str):
    """``func`` (a scheduled linear GEMM) with each task of its parallel tile loop (the parallel loop holding
    the ``acc_block`` blocks) prefetching its share of the next panel block (module docstring)."""
    from tvm import tirx
    weight = _read_buffer(func.body, walk.weight)
    if weight is None:
        raise ValueError(f"no block of this kernel reads the weight {walk.weight!r}")

    def visit(stmt):
        if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.PARALLEL and _blocks_in(stmt.body, acc_block):
            body = tirx.SeqStmt(prefetch_calls(weight, walk, stmt.loop_var) + [stmt.body])
            return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding,
                            stmt.annotations)
        return None
    return func.with_body(_rebuild(func.body, visit))
