//! AVX-512 axpy-form kernel for FP8 weights stored `[in, out]` (row-major K x N, `x @ w`):
//! `P` weight rows at a time are decoded to float32 in registers (the decoding of
//! [`crate::arch::x86_64::avx512::gemv`]), 16 * CV columns per step, and added, times each
//! activation row's element, into `R x CV` accumulators loaded from and stored to the
//! output slice (which stays in L1). The weights are read once, row after row, as bytes,
//! and never packed.
//!
//! Walking K down a narrow column strip instead (accumulators held in registers for all of
//! K) touches a new page at every step of a wide matrix; measured at 4096 x 4096, one thread
//! (noisy, shared machine): 2 rows 9.2 -> 3.1 ms, 4 rows 8.1 -> 3.6 ms with this structure,
//! one row 2.4 ms either way (bound by the binary16 decode, hence `axpy_table_e4m3`).
//!
//! Above 8 activation rows, `axpy_tiles_avx512` decodes each 64 x 64 weight tile once into an
//! L1 buffer that every group of 6 rows then multiplies (accumulators in registers for the
//! tile's 64 rows), instead of decoding the weights once per group of 8.

#[allow(clippy::wildcard_imports)]
use std::arch::x86_64::*;

use crate::arch::x86_64::avx512::gemv::{
    decode16_e4m3, decode16_e4m3_scaled_no_nan, decode16_e5m2, decode64_e4m3_table, table_position,
    E4m3Bf16Tables, TableRegs,
};
use crate::gemm::gemv::Weights;

/// Weight rows per pass over the output slice: the pass reads `P` rows side by side (`P`
/// sequential streams, which the hardware prefetchers follow) and loads and stores each
/// accumulator once per `P` multiply-adds per row.
const P: usize = 4;

/// # Safety
/// AVX-512 F + BW + VL available; as `gemm::axpy::AxpyFn`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn axpy_avx512(
    klen: usize,
    xt: *const f32,
    rows: usize,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    weights: Weights,
    out: *mut f32,
    ldo: usize,
) {
    macro_rules! go {
        ($r:literal, $c:literal) => {
            // SAFETY: forwarded from the caller.
            unsafe { axpy512::<$r, $c>(klen, xt, w, ldw, ncols, weights, out, ldo) }
        };
    }
    match rows {
        1 => go!(1, 4),
        2 => go!(2, 4),
        3 => go!(3, 4),
        4 => go!(4, 4),
        5 => go!(5, 4),
        6 => go!(6, 4),
        7 => go!(7, 2),
        _ => go!(8, 2),
    }
}

/// Prefetches into L2 the `ncols` bytes of the `plen` weight rows at `w` (`ldw` apart), which
/// a later pass reads. A pass reads a few hundred bytes of each row, rows a page or more
/// apart: the hardware prefetchers, which follow streams within a page, do not fetch them
/// ahead, and each pass would wait for its rows at memory latency (in a profile, the NaN scan,
/// the first reader of each row, took most of the stalls). Measured on an Intel Xeon (Emerald
/// Rapids class), one thread, 4096 x 4096 E4M3 weights `[in, out]`, separate runs on a noisy
/// machine: 32 rows (tile path) 14.4 -> 13.1 ms, 16 rows 9.0 -> 8.7 ms. Prefetches do not
/// fault; the addresses (past the last row, possibly outside the weights) are formed with
/// wrapping arithmetic.
#[inline(always)]
fn prefetch_rows(w: *const u8, ldw: isize, plen: usize, ncols: usize) {
    for pp in 0..plen {
        let row = w.wrapping_offset(pp as isize * ldw);
        for j in (0..ncols).step_by(64) {
            // SAFETY: a prefetch is a hint; it reads nothing architecturally and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(j).cast()) };
        }
    }
}

/// Whether the `plen` weight rows at `w` (`ncols` bytes each, `ldw` apart) hold an E4M3
/// NaN code (0x7F / 0xFF: the only bytes that ORed with the sign bit give 0xFF). The scan
/// also brings the rows into L1 for the pass that follows.
#[inline(always)]
unsafe fn has_e4m3_nan(w: *const u8, ldw: isize, plen: usize, ncols: usize) -> bool {
    // SAFETY: the loads are masked to `ncols` bytes of each row; the caller enables
    // AVX-512 F + BW.
    unsafe {
        let sign = _mm512_set1_epi8(-128);
        let ones = _mm512_set1_epi8(-1);
        let mut hit = 0u64;
        for pp in 0..plen {
            let row = w.offset(pp as isize * ldw);
            let mut j = 0;
            while j < ncols {
                let n = (ncols - j).min(64);
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                let v = _mm512_maskz_loadu_epi8(mask, row.add(j).cast());
                hit |= _mm512_cmpeq_epi8_mask(_mm512_or_si512(v, sign), ones);
                j += 64;
            }
        }
        hit != 0
    }
}

