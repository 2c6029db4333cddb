"""Intel AMX-INT8 for intvit's u8 × s8 linear kernels: host checks, the tensor intrinsic, the schedule.

**What the instruction computes.** AMX holds 8 tile registers ``tmm0..7`` of
at most 16 rows × 64 bytes, shaped by a 64-byte *tile configuration*
(``ldtilecfg``). ``tdpbusd C, A, B`` with ``A`` a tile of unsigned bytes
(16 rows × 64 B) and ``B`` a tile of signed bytes in the "VNNI" layout
(16 rows × 64 B, row ``r`` = the 4-byte K-group ``r`` for 16 output columns)
computes, for the 16 × 16 int32 tile ``C``::

    C[m, n] += Σ_{r<16} Σ_{q<4} A[m, 4r + q] · B[r, 4n + q]        (u8 × s8 → s32, 16·16·64 MACs)

with no saturation (int32 wrap-around only; intvit's accumulator bound keeps
sums in range, ``ops.gemm.check_accumulator_fits``).

**Why the existing packing feeds it.** ``gemm.packed_gemm_te`` reads the
activations as ``u[r, k] = x[r, k] + 128`` (uint8, block ``shifted_input``,
``[rows_p, Kp]``) and the weight as panels ``Wp[n/16, k/4, n%16, k%4]``. Rows
``64c .. 64c+63`` of K in panel ``p`` are the 16 consecutive ``[k/4]`` rows
``Wp[p, 16c : 16c+16, :, :]``: 16 rows of 64 contiguous bytes, i.e. exactly
a ``B`` tile (row stride 64 B). An ``A`` tile is 16 rows × 64 bytes of ``u``
(row stride ``Kp``). So with ``Kp % 64 == 0``, ``rows_p % 32 == 0`` and
``Np % 32 == 0`` (``gemm.amx_layout`` pads the packing and the staged rows
that way) the kernel's reduction

    acc[r, n] = Σ_k u[r, k] · Wp[n/16, k/4, n%16, k%4]

is a sum of ``tdpbusd`` over 64-wide K chunks: the same products and the same
int32 sums as ``vpdpbusd`` (integer addition is associative), so the result
is bit-identical to the VNNI schedule.

**The schedule** (``apply_amx_gemm_schedule``). One parallel task per
(batch item, chunk of ``NC`` columns, 32-row block); in the task, for each
32 × 32 output block, one call of the tensor intrinsic
``intvit_amx_u8s8s32_32x32x{Kp}_in_{NC}``: ``tilezero`` the 2 × 2
accumulator tiles ``tmm0..3``, for each 64-wide K chunk load two ``A``
tiles (rows 0–15, 16–31) and two ``B`` tiles (the block's two panels) and
issue four ``tdpbusd``, and after the whole K ``tilestored`` the four tiles
into a 4 KB int32 block; the bias + requant epilogue (``int_gemm_out``, 16
int64 lanes) then runs on that block while it is in L1. The tile
configuration (``ldtilecfg``: eight 16 × 64 B tiles; per thread, and
loading it zeroes the tiles) is loaded by the task's first block only and
the tiles released (``tilerelease``) after its last (measured: an
``ldtilecfg`` per block costs about as much as the block's ``tdpbusd``).
Keeping the int32 block at 32 × 32 matters: a task-wide ``[32, NC]`` block
(48 KB at ``NC`` = 384) filled before the epilogue pushed the ``A`` rows and
the weights out of the 48 KB L1, and the kernel ran well under the tile
rate. ``NC`` (``column_chunk``: a multiple of 32 dividing ``Np``, at most
``MAX_COL_BLOCKS`` blocks, fewer when the kernel would otherwise have under
``MIN_TASKS`` tasks) keeps the task's weight chunk in L2 and amortises
``ldtilecfg``; chunks are the outer index of the parallel loop, so
consecutive tasks share their weights. The activations (``shifted_input``:
``x + 128``, rows padded with copies of the last row and K with zeros) are
staged once: inside each task, just before its tiles read them, when the
kernel has a single column chunk (each row is then staged by exactly one
task, and a large K such as fc2's 1536 no longer writes and re-reads the
whole staged matrix), else in their own parallel loop ahead of the tasks.
Attention's ``Q·Kᵀ`` (panels per batch item and head) is scheduled the same
way. AMX has no int16 dot product, so ``A·V`` (16-bit probabilities) runs as
two byte GEMMs, ``p = 256·hi + lo`` (``gemm.split_probs_gemm_te``,
``_apply_amx_split_schedule``), and fc1's GELU table is looked up on each
block with ``vpermi2b`` (``byte_table``).

**Which kernels** (``amx_shape``, the one predicate the schedules consult):
every u8 × s8 ``packed_gemm_te`` kernel built under ``gemm.amx_layout()``,
whatever its sizes, since the layout pads them to whole tiles: K = 49 (a
7 × 7 × 1 patch embedding) runs as one 64-wide chunk with 15 zero columns,
head_dim 32 or 8 (``Q·Kᵀ``) likewise, N = 10 classes as one 32-column block
(22 zero columns, never stored), 17 or 17·8 rows as one or five 32-row
blocks. Only the int16 kernels, and kernels not built in the AMX layout,
keep the VNNI schedule.

**Operand addresses.** The intrinsic hands the tile loads and stores
``T.address_of(buffer[element])`` pointers, not ``tvm_access_ptr``. A kernel
of a single task (at most 32 rows and 32 columns and no leading axes: a
classifier head) loses its extent-1 parallel loop to simplification, so
TVM's ``StorageRewrite`` sees the uint8 staged rows die at the last
``tileloadd`` and the int32 accumulator born at the first ``tilestored``,
and gives the accumulator the staged rows' memory when it fits (32 rows of
K = 128 are 4 KB, a 32 × 32 int32 block too). That reuse is sound, and it
rewrites element accesses with their own type; a ``tvm_access_ptr`` would
keep its int32 element type over the uint8 allocation, which ``LowerIntrin``
rejects ("tvm_access_ptr element type must match the source buffer").

**Using it.** A process must ask Linux for the AMX tile state once
(``request_tile_permission``: ``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``) before any tile instruction runs, or the first one
kills it with SIGILL. ``host_has_amx`` checks both the CPU and the
permission. The compiled kernels also ask for it themselves at entry
(``with_tile_request``: one system call per kernel call), so a module run
by a process that never asked works, and one run where Linux refuses AMX
fails with an error instead of SIGILL.
"""
from __future__ import annotations

