"""The AMX emulator (``tvm_backend/amx_emulator.c``) against the Intel SDM's definitions, called directly: what
``tdpbusd`` computes (full and partial tiles, int32 wrap-around), and a fault wherever the hardware raises #UD or
#GP — so that the AMX kernels' tests (``test_tvm_amx.py``), which run on it where the CPU has no AMX, would see
a schedule that forgets a tile configuration or mixes up tile shapes."""
import ctypes
import threading

import numpy as np
import pytest

from intvit.tvm_backend import amx, amx_emulator

pytestmark = pytest.mark.skipif(amx_emulator.unavailable_reason() is not None,
                                reason=str(amx_emulator.unavailable_reason()))


class Tiles:
    """The emulator's functions with ctypes argument types, and its fault record."""

    def __init__(self):
        self.lib = lib = amx_emulator.load()
        i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
        for name, args in (("ldtilecfg", [ptr]), ("tilezero", [i32]), ("tileloadd64", [i32, ptr, i64]),
                           ("tilestored64", [i32, ptr, i64]), ("tdpbusd", [i32, i32, i32]), ("tilerelease", [])):
            getattr(lib, amx_emulator.PREFIX + name).argtypes = args
        lib.intvit_amx_clear_faults()

    def configure(self, shapes=None, palette=1, reserved=0):
        """``ldtilecfg`` with ``shapes[t] = (rows, bytes per row)`` (default: all 16 × 64, as intvit's kernels)."""
        cfg = np.zeros(64, np.uint8)
        cfg[0], cfg[2] = palette, reserved
        for t, (rows, colsb) in enumerate(shapes or [(16, 64)] * 8):
            cfg[16 + 2 * t], cfg[48 + t] = colsb, rows
        self.lib.intvit_amx_ldtilecfg(cfg.ctypes.data)

    def load(self, t, array):
        self.lib.intvit_amx_tileloadd64(t, array.ctypes.data, array.strides[0])

    def store(self, t, array):
        self.lib.intvit_amx_tilestored64(t, array.ctypes.data, array.strides[0])

    def __getattr__(self, name):
        return getattr(self.lib, amx_emulator.PREFIX + name)

    def faults(self):
        count, message = self.lib.intvit_amx_faults(), self.lib.intvit_amx_fault_message().decode()
        self.lib.intvit_amx_clear_faults()
        return count, message


def reference_tdpbusd(c, a, b):
    """``C += A·B`` as the SDM defines TDPBUSD: A u8 [rows, 4K], B s8 [K, 4N] (VNNI layout), int32 wrap-around."""
    rows, k4 = a.shape
    prod = a.astype(np.int64).reshape(rows, k4 // 4, 1, 4) * b.view(np.int8).astype(np.int64).reshape(
        1, k4 // 4, -1, 4)
    return ((c.astype(np.int64) + prod.sum(axis=(1, 3)) + 2**31) % 2**32 - 2**31).astype(np.int32)


def test_tdpbusd_on_full_tiles_equals_the_sdm_definition_with_wraparound():
    tiles = Tiles()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 64), dtype=np.uint8)
    b = rng.integers(-128, 128, (16, 64)).astype(np.int8)
    a[0], b[:, :4] = 255, -128                                  # the extreme products
    c = rng.integers(-2**31, 2**31, (16, 16), dtype=np.int64).astype(np.int32)
    c[0, 0] = -2**31 + 5                                        # the sum wraps below int32's range
    tiles.configure()
    tiles.load(0, c), tiles.load(4, a), tiles.load(6, b)
    tiles.tdpbusd(0, 4, 6)
    tiles.tdpbusd(0, 4, 6)                                      # accumulates
    out = np.zeros((16, 16), np.int32)
    tiles.store(0, out)
    assert np.array_equal(out, reference_tdpbusd(reference_tdpbusd(c, a, b), a, b))
    assert tiles.faults() == (0, "")
    tiles.tilerelease()