/// `out[r * ldo + j] = sum_p xt[p * R + r] * decode(w[p * ldw + j])` for `r < R`, `j < ncols`,
/// `P` weight rows per pass over the output slice, `CV` vectors of 16 columns per step.
/// Each pass first scans its E4M3 rows for NaN codes (see [`Weights`]) and decodes without the
/// NaN fix-up when there are none.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn axpy512<const R: usize, const CV: usize>(
    klen: usize,
    xt: *const f32,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    weights: Weights,
    out: *mut f32,
    ldo: usize,
) {
    let step = 16 * CV;
    let mut p0 = 0;
    while p0 < klen {
        let plen = P.min(klen - p0);
        let rows = w.wrapping_offset(p0 as isize * ldw);
        // SAFETY: `plen` rows of `ncols` bytes from row p0 are inside the weights.
        let kind = match weights {
            Weights::E5M2 => 0,
            Weights::E4M3 => 1,
            Weights::E4M3TimesTwoPowMinus8 if unsafe { has_e4m3_nan(rows, ldw, plen, ncols) } => 2,
            Weights::E4M3TimesTwoPowMinus8 => 3,
        };
        if p0 + 2 * P < klen {
            prefetch_rows(
                w.wrapping_offset((p0 + 2 * P) as isize * ldw),
                ldw,
                P.min(klen - p0 - 2 * P),
                ncols,
            );
        }
        let first = p0 == 0;
        let mut j = 0;
        while j < ncols {
            let width = step.min(ncols - j);
            let masks = column_masks::<CV>(width);
            // SAFETY: loads and stores are masked to the `width` columns from j of the
            // `plen` weight rows and the R output rows; xt holds R floats per K step.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); CV]; R];
                if !first {
                    for r in 0..R {
                        for c in 0..CV {
                            acc[r][c] =
                                _mm512_maskz_loadu_ps(masks[c], out.add(r * ldo + j + 16 * c));
                        }
                    }
                }
                for pp in 0..plen {
                    let row = rows.offset(pp as isize * ldw).add(j);
                    let d: [__m512; CV] = std::array::from_fn(|c| {
                        // Masked-off lanes read nothing; their address may lie past the
                        // weights, so it is formed with wrapping arithmetic.
                        let b = _mm_maskz_loadu_epi8(masks[c], row.wrapping_add(16 * c).cast());
                        match kind {
                            0 => decode16_e5m2(b),
                            1 => _mm512_mul_ps(decode16_e4m3(b), _mm512_set1_ps(256.0)),
                            2 => decode16_e4m3(b),
                            _ => decode16_e4m3_scaled_no_nan(b),
                        }
                    });
                    let x = xt.add((p0 + pp) * R);
                    for r in 0..R {
                        let xv = _mm512_set1_ps(*x.add(r));
                        for c in 0..CV {
                            acc[r][c] = _mm512_fmadd_ps(xv, d[c], acc[r][c]);
                        }
                    }
                }
                for r in 0..R {
                    for c in 0..CV {
                        _mm512_mask_storeu_ps(out.add(r * ldo + j + 16 * c), masks[c], acc[r][c]);
                    }
                }
            }
            j += step;
        }
        p0 += P;
    }
}

/// Weight rows per decoded tile of [`axpy_tiles_avx512`]: each accumulator is loaded and
/// stored once per this many multiply-adds per row.
pub(crate) const TILE_ROWS: usize = 64;

/// Columns per decoded tile of [`axpy_tiles_avx512`]: one table block of 64, one pass of 4
/// vectors. The tile (64 x 64 floats, 16 KiB) and the output strip of 32 rows (8 KiB) stay
/// in L1.
pub(crate) const TILE_COLS: usize = 64;

/// Activation rows per pass of [`axpy_tiles_avx512`]: 6 rows x 4 vectors, 24 accumulators.
pub(crate) const TILE_GROUP: usize = 6;

