"""NVIDIA integer tensor cores (IMMA, ``mma.sync.m16n8k32`` s8 × s8 → s32) for the CUDA GEMM kernels.

**What runs.** A ``gpu_gemm.tiled_gemm_te`` kernel whose two operands are
int8 (every linear layer and attention's ``Q·Kᵀ``) computes

    acc[r, j] = Σ_k lhs[r, k] · rhs[j, k]           lhs [rows_p, Kp], rhs [Np, Kp] (both int8)
    y[r, j]   = epilogue(acc[r, j] + bias[j])       r < rows, j < N

with ``rows_p``, ``Np`` multiples of 64 and ``Kp`` of 32 (``gpu_gemm``'s
padding). This schedule runs the reduction on tensor cores:

* one thread block per ``BLOCK_M × BLOCK_N`` = 64 × 64 output tile (and
  leading index: batch item, head), ``WARPS_M × WARPS_N`` = 2 × 2 warps,
  each warp owning a 32 × 32 tile = 2 × 2 fragments of 16 × 16 int32;
* per K stage (``k_stage``: 64, or 32 when ``Kp`` is not a multiple of 64) the
  block copies the stage's ``64 × k_stage`` bytes of each operand into
  shared memory (16-byte vectors; the row clamping and K zero-padding of
  ``lhs``/``rhs`` happen in this copy), rows padded by 16 bytes so that
  ``ldmatrix``'s eight row addresses fall in distinct banks;
* the stage loop is software-pipelined (TVM's ``InjectSoftwarePipeline``,
  ``PIPELINE``): the shared tiles are double-buffered, so stage k+1's copies
  (``cp.async``, asynchronous global → shared, where the rows are whole
  16-byte vectors; ``ASYNC_COPY``, lowered under ``tirx.use_async_copy``,
  which ``build.compile_onnx`` sets for CUDA) are in flight while stage k's
  MMAs run, and within a stage step s+1's ``ldmatrix`` loads overlap step
  s's MMAs;
* per 32-deep K step each warp loads its fragments with ``ldmatrix``
  (``LDMATRIX_i8_A``, and ``LDMATRIX_i8_B_TRANS`` for the ``[N, K]`` operand)
  and issues two ``mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32`` per
  16 × 16 fragment (``MMA_i8i8i32_TRANS_B``): ``C[16×8] += A[16×32]·B[32×8]``;
* after the whole K, each warp stores its int32 fragments into the block's
  64 × 64 int32 tile in shared memory (``mma_store`` layout: thread ``t``
  holds rows ``t/4`` and ``t/4 + 8``, columns ``2·(t%4)``, ``+1``, ``+8``, ``+9``),
  and the block's 128 threads run the bias + requant (+ GELU table,
  + residual) epilogue on that tile and write the real rows and columns.

The sums are the same int32 sums as ``__dp4a``'s (integer addition is
associative; ``|acc| ≤ K·2**14`` cannot wrap for K < 2**17), so an IMMA
module is bit-identical to the ``dp4a`` one and to ``ops``.

**Checked without a GPU** (``schedule_gemm_imma(func, gpu=False)``): the
same splits, caches, compute-at points, software pipeline (double buffers,
prologue and epilogue) and fragment layout transforms (``ldmatrix``'s
thread/register order) with the thread bindings left as
serial loops, the tensor-core blocks kept as their plain definitions, and
shared/warp buffers in global/local memory: a function LLVM compiles and
the CPU runs, whose output must equal ``ops`` exactly. What it cannot check
is the intrinsics themselves (upstream TVM tests them on GPUs) and the
synchronisation between threads.

**Which archs.** ``mma.sync`` with int8 operands needs sm_80 (Ampere) or
newer for the m16n8k32 shape; older archs keep the ``dp4a`` schedule
(``imma_arch``). A·V (16-bit probabilities) also stays on the SIMT schedule.
"""
from __future__ import annotations

import functools

from .gemm import ACC_BLOCK, OUT_BLOCK
from .gpu_gemm import LHS_BLOCK, RHS_BLOCK
from .schedule_blocks import SCHEDULED_ATTR, block_names, fold_output_rows

MIN_IMMA_ARCH = 80                 # mma.sync m16n8k32 s8 (sm_80+)
FRAG = 16                          # a fragment is 16 × 16 int32 (two m16n8 MMAs)
MMA_K = 32                         # K per mma.sync
WARPS_M, WARPS_N = 2, 2            # warps per thread block
FRAGS_M, FRAGS_N = 2, 2            # fragments per warp
BLOCK_M, BLOCK_N = WARPS_M * FRAGS_M * FRAG, WARPS_N * FRAGS_N * FRAG      # 64 × 64
WARP = 32
THREADS = WARPS_M * WARPS_N * WARP                                          # 128
COPY_VECTOR = 16                   # bytes per thread per shared-memory copy step
SHARED_ROW_PAD = 16                # bytes added to each staged operand row (ldmatrix bank spread)
STORE_INTRIN = "intvit_mma_store_16x16_i32_shared"
PIPELINE = True
ASYNC_COPY = True
K0_STAGES = [0, 0, 1, 1, 1]     # k0 body: copy A, copy B, then k1 pipelined (prologue, loop, epilogue)