import ctypes
import functools
import platform
import sys

import numpy as np

from . import amx_emulator
from .byte_table import BYTE_TABLE_BLOCK, BYTE_TABLE_OUT_BLOCK, tensorize_byte_table
from .gemm import ACC_BLOCK, AMX_COLS, AMX_K, AMX_ROWS, BYTE_SPLIT, OUT_BLOCK, SHIFTED_INPUT_BLOCK, SPLIT_CROP_BLOCK
from .schedule_blocks import block_names, fold_output_rows, parallel_rows
from .x86 import LANES, has_features, host_has

# LLVM's names; what a module using this schedule needs (VBMI: the GELU table's vpermi2b, ``byte_table``;
# every AMX-INT8 CPU has it)
AMX_FEATURES = ("amx-tile", "amx-int8", "avx512vbmi")
TILE_ROWS = 16                              # rows of a tile (A, B and C)
TILE_BYTES = 64                             # bytes per tile row: 64 u8/s8 of K (A), 16 int32 (C), 16×4 s8 (B)
ROW_BLOCK = 2 * TILE_ROWS                   # output rows per block: two A tiles
COL_BLOCK = 2 * LANES                       # output columns per block: two B tiles
K_BLOCK = TILE_BYTES                        # K per tdpbusd
MAX_COL_BLOCKS = 12                         # 32-column blocks per task (one ldtilecfg)
MIN_TASKS = 8                               # parallel tasks a kernel keeps, if its shape allows
EPILOGUE_LANES = 16                         # int64 lanes per step of the fused epilogue (two zmm)
if (ROW_BLOCK, COL_BLOCK, K_BLOCK) != (AMX_ROWS, AMX_COLS, AMX_K):      # gemm.amx_layout pads to these
    raise ImportError("gemm.AMX_ROWS/AMX_COLS/AMX_K disagree with the AMX tile geometry")

_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18   # x86-64 Linux
_permission: bool | None = None


def request_tile_permission() -> bool:
    """Ask Linux once for this process's permission to use the AMX tile state; True when granted.

    Idempotent (the answer is cached; the grant holds for every thread of the
    process, present and future). False on other systems and on kernels that
    refuse (before 5.16, or AMX disabled), where a tile instruction would
    raise SIGILL.
    """
    global _permission
    if _permission is None:
        _permission = False
        if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _permission = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
            except (OSError, AttributeError):
                _permission = False
    return _permission