/// More than 8 activation rows times FP8 weights `[in, out]`: each pass decodes a tile of
/// [`TILE_ROWS`] weight rows x [`TILE_COLS`] columns to float32 once, into `tile` (which
/// stays in L1), and every group of [`TILE_GROUP`] rows then multiplies it from there, with
/// its accumulators in registers for all the tile's rows; [`axpy_avx512`], per group of 8,
/// would decode the same weights once per 8 activation rows. The products and
/// their order are those of [`axpy_avx512`], so the results are bitwise the same.
///
/// Tiles go across all columns, then down to the next [`TILE_ROWS`] rows: the weights are
/// read as `TILE_ROWS` sequential streams, which the hardware prefetchers follow, while the
/// output (all rows, in L2) is loaded and stored once per tile row. Measured in a standalone
/// loop of this structure (Intel Xeon, one thread, 32 x 4096 x 4096, weights in L3):
/// 8.1-8.5 ms; down each strip through blocks of 256 / 1024 / 4096 rows 9.2-9.9 / 8.4 / 9.1-9.2
/// ms; software prefetching of the next tile 0-18% slower in every order.
///
/// With `table` (E4M3, `weights == Weights::E4M3`, VBMI) the tile is decoded by
/// [`decode_tile_table`]: columns are then in table order within each 64-column block, in
/// `out` as well (positions up to `ncols` rounded up to 64 are computed); the caller maps
/// them back with [`table_position`].
///
/// `xt` holds the activations as `gemm::axpy` packs them for this path: group `g0` (rows
/// `g0..g0 + TILE_GROUP`, or fewer in the last) from `g0 * ldxt` on, K-major; this call
/// multiplies K steps `k0..k0 + klen` of each.
///
/// `out` is strip-major: strip `s` (columns `s * TILE_COLS..`) from `s * m * TILE_COLS` on,
/// row `r` of it at `r * TILE_COLS`, so that the slice a strip works on is contiguous (a few
/// pages, where rows of a row-major output would each be a page).
///
/// # Safety
/// AVX-512 F + BW + VL available (and VBMI with `table`); `w` holds `klen` rows of `ncols`
/// bytes `ldw` apart; `out` holds `ncols.div_ceil(TILE_COLS) * m * TILE_COLS` floats; `tile`
/// holds `TILE_ROWS * TILE_COLS` floats; `xt` as above, with `k0 + klen <= ldxt`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn axpy_tiles_avx512(
    klen: usize,
    m: usize,
    xt: *const f32,
    ldxt: usize,
    k0: usize,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    weights: Weights,
    table: Option<&E4m3Bf16Tables>,
    out: *mut f32,
    tile: *mut f32,
) {
    for (p0, jc) in (0..klen)
        .step_by(TILE_ROWS)
        .flat_map(|p0| (0..ncols).step_by(TILE_COLS).map(move |jc| (p0, jc)))
    {
        let (plen, cn) = (TILE_ROWS.min(klen - p0), TILE_COLS.min(ncols - jc));
        let rows = w.wrapping_offset(p0 as isize * ldw).wrapping_add(jc);
        // Either decode fills whole tile rows (zero past `cn`).
        if let Some(tables) = table {
            // SAFETY: as below; with `table` the caller has checked VBMI, and TILE_COLS is
            // 64, one table block.
            unsafe { decode_tile_table(rows, ldw, plen, cn, tables, tile, TILE_COLS) };
        } else {
            // SAFETY: `plen` rows of `cn` bytes from (p0, jc) are inside the weights; the
            // tile holds TILE_ROWS rows of TILE_COLS floats.
            unsafe { decode_tile(rows, ldw, plen, cn, weights, tile, TILE_COLS) };
        }
        for g0 in (0..m).step_by(TILE_GROUP) {
            macro_rules! go {
                ($r:literal) => {
                    // SAFETY: group g0's K steps k0 + p0.. are at its xt offset; its output
                    // rows are rows g0.. of strip jc / TILE_COLS in `out`; the tile holds plen
                    // rows.
                    unsafe {
                        tile_pass::<$r>(
                            plen,
                            xt.add(g0 * ldxt + (k0 + p0) * $r),
                            tile,
                            out.add((jc / TILE_COLS * m + g0) * TILE_COLS),
                            p0 == 0,
                        )
                    }
                };
            }
            match m - g0 {
                1 => go!(1),
                2 => go!(2),
                3 => go!(3),
                4 => go!(4),
                5 => go!(5),
                _ => go!(6),
            }
        }
    }
}