def imma_arch(arch: str | None) -> bool:
    """Whether ``arch`` (``sm_XX``) has int8 ``mma.sync.m16n8k32`` (sm_80 and newer)."""
    from .cuda import arch_number
    return arch is not None and arch_number(arch) >= MIN_IMMA_ARCH


GEMM_PATHS = ("imma", "dp4a")     # what a CUDA module's int8 GEMMs run on (its sidecar's "gpu_gemm")


def gemm_path(arch: str) -> tuple[str, str | None]:
    """``("imma", None)`` for an arch with int8 tensor cores, else ``("dp4a", note)`` with the note a CUDA
    module's sidecar carries."""
    if imma_arch(arch):
        return "imma", None
    return "dp4a", (f"{arch} has no int8 mma.sync.m16n8k32 (sm_{MIN_IMMA_ARCH} and newer): the int8 GEMMs run on "
                    "__dp4a, at most 1/16 of the tensor cores' rate on GPUs that have them")


def imma_shape(sch):
    """``(lead extents, rows_p, np_, kp)`` of a ``tiled_gemm_te`` kernel the IMMA schedule takes (two int8
    operands, rows and columns multiples of 64, K of 32), else None."""
    if not {ACC_BLOCK, OUT_BLOCK} <= set(block_names(sch)):
        return None
    acc = sch.get(sch.get_sblock(ACC_BLOCK))
    if len(acc.reads) != 2 or any(str(r.source.dtype) != "int8" for r in acc.reads):
        return None
    *lead, rows_p, np_, kp = (int(iv.dom.extent) for iv in acc.iter_vars)
    if rows_p % BLOCK_M or np_ % BLOCK_N or kp % MMA_K:
        return None
    return lead, rows_p, np_, kp


@functools.lru_cache(maxsize=None)
def register_store_intrin() -> str:
    """Register (once) the store of one 16 × 16 int32 fragment from the warp's registers to shared memory."""
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin.cuda import get_mma_store_intrin
    TensorIntrin.register(STORE_INTRIN, *get_mma_store_intrin("int32", 8, "shared", True), override=True)
    return STORE_INTRIN


def _tensor_intrinsics():
    """TVM's ldmatrix / mma.sync / fill intrinsics (importing them parses TVMScript: done the fast way)."""
    from .fastparse import import_tensor_intrinsics
    import_tensor_intrinsics()
    from tvm.s_tir.tensor_intrin import cuda
    return cuda