def cpu_has_amx(mcpu: str) -> bool:
    """Whether LLVM's CPU model ``mcpu`` has AMX-TILE and AMX-INT8."""
    return bool(mcpu) and has_features(mcpu, *AMX_FEATURES)


def host_has_amx() -> bool:
    """This CPU has AMX-INT8 (by LLVM's model of the host, or as Linux reports it) and Linux lets this process
    use the tiles."""
    return host_has(*AMX_FEATURES) and request_tile_permission()


def target_has_amx(target) -> bool:
    """True when ``target`` (a ``tvm.target.Target`` of kind llvm) may emit AMX-INT8."""
    if str(target.kind.name) != "llvm":
        return False
    mattr = [str(a) for a in target.attrs.get("mattr", [])] if "mattr" in target.attrs else []
    if all(f"+{f}" in mattr for f in AMX_FEATURES):
        return True
    return cpu_has_amx(str(target.attrs.get("mcpu", "")) if "mcpu" in target.attrs else "")


TILE_REQUEST_MESSAGE = ("this kernel uses Intel AMX, and Linux refused this process the AMX tile state "
                        "(arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) failed: no AMX-INT8 on this CPU, a kernel older "
                        "than 5.16, or AMX disabled for this VM); recompile the module with isa='vnni'")


def with_tile_request(func):
    """``func`` (a scheduled AMX kernel) with the tile-state request at its entry, before any parallel task:
    ``arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`` (idempotent, one system call per kernel call), asserted
    to succeed. A module run by a process that never asked (loaded without intvit) then works, and on a
    machine that refuses AMX it raises this message instead of dying with SIGILL."""
    from tvm import tirx
    from tvm.ir import StringImm
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
    if amx_emulator.active():       # the emulated kernel's answer (amx_emulator.tile_permission)
        request = tirx.call_extern("int64", amx_emulator.PREFIX + "arch_prctl", i64(_ARCH_REQ_XCOMP_PERM),
                                   i64(_XFEATURE_XTILEDATA))
    else:
        request = tirx.call_extern("int64", "syscall", i64(_SYS_ARCH_PRCTL), i64(_ARCH_REQ_XCOMP_PERM),
                                   i64(_XFEATURE_XTILEDATA))
    granted = request == i64(0)
    kind, message = StringImm("RuntimeError"), [StringImm(TILE_REQUEST_MESSAGE)]
    try:
        check = tirx.AssertStmt(kind, granted, message)
    except TypeError:       # TVM 0.27's Python wrapper names (kind, condition); its FFI takes (condition, kind)
        check = tirx.AssertStmt(granted, kind, message)
    return func.with_body(tirx.SeqStmt([check, func.body]))


# -- the tensor intrinsic ---------------------------------------------------------------------------

def tile_config_words() -> list[int]:
    """The 64-byte ``ldtilecfg`` operand as eight little-endian int64 words: palette 1, tiles 0–7 all
    16 rows × 64 bytes (bytes 16–31: ``colsb`` as uint16 per tile; bytes 48–55: ``rows`` per tile)."""
    cfg = bytearray(64)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = TILE_BYTES
        cfg[48 + t] = TILE_ROWS
    return [int.from_bytes(cfg[8 * w:8 * w + 8], "little", signed=True) for w in range(8)]


def _tile(op: str, *args):
    """The tile instruction ``op`` (LLVM's ``llvm.x86.<op>``), or under ``amx_emulator.emulation()`` the
    emulator's model of it, called with the same operands (tile numbers widened to int32 for C)."""
    from tvm.script import tirx as T
    if amx_emulator.active():
        args = [T.Cast("int32", a) if str(getattr(a, "dtype", "")) == "uint8" else a for a in args]
        return T.evaluate(T.call_extern("int32", amx_emulator.PREFIX + op, *args))
    return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{op}", *args))