/// Decodes `plen` weight rows of `ncols` bytes (`ldw` apart) to float32 as the kernels'
/// activations expect them ([`Weights`]) into `tile` (rows `ldo` apart), in column order,
/// columns `ncols..ldo` zero. E4M3 rows are first scanned for NaN codes, and decoded without
/// the NaN fix-up when there are none.
///
/// # Safety
/// AVX-512 F + BW + VL available; the rows are inside the weights; `tile` holds `plen` rows
/// of `ldo` floats, `ldo` a multiple of 16 and at least `ncols`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn decode_tile(
    rows: *const u8,
    ldw: isize,
    plen: usize,
    ncols: usize,
    weights: Weights,
    tile: *mut f32,
    ldo: usize,
) {
    // SAFETY: loads are masked to the `ncols` bytes of each row (addresses of masked-off
    // lanes formed with wrapping arithmetic); stores are inside the tile's rows.
    unsafe {
        let kind = match weights {
            Weights::E5M2 => 0,
            Weights::E4M3 => 1,
            Weights::E4M3TimesTwoPowMinus8 if has_e4m3_nan(rows, ldw, plen, ncols) => 2,
            Weights::E4M3TimesTwoPowMinus8 => 3,
        };
        for pp in 0..plen {
            let row = rows.offset(pp as isize * ldw);
            let mut j = 0;
            while j < ldo {
                let n = ncols.saturating_sub(j).min(16);
                let mask = if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
                let b = _mm_maskz_loadu_epi8(mask, row.wrapping_add(j).cast());
                let d = match kind {
                    0 => decode16_e5m2(b),
                    1 => _mm512_mul_ps(decode16_e4m3(b), _mm512_set1_ps(256.0)),
                    2 => decode16_e4m3(b),
                    _ => decode16_e4m3_scaled_no_nan(b),
                };
                _mm512_storeu_ps(tile.add(pp * ldo + j), d);
                j += 16;
            }
        }
    }
}

/// [`decode_tile`] for E4M3 by [`decode64_e4m3_table`] (exact values, NaN codes to NaN, no
/// scan; a third of the binary16 decode's instructions): whole 64-column blocks (zero past
/// `ncols`), column `p` of each block at position [`table_position`]`(p)`.
///
/// # Safety
/// AVX-512 F + BW + VL + VBMI available; the rows are inside the weights; `tile` holds
/// `plen` rows of `ldo` floats, `ldo` a multiple of 64 and at least `ncols`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c")]
unsafe fn decode_tile_table(
    rows: *const u8,
    ldw: isize,
    plen: usize,
    ncols: usize,
    tables: &E4m3Bf16Tables,
    tile: *mut f32,
    ldo: usize,
) {
    // SAFETY: a whole 64-byte block is loaded unmasked only when it lies inside the row
    // (`n == 64`), a partial one masked to the row's `ncols` bytes (addresses of masked-off
    // lanes formed with wrapping arithmetic); stores are inside the tile's padded rows.
    unsafe {
        let t = TableRegs::load(tables);
        for pp in 0..plen {
            let row = rows.offset(pp as isize * ldw);
            let mut j = 0;
            while j < ncols {
                let n = (ncols - j).min(64);
                // Unmasked where the block is whole: a zero-masked load costs a vector ALU
                // uop on Intel cores.
                let v = if n == 64 {
                    _mm512_loadu_si512(row.wrapping_add(j).cast())
                } else {
                    _mm512_maskz_loadu_epi8((1u64 << n) - 1, row.wrapping_add(j).cast())
                };
                let dst = tile.add(pp * ldo + j);
                for (q, d) in decode64_e4m3_table(&t, v).into_iter().enumerate() {
                    _mm512_storeu_ps(dst.add(16 * q), d);
                }
                j += 64;
            }
        }
    }
}