def schedule_gemm_imma(func, gpu: bool = True):
    """Schedule a ``tiled_gemm_te`` int8 × int8 kernel on tensor cores (module docstring).

    ``gpu=False`` gives the CPU-checkable twin: the same loop structure and
    layouts without thread bindings, tensor intrinsics and GPU memory scopes.
    Raises ``ValueError`` for a kernel ``imma_shape`` refuses.
    """
    from tvm import s_tir
    cuda = _tensor_intrinsics()
    sch = s_tir.Schedule(func)
    shape = imma_shape(sch)
    if shape is None:
        raise ValueError("not an int8 x int8 tiled GEMM with rows and columns padded to 64 and K to 32")
    lead_dims, rows_p, np_, kp = shape
    k_stage = 2 * MMA_K if kp % (2 * MMA_K) == 0 else MMA_K
    bind = (lambda loop, tag: sch.bind(loop, tag)) if gpu else (lambda loop, tag: None)
    shared, warp = ("shared", "warp") if gpu else ("global", "local")

    acc, out = sch.get_sblock(ACC_BLOCK), sch.get_sblock(OUT_BLOCK)
    *lead, i, j, k = sch.get_loops(acc)
    i, i_tc = sch.split(i, [None, FRAG])
    j, j_tc = sch.split(j, [None, FRAG])
    k, k_tc = sch.split(k, [None, MMA_K])
    sch.reorder(*lead, i, j, k, i_tc, j_tc, k_tc)
    inner = acc
    outer = sch.blockize(i_tc)
    i0, i1, i2 = sch.split(i, [None, WARPS_M, FRAGS_M])
    j0, j1, j2 = sch.split(j, [None, WARPS_N, FRAGS_N])
    k0, k1 = sch.split(k, [None, k_stage // MMA_K])
    sch.reorder(*lead, i0, j0, i1, j1, k0, k1, i2, j2)
    block_idx = sch.fuse(*lead, i0, j0)
    bind(block_idx, "blockIdx.x")
    warp_idx = sch.fuse(i1, j1)
    bind(warp_idx, "threadIdx.y")

    names = block_names(sch)
    for index, producer in ((0, LHS_BLOCK), (1, RHS_BLOCK)):
        staged = sch.cache_read(outer, index, shared)
        sch.compute_at(staged, k0)
        if producer in names:              # row clamping and K padding happen in the shared-memory copy
            sch.compute_inline(sch.get_sblock(producer))
        copy = sch.fuse(*sch.get_loops(staged)[-2:])
        _, ty, tx, vec = sch.split(copy, [None, WARPS_M * WARPS_N, WARP, COPY_VECTOR])
        bind(ty, "threadIdx.y")
        bind(tx, "threadIdx.x")
        if gpu:
            if _whole_vectors(sch, staged, kp):
                sch.vectorize(vec)
            sch.storage_align(staged, 0, axis=-2, factor=k_stage, offset=SHARED_ROW_PAD)

    a_frag = sch.cache_read(outer, 0, warp)
    b_frag = sch.cache_read(outer, 1, warp)
    sch.compute_at(a_frag, k1)
    sch.compute_at(b_frag, k1)
    c_frag = sch.cache_write(outer, 0, warp)
    sch.reverse_compute_at(c_frag, warp_idx)
    ci, cj = sch.get_loops(c_frag)[-2:]
    cio, cii = sch.split(ci, [None, FRAG])
    cjo, cji = sch.split(cj, [None, FRAG])
    sch.reorder(cio, cjo, cii, cji)
    init = sch.decompose_reduction(outer, k0)

    def fragment_loop(block, h, w):
        a, b = sch.get_loops(block)[-2:]
        a0, a1 = sch.split(a, [None, h])
        b0, b1 = sch.split(b, [None, w])
        sch.reorder(a0, b0, a1, b1)
        return a1

    loop_a = fragment_loop(a_frag, FRAG, MMA_K)
    loop_b = fragment_loop(b_frag, FRAG, MMA_K)
    to_a, to_c = _fragment_layouts()
    sch.transform_layout(a_frag, ("write", 0),
                         lambda *x: (*x[:-2], x[-2] // FRAG, x[-1] // MMA_K, *to_a(x[-2] % FRAG, x[-1] % MMA_K)))
    sch.transform_layout(b_frag, ("write", 0),
                         lambda *x: (*x[:-2], x[-2] // FRAG, x[-1] // MMA_K, *to_a(x[-2] % FRAG, x[-1] % MMA_K)))
    sch.transform_layout(c_frag, ("read", 0),
                         lambda *x: (*x[:-2], x[-2] // FRAG, x[-1] // FRAG, *to_c(x[-2] % FRAG, x[-1] % FRAG)))

    # the int32 tile goes to shared memory (one 64 × 64 tile per thread block) and the epilogue reads it there
    fold_output_rows(sch, out, len(lead_dims))
    sch.reverse_compute_at(out, block_idx)
    if gpu:
        sch.set_scope(c_frag, 0, "shared")
    epi = sch.fuse(*sch.get_loops(out)[1:])
    _, ety, etx = sch.split(epi, [None, WARPS_M * WARPS_N, WARP])
    bind(ety, "threadIdx.y")
    bind(etx, "threadIdx.x")

    if PIPELINE:
        # double buffering: stage k+1's shared-memory copies overlap stage k's MMAs, and step k+1's ldmatrix
        # loads overlap step k's MMAs (TVM's InjectSoftwarePipeline doubles the buffers)
        sch.annotate(k0, "software_pipeline_stage", K0_STAGES)
        sch.annotate(k0, "software_pipeline_order", list(range(len(K0_STAGES))))
        sch.annotate(k1, "software_pipeline_stage", [0, 0, 1])
        sch.annotate(k1, "software_pipeline_order", [0, 1, 2])
        if gpu and ASYNC_COPY:
            sch.annotate(k0, "software_pipeline_async_stages", [0])     # cp.async: the copies run behind the MMAs
    if gpu:
        sch.tensorize(loop_a, cuda.LDMATRIX_i8_A_INTRIN)
        sch.tensorize(loop_b, cuda.LDMATRIX_i8_B_TRANS_INTRIN)
        sch.tensorize(sch.get_loops(inner)[-3], cuda.MMA_i8i8i32_TRANS_B_INTRIN)
        sch.tensorize(sch.get_loops(sch.get_child_blocks(init)[0])[-2], cuda.MMA_fill_16x16_i32_INTRIN)
        sch.tensorize(sch.get_loops(c_frag)[-2], register_store_intrin())
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def _fragment_layouts():
    """``(operand, accumulator)`` maps of a fragment element ``(row, column)`` to its ``(lane, register)`` in
    a warp: what ``ldmatrix`` loads (16 × 32 int8 operand tiles) and what ``mma.sync`` accumulates
    (16 × 16 int32). ``tensorize`` refuses a fragment laid out any other way."""
    cuda = _tensor_intrinsics()
    return cuda.shared_16x32_to_ldmatrix_32x16_layout, cuda.shared_16x16_to_ldmatrix_32x8_layout


def _whole_vectors(sch, staged, kp: int) -> bool:
    """Whether the staged operand's copy can move 16-byte vectors: its source rows are ``kp`` bytes long
    (no K padding, whose zero ``Select`` CUDA cannot vectorize, and every vector aligned)."""
    return int(sch.get(staged).reads[0].source.shape[-1]) == kp