def register_amx_intrinsics(kp: int, chunk: int, configure_last: bool = False) -> tuple[str, str]:
    """Register (once) the tensor-intrinsic pair for one 32 × 32 output block, ``C[32, 32] = A[32, kp] · B``
    (u8 × s8 → s32) with ``B`` the two ``[2, kp/4, 16, 4]`` panels of the block, inside a task of ``chunk``
    columns; returns ``(init name, update name)``. ``configure_last``: also load the tile configuration on
    the task's last block, for a kernel that calls the intrinsic twice per block
    (``split_probs_gemm_te``): the first call on the last block releases the tiles, the second one
    configures them again (``ldtilecfg`` zeroes the tiles; the update starts with ``tilezero`` anyway).

    The two are one unit. The update's description is the reduction step
    ``C += A·B`` over the whole K; its implementation starts the accumulator
    tiles with ``tilezero`` and never reads ``C``. The init's description is
    the reduction's ``C = 0``; its implementation is empty, as the update does
    not read what it would write. Together they compute the block exactly,
    without zeroing and re-reading the int32 block in memory; apply them
    together (``apply_amx_gemm_schedule``), never one alone.

    The tile configuration is per thread and ``ldtilecfg`` costs about as
    much as a block's eight ``tdpbusd`` K-steps, so the update loads it only
    for the first block of a task and releases the tiles after the last: a
    task's blocks are the ``chunk / 32`` consecutive column blocks of one
    column chunk, run in order on one thread (``apply_amx_gemm_schedule``'s
    serial block loop), and the block's place in its chunk is read off the
    weight panels' element offset (panel ``2·jb`` of a chunk-aligned run of
    ``chunk / 16`` panels of ``kp/4 · 64`` bytes each).

    Under ``amx_emulator.emulation()`` the pair (named ``..._emulated``)
    calls the emulator where it would issue tile instructions.
    """
    return _register_amx_intrinsics(kp, chunk, configure_last, amx_emulator.active())