/// `out[r * TILE_COLS + j] (+)= sum_{pp < plen} x[pp * R + r] * tile[pp * TILE_COLS + j]` for
/// `r < R`, `j < TILE_COLS`; the sum starts from zero when `first`. Whole rows are loaded and
/// stored without masks (a zero-masked load costs a vector ALU uop besides the load on Intel
/// cores, taken from the FMA ports): the tile is zero past its columns, so the extra output
/// columns hold zero (or NaN, for an infinite activation), and nobody reads them.
///
/// # Safety
/// AVX-512 F available; `x` holds `plen * R` floats, `tile` `plen` rows of `TILE_COLS`
/// floats, `out` `R` rows of `TILE_COLS` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_pass<const R: usize>(
    plen: usize,
    x: *const f32,
    tile: *const f32,
    out: *mut f32,
    first: bool,
) {
    const CV: usize = TILE_COLS / 16;
    // SAFETY: the loads and stores are inside the rows of `tile` and `out`; x holds plen * R
    // floats.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); CV]; R];
        if !first {
            for r in 0..R {
                for c in 0..CV {
                    acc[r][c] = _mm512_loadu_ps(out.add(r * TILE_COLS + 16 * c));
                }
            }
        }
        for pp in 0..plen {
            let d: [__m512; CV] =
                std::array::from_fn(|c| _mm512_loadu_ps(tile.add(pp * TILE_COLS + 16 * c)));
            for r in 0..R {
                let xv = _mm512_set1_ps(*x.add(pp * R + r));
                for c in 0..CV {
                    acc[r][c] = _mm512_fmadd_ps(xv, d[c], acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..CV {
                _mm512_storeu_ps(out.add(r * TILE_COLS + 16 * c), acc[r][c]);
            }
        }
    }
}

/// One activation row times E4M3 weights on CPUs with AVX-512 VBMI: 64 weight bytes at a
/// time are decoded by [`decode64_e4m3_table`] (exact; NaN codes become NaN), which leaves
/// column `p` of the 64 at position [`table_position`]`(p)`: the accumulators live in `out` in
/// that order between passes and are put back in column order at the end. The products and
/// their order are those of [`axpy_avx512`], so the results are bitwise the same.
///
/// # Safety
/// AVX-512 F + BW + VL + VBMI available; as `gemm::axpy::AxpyFn` with `rows == 1`, and `out`
/// holds `ncols` rounded up to a multiple of 64 floats; `xt` holds the activations
/// unscaled (weights decode to their exact values).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn axpy_table_e4m3(
    klen: usize,
    xt: *const f32,
    rows: usize,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    _weights: Weights,
    out: *mut f32,
    _ldo: usize,
) {
    debug_assert_eq!(rows, 1);
    let tables = E4m3Bf16Tables::new();
    // SAFETY: a weight block is loaded unmasked only when its 64 bytes lie inside the row
    // (`n == 64`), masked to the row's `ncols` bytes otherwise; `out` holds whole 64-column
    // blocks (padded); xt holds klen floats.
    unsafe {
        let t = TableRegs::load(&tables);
        let mut p0 = 0;
        while p0 < klen {
            let plen = P.min(klen - p0);
            let rows = w.wrapping_offset(p0 as isize * ldw);
            let mut j = 0;
            while j < ncols {
                let n = (ncols - j).min(64);
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                let o = out.add(j);
                let mut acc = [_mm512_setzero_ps(); 4];
                if p0 > 0 {
                    for (v, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps(o.add(16 * v));
                    }
                }
                for pp in 0..plen {
                    let row = rows.offset(pp as isize * ldw).add(j);
                    // Unmasked where the block is whole (see `decode_tile_table`).
                    let v = if n == 64 {
                        _mm512_loadu_si512(row.cast())
                    } else {
                        _mm512_maskz_loadu_epi8(mask, row.cast())
                    };
                    let d = decode64_e4m3_table(&t, v);
                    let xv = _mm512_set1_ps(*xt.add(p0 + pp));
                    for (a, dv) in acc.iter_mut().zip(d) {
                        *a = _mm512_fmadd_ps(xv, dv, *a);
                    }
                }
                for (v, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(o.add(16 * v), *a);
                }
                j += 64;
            }
            p0 += P;
        }
        // Back to column order.
        let mut j = 0;
        while j < ncols {
            let o = out.add(j);
            let mut cols = [0.0f32; 64];
            for (p, col) in cols.iter_mut().enumerate() {
                *col = *o.add(table_position(p));
            }
            std::ptr::copy_nonoverlapping(cols.as_ptr(), o, (ncols - j).min(64));
            j += 64;
        }
    }
}

/// Masks of the first `width` of `16 * CV` columns, 16 per vector.
#[inline(always)]
fn column_masks<const CV: usize>(width: usize) -> [u16; CV] {
    std::array::from_fn(|c| {
        let n = width.saturating_sub(16 * c).min(16);
        if n == 16 {
            u16::MAX
        } else {
            (1u16 << n) - 1
        }
    })
}
