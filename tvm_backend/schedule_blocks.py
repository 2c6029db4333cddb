"""What every schedule reads off a kernel, and the loop helpers they share (CPU, AMX, CUDA alike).

A module of its own so that the schedules (``schedules``, ``amx``,
``gpu_schedules``, ``imma``) import it without importing each other.
"""
from __future__ import annotations

from .gemm import fold_rows_map

SCHEDULED_ATTR = "tirx.is_scheduled"       # a PrimFunc already scheduled: the module schedulers skip it


def fold_output_rows(sch, out, acc_lead: int) -> None:
    """When the GEMM folded its leading axes into its rows (``gpu_gemm``, ``gemm._amx_linear_te``), make the
    output block iterate over the same flat rows, so that it can be computed at the accumulator's tile loops."""
    dims = [int(iv.dom.extent) for iv in sch.get(out).iter_vars]
    if len(dims) > acc_lead + 2:
        sch.transform_block_layout(out, fold_rows_map(dims))


def block_names(sch) -> list[str]:
    return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _spatial_prefix(sch, block) -> list:
    """The block's outer loops that are data-parallel (stop at the first reduction loop)."""
    loops = sch.get_loops(block)
    iters = sch.get(block).iter_vars
    out = []
    for loop, iv in zip(loops, iters):
        if int(iv.iter_type) != 0:
            break
        out.append(loop)
    return out


def _fused_parallel(sch, loops: list):
    """Fuse ``loops`` into one parallel loop (None when there are none)."""
    if not loops:
        return None
    loop = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(loop)
    return loop


def parallel_rows(sch, block):
    """Fuse the block's leading spatial loops (all but the innermost axis) and parallelise them."""
    spatial = _spatial_prefix(sch, block)
    n_loops = len(sch.get_loops(block))
    return _fused_parallel(sch, spatial[:-1] if len(spatial) == n_loops and len(spatial) > 1 else spatial)


def _numel(sch, block) -> int:
    n = 1
    for d in sch.get(block).writes[0].source.shape:
        n *= int(d)
    return n


def is_reduction(sch, block) -> bool:
    return any(int(iv.iter_type) != 0 for iv in sch.get(block).iter_vars)
