/* A software model of the Intel AMX-INT8 instructions intvit's AMX kernels issue (amx.py), for running
 * those kernels exactly on a CPU without AMX: amx_emulator.py compiles this file, loads it into the
 * process, and under amx_emulator.emulation() the kernels call these functions where they would issue
 * the instructions.  Semantics follow the Intel SDM (vol. 2, "LDTILECFG", "TILELOADD", "TDPBUSD",
 * "TILESTORED", "TILEZERO", "TILERELEASE"):
 *
 *   - the tile configuration and the eight tile registers are per thread (thread-local here);
 *   - LDTILECFG with palette 1 configures every tile's rows (<= 16) and bytes per row (<= 64) and zeroes
 *     the tiles; palette 0 releases them, as TILERELEASE does;
 *   - a tile instruction on a released or unconfigured tile, or with shapes that disagree, raises #UD on
 *     the hardware: here it is recorded as a fault (the first one's message kept) and does nothing;
 *   - TDPBUSD:  C[m][n] += sum_{k < K/4} sum_{q < 4} u8(A[m][4k+q]) * s8(B[k][4n+q])  in int32,
 *     wrapping, with K = A's bytes per row = 4 * B's rows; rows and bytes beyond the shape are zeroed.
 *
 * Every function returns 0; faults are read with intvit_amx_faults / intvit_amx_fault_message. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define TILES 8
#define MAX_ROWS 16
#define MAX_BYTES 64

typedef struct {
    int configured;
    uint8_t rows[TILES];
    uint16_t colsb[TILES];
    uint8_t data[TILES][MAX_ROWS][MAX_BYTES];
} tile_state;

static __thread tile_state state;
static int64_t fault_count;
static char fault_text[256];
static int permission_granted = 1;

static void fault(const char *fmt, ...) {
    if (__atomic_fetch_add(&fault_count, 1, __ATOMIC_SEQ_CST) == 0) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(fault_text, sizeof fault_text, fmt, args);
        va_end(args);
    }
}

static int usable(int t, const char *op) {
    if (t < 0 || t >= TILES) {
        fault("%s on tile %d: there are tiles 0-7 (#UD)", op, t);
        return 0;
    }
    if (!state.configured || state.rows[t] == 0) {
        fault("%s on tile %d while %s (#UD)", op, t,
              state.configured ? "that tile has no rows configured" : "no tile configuration is loaded in this "
              "thread (LDTILECFG missing, or the tiles were released)");
        return 0;
    }
    return 1;
}

int32_t intvit_amx_ldtilecfg(const uint8_t *cfg) {
    if (cfg[0] == 0) {
        memset(&state, 0, sizeof state);
        return 0;
    }
    if (cfg[0] != 1) {
        fault("LDTILECFG with palette %d (#GP: palettes 0 and 1 exist)", cfg[0]);
        return 0;
    }
    for (int i = 2; i < 16; i++)
        if (cfg[i]) {
            fault("LDTILECFG with reserved byte %d set to %d (#GP)", i, cfg[i]);
            return 0;
        }
    tile_state next;
    memset(&next, 0, sizeof next);
    for (int t = 0; t < TILES; t++) {
        uint16_t colsb = (uint16_t)(cfg[16 + 2 * t] | (cfg[17 + 2 * t] << 8));
        uint8_t rows = cfg[48 + t];
        if (colsb > MAX_BYTES || rows > MAX_ROWS || (rows == 0) != (colsb == 0)) {
            fault("LDTILECFG: tile %d configured as %d rows of %d bytes (#GP)", t, rows, colsb);
            return 0;
        }
        next.rows[t] = rows;
        next.colsb[t] = colsb;
    }
    next.configured = 1;
    state = next;
    return 0;
}

int32_t intvit_amx_tilerelease(void) {
    memset(&state, 0, sizeof state);
    return 0;
}

int32_t intvit_amx_tilezero(int32_t t) {
    if (usable(t, "TILEZERO"))
        memset(state.data[t], 0, sizeof state.data[t]);
    return 0;
}

int32_t intvit_amx_tileloadd64(int32_t t, const uint8_t *base, int64_t stride) {
    if (!usable(t, "TILELOADD"))
        return 0;
    memset(state.data[t], 0, sizeof state.data[t]);
    for (int r = 0; r < state.rows[t]; r++)
        memcpy(state.data[t][r], base + r * stride, state.colsb[t]);
    return 0;
}

int32_t intvit_amx_tilestored64(int32_t t, uint8_t *base, int64_t stride) {
    if (!usable(t, "TILESTORED"))
        return 0;
    for (int r = 0; r < state.rows[t]; r++)
        memcpy(base + r * stride, state.data[t][r], state.colsb[t]);
    return 0;
}

int32_t intvit_amx_tdpbusd(int32_t c, int32_t a, int32_t b) {
    if (!usable(c, "TDPBUSD") || !usable(a, "TDPBUSD") || !usable(b, "TDPBUSD"))
        return 0;
    if (c == a || c == b || a == b) {
        fault("TDPBUSD with tiles %d, %d, %d that are not distinct (#UD)", c, a, b);
        return 0;
    }
    int rows = state.rows[c], k_groups = state.colsb[a] / 4, cols = state.colsb[c] / 4;
    if (state.rows[a] != rows || state.colsb[a] != 4 * state.rows[b] || state.colsb[b] != state.colsb[c]
        || state.colsb[a] % 4 || state.colsb[c] % 4) {
        fault("TDPBUSD shapes disagree: C %d rows, A %d bytes per row, B %d rows (#UD)", rows, state.colsb[a],
              state.rows[b]);
        return 0;
    }
    uint32_t acc[MAX_ROWS][MAX_BYTES / 4];
    memcpy(acc, state.data[c], sizeof acc);
    for (int m = 0; m < rows; m++)
        for (int k = 0; k < k_groups; k++) {
            const uint8_t *arow = &state.data[a][m][4 * k];
            const int8_t *brow = (const int8_t *)state.data[b][k];
            for (int n = 0; n < cols; n++) {
                int32_t dot = 0;        /* four u8 x s8 products: |dot| < 2^17, no overflow */
                for (int q = 0; q < 4; q++)
                    dot += (int32_t)arow[q] * (int32_t)brow[4 * n + q];
                acc[m][n] += (uint32_t)dot;     /* int32 wrap-around, as the hardware */
            }
        }
    memset(state.data[c], 0, sizeof state.data[c]);
    for (int m = 0; m < rows; m++)
        memcpy(state.data[c][m], acc[m], state.colsb[c]);
    return 0;
}

/* arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) as the emulated kernel answers it: 0 when granted. */
int64_t intvit_amx_arch_prctl(int64_t code, int64_t feature) {
    (void)code;
    (void)feature;
    return permission_granted ? 0 : -1;
}

void intvit_amx_set_permission(int32_t granted) { permission_granted = granted != 0; }

int64_t intvit_amx_faults(void) { return __atomic_load_n(&fault_count, __ATOMIC_SEQ_CST); }

const char *intvit_amx_fault_message(void) { return fault_text; }

void intvit_amx_clear_faults(void) {
    fault_text[0] = 0;
    __atomic_store_n(&fault_count, 0, __ATOMIC_SEQ_CST);
}