@functools.lru_cache(maxsize=None)
def _register_amx_intrinsics(kp: int, chunk: int, configure_last: bool, emulated: bool) -> tuple[str, str]:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if kp % K_BLOCK or chunk % COL_BLOCK:
        raise ValueError(f"AMX tiles need K % {K_BLOCK} == 0 and columns % {COL_BLOCK} == 0, got {kp}, {chunk}")
    kg, rb, cols = kp // 4, ROW_BLOCK, COL_BLOCK
    pair_bytes, blocks = 2 * kg * 16 * 4, chunk // COL_BLOCK      # one block's two panels; blocks per task
    words = tile_config_words()
    reconfigure_at = blocks - 1 if configure_last else 0
    u8 = T.uint8

    @T.prim_func(s_tir=True)
    def init_desc(c: T.handle) -> None:
        C = T.match_buffer(c, (rb, cols), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:rb, 0:cols])
            for i, j in T.grid(rb, cols):
                with T.sblock("init"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = 0

    @T.prim_func(s_tir=True)
    def init_impl(c: T.handle) -> None:
        C = T.match_buffer(c, (rb, cols), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:rb, 0:cols])
            T.evaluate(0)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (rb, kp), "uint8", offset_factor=1)
        B = T.match_buffer(b, (2, kg, 16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (rb, cols), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:rb, 0:cols], A[0:rb, 0:kp], B[0:2, 0:kg, 0:16, 0:4])
            T.writes(C[0:rb, 0:cols])
            for i, j, k in T.grid(rb, cols, kp):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk], "int32") * T.cast(
                        B[vj // 16, vk // 4, vj % 16, vk % 4], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sb0 = T.int32()
        sb1 = T.int32()
        sb2 = T.int32()
        sc = T.int32()
        ob = T.int32()
        A = T.match_buffer(a, (rb, kp), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (2, kg, 16, 4), "int8", elem_offset=ob, offset_factor=1, strides=[sb0, sb1, sb2, 1])
        C = T.match_buffer(c, (rb, cols), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:rb, 0:cols], A[0:rb, 0:kp], B[0:2, 0:kg, 0:16, 0:4])
            T.writes(C[0:rb, 0:cols])
            # the task's first block (and with configure_last its last one too): configure the tiles
            if ob // pair_bytes % blocks == 0 or ob // pair_bytes % blocks == reconfigure_at:
                cfg = T.alloc_buffer((8,), "int64")     # global scope: under 1 KB, TVM puts it on the stack
                for w in T.unroll(8):
                    cfg[w] = T.Select(w == 0, T.int64(words[0]), T.Select(w == 2, T.int64(words[2]), T.Select(
                        w == 3, T.int64(words[3]), T.Select(w == 6, T.int64(words[6]), T.int64(0)))))
                # operands by element address, not tvm_access_ptr: see "Operand addresses" in the module docstring
                _tile("ldtilecfg", T.address_of(cfg[0]))
            for t in T.unroll(4):
                _tile("tilezero", T.Cast("uint8", t))
            for kk in T.serial(kp // K_BLOCK):
                # tmm4/5: rows 0-15/16-31 of A; tmm6/7: panels 0, 1 (16 K-groups each)
                _tile("tileloadd64", u8(4), T.address_of(A[0, kk * 64]), T.int64(sa))
                _tile("tileloadd64", u8(6), T.address_of(B[0, kk * 16, 0, 0]), T.int64(sb1))
                _tile("tdpbusd", u8(0), u8(4), u8(6))
                _tile("tileloadd64", u8(7), T.address_of(B[1, kk * 16, 0, 0]), T.int64(sb1))
                _tile("tdpbusd", u8(1), u8(4), u8(7))
                _tile("tileloadd64", u8(5), T.address_of(A[16, kk * 64]), T.int64(sa))
                _tile("tdpbusd", u8(2), u8(5), u8(6))
                _tile("tdpbusd", u8(3), u8(5), u8(7))
            _tile("tilestored64", u8(0), T.address_of(C[0, 0]), T.int64(sc * 4))
            _tile("tilestored64", u8(1), T.address_of(C[0, 16]), T.int64(sc * 4))
            _tile("tilestored64", u8(2), T.address_of(C[16, 0]), T.int64(sc * 4))
            _tile("tilestored64", u8(3), T.address_of(C[16, 16]), T.int64(sc * 4))
            if ob // pair_bytes % blocks == blocks - 1:     # the task's last block
                _tile("tilerelease")

    name = f"intvit_amx_u8s8s32_{rb}x{cols}x{kp}_in_{chunk}" + ("_reconfigured" if configure_last else "") \
        + ("_emulated" if emulated else "")
    TensorIntrin.register(name + "_init", init_desc, init_impl, override=True)
    TensorIntrin.register(name, desc, impl, override=True)
    return name + "_init", name


# -- the schedule -----------------------------------------------------------------------------------

def column_chunk(np_: int, row_tasks: int = 1) -> int:
    """Columns per task: the most 32-column blocks (at most ``MAX_COL_BLOCKS``) that divide ``np_`` and
    still leave ``MIN_TASKS`` tasks to share out with the ``row_tasks`` (leading index, row block) pairs;
    the fewest when none does."""
    blocks = np_ // COL_BLOCK
    divisors = [d for d in range(1, min(blocks, MAX_COL_BLOCKS) + 1) if blocks % d == 0]
    enough = [d for d in divisors if row_tasks * (blocks // d) >= MIN_TASKS]
    return (max(enough) if enough else min(divisors)) * COL_BLOCK


def amx_shape(sch):
    """``(lead extents, rows_p, np_, kp)`` of the ``packed_gemm_te`` VPDPBUSD kernel in ``sch`` when the AMX
    schedule applies to it (rows, columns and K padded to 32, 32 and 64), else None."""
    names = block_names(sch)
    if not {ACC_BLOCK, OUT_BLOCK, SHIFTED_INPUT_BLOCK} <= set(names):
        return None
    if str(sch.get(sch.get_sblock(SHIFTED_INPUT_BLOCK)).writes[0].source.dtype) != "uint8":
        return None                     # the int16 (vpdpwssd) form: AMX has no int16 dot product
    acc = sch.get(sch.get_sblock(ACC_BLOCK))
    *lead, rows_p, np_, kp = (int(iv.dom.extent) for iv in acc.iter_vars)
    if rows_p % ROW_BLOCK or np_ % COL_BLOCK or kp % K_BLOCK:
        return None
    return lead, rows_p, np_, kp


def apply_amx_gemm_schedule(sch, cols: int | None = None) -> None:
    """Schedule the ``gemm.packed_gemm_te`` VPDPBUSD kernel in ``sch`` (a ``s_tir.Schedule``) for AMX, in place.

    One parallel task per (leading index, ``cols``-column chunk, 32-row block;
    default ``column_chunk``); in it a serial loop over the chunk's 32 × 32
    blocks, each tensorized as one call of the ``register_amx_intrinsics``
    pair (2 × 2 accumulator tiles over the whole K; the tile configuration
    loaded by the task's first block, the tiles released after its last)
    and followed by the epilogue block on that 32 × 32 int32 block. The
    shifted activations are staged per task when there is one column chunk,
    else once in their own parallel loop (module docstring). Raises
    ``ValueError`` for a kernel ``amx_shape`` refuses. The caller adds
    ``with_tile_request`` to the scheduled function (``schedules`` does).
    """
    shape = amx_shape(sch)
    if shape is None:
        raise ValueError("not a u8 x s8 packed GEMM with rows, columns and K padded to 32, 32 and 64 "
                         "(build it under gemm.amx_layout())")
    lead_dims, rows_p, np_, kp = shape
    acc, out = sch.get_sblock(ACC_BLOCK), sch.get_sblock(OUT_BLOCK)
    if BYTE_SPLIT in sch.get(acc).annotations:
        _apply_amx_split_schedule(sch, lead_dims[1:], rows_p, np_, kp, cols)
        return
    cols = cols or column_chunk(np_, int(np.prod(lead_dims, dtype=np.int64)) * (rows_p // ROW_BLOCK))
    *lead, i, j, k = sch.get_loops(acc)
    io, ii = sch.split(i, [None, ROW_BLOCK])
    jc, jb, jj = sch.split(j, [None, cols // COL_BLOCK, COL_BLOCK])
    sch.reorder(*lead, jc, io, jb, ii, jj, k)
    task = sch.fuse(*lead, jc, io)
    sch.parallel(task)
    fold_output_rows(sch, out, len(lead))      # leading axes folded into the rows (gemm._amx_linear_te)
    sch.reverse_compute_at(out, jb)
    if BYTE_TABLE_BLOCK in block_names(sch):      # the GELU table after fc1: looked up on the same block
        lookup, copy = sch.get_sblock(BYTE_TABLE_BLOCK), sch.get_sblock(BYTE_TABLE_OUT_BLOCK)
        sch.reverse_compute_at(lookup, jb)
        fold_output_rows(sch, copy, 0)
        sch.reverse_compute_at(copy, jb)
        sch.vectorize(sch.get_loops(copy)[-1])
        tensorize_byte_table(sch, lookup)
    _stage_and_tensorize(sch, task, cols == np_, acc, ii, kp, cols)
    # the epilogue: int64 arithmetic on 16 lanes (explicit, whatever LLVM's vector-width preference)
    _, inner = sch.split(sch.get_loops(out)[-1], [None, EPILOGUE_LANES])
    sch.vectorize(inner)


def _stage_and_tensorize(sch, task, one_chunk: bool, acc, rows_loop, kp: int, cols: int,
                         configure_last: bool = False) -> None:
    """Stage the u8 operand (in each task when the kernel has one column chunk, else in its own parallel
    loop) and tensorize the accumulator block at ``rows_loop`` with the AMX intrinsic pair."""
    shifted = sch.get_sblock(SHIFTED_INPUT_BLOCK)
    if one_chunk:           # one column chunk: each task stages its own 32 rows, once, just before using them
        sch.compute_at(shifted, task)
    else:
        parallel_rows(sch, shifted)
    sch.vectorize(sch.get_loops(shifted)[-1])
    init_intrin, update_intrin = register_amx_intrinsics(kp, cols, configure_last=configure_last)
    init = sch.decompose_reduction(acc, rows_loop)
    sch.tensorize(rows_loop, update_intrin)
    sch.tensorize(sch.get_loops(init)[-2], init_intrin)


def _apply_amx_split_schedule(sch, lead_dims, rows_p: int, np_: int, kp: int, cols: int | None) -> None:
    """The AMX schedule of ``gemm.split_probs_gemm_te`` (A·V as two byte GEMMs): the same tasks and
    32 × 32 blocks as ``apply_amx_gemm_schedule``, laid out from the epilogue block (which covers whole
    blocks: the padded rows) with the two-byte accumulator computed per block — the intrinsic runs
    twice per block, high bytes then low, so the tile configuration is loaded again on a task's last
    block (``register_amx_intrinsics(configure_last=True)``) — and the real rows copied out per block."""
    cols = cols or column_chunk(np_, int(np.prod(lead_dims, dtype=np.int64)) * (rows_p // ROW_BLOCK))
    acc, out, crop = (sch.get_sblock(b) for b in (ACC_BLOCK, OUT_BLOCK, SPLIT_CROP_BLOCK))
    *lead, i, j = sch.get_loops(out)
    io, ii = sch.split(i, [None, ROW_BLOCK])
    jc, jb, jj = sch.split(j, [None, cols // COL_BLOCK, COL_BLOCK])
    sch.reorder(*lead, jc, io, jb, ii, jj)
    task = sch.fuse(*lead, jc, io)
    sch.parallel(task)
    sch.compute_at(acc, jb)
    sch.reverse_compute_at(crop, jb)
    sch.vectorize(sch.get_loops(crop)[-1])
    _stage_and_tensorize(sch, task, cols == np_, acc, sch.get_loops(acc)[-3], kp, cols, configure_last=True)
    _, inner = sch.split(jj, [None, EPILOGUE_LANES])
    sch.vectorize(inner)