def test_partial_tiles_use_only_their_configured_rows_and_bytes():
    """Tiles of 5 rows × 12 bytes (A), 3 rows × 20 bytes (B), 5 × 20 (C), loaded from strided rows: only the
    configured part is read and written; the rest of the destination rows is left as it was."""
    tiles = Tiles()
    rng = np.random.default_rng(1)
    shapes = [(5, 20), (0, 0), (5, 12), (3, 20)] + [(0, 0)] * 4
    tiles.configure(shapes)
    a_mem = rng.integers(0, 256, (5, 40), dtype=np.uint8)      # a row stride of 40 bytes, 12 of them used
    b = rng.integers(-128, 128, (3, 20)).astype(np.int8)
    tiles.tilezero(0)
    tiles.load(2, a_mem), tiles.load(3, b)
    tiles.tdpbusd(0, 2, 3)
    out = np.full((8, 9), 77, np.int32)                         # 36-byte rows, 20 of them written
    tiles.store(0, out)
    assert np.array_equal(out[:5, :5], reference_tdpbusd(np.zeros((5, 5), np.int32), a_mem[:, :12], b))
    assert (out[:5, 5:] == 77).all() and (out[5:] == 77).all()
    assert tiles.faults() == (0, "")
    tiles.tilerelease()


@pytest.mark.parametrize("mistake,message", [
    (lambda t: t.tilezero(0), "no tile configuration is loaded in this thread"),
    (lambda t: (t.configure(), t.tilerelease(), t.tilezero(0)), "no tile configuration is loaded"),
    (lambda t: (t.configure(), t.configure(palette=0), t.tilezero(0)), "no tile configuration is loaded"),
    (lambda t: (t.configure([(16, 64)] * 4 + [(0, 0)] * 4), t.tilezero(5)), "tile 5 while that tile has no rows"),
    (lambda t: (t.configure(), t.tdpbusd(0, 4, 4)), "not distinct"),
    (lambda t: (t.configure([(16, 64)] * 6 + [(16, 32)] * 2), t.tdpbusd(0, 4, 6)), "shapes disagree"),
    (lambda t: (t.configure([(8, 64)] + [(16, 64)] * 7), t.tdpbusd(0, 4, 6)), "shapes disagree"),
    (lambda t: t.configure(palette=2), "palette 2"),
    (lambda t: t.configure(reserved=1), "reserved byte 2"),
    (lambda t: t.configure([(17, 64)] * 8), "17 rows of 64 bytes"),
])
def test_what_faults_on_the_hardware_is_recorded_as_a_fault(mistake, message):
    tiles = Tiles()
    mistake(tiles)
    count, text = tiles.faults()
    assert count >= 1 and message in text
    tiles.tilerelease()


def test_the_tile_configuration_belongs_to_the_thread_that_loaded_it():
    """As on the hardware, another thread (a TVM worker) sees no configuration until it loads its own."""
    tiles = Tiles()
    tiles.configure()
    worker = threading.Thread(target=lambda: tiles.tilezero(0))
    worker.start(), worker.join()
    count, text = tiles.faults()
    assert count == 1 and "no tile configuration is loaded in this thread" in text
    tiles.tilezero(0)                                           # still configured in this one
    assert tiles.faults() == (0, "")
    tiles.tilerelease()


def test_check_raises_the_first_fault_and_clears_the_record():
    tiles = Tiles()
    tiles.tilezero(3)
    tiles.tilezero(3)
    with pytest.raises(amx_emulator.AmxEmulatorFault, match="2 emulated AMX instruction.*TILEZERO on tile 3"):
        amx_emulator.check()
    amx_emulator.check()                                        # nothing since


def test_intvits_tile_configuration_is_valid():
    """The configuration the AMX kernels load (``amx.tile_config_words``) is accepted: eight 16 × 64 B tiles."""
    tiles = Tiles()
    words = np.array(amx.tile_config_words(), np.int64)
    tiles.ldtilecfg(words.ctypes.data)
    for t in range(8):
        tiles.tilezero(t)
    assert tiles.faults() == (0, "")
    tiles.tilerelease()
