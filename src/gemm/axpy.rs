//! The axpy path: a few activation rows times FP8 weights stored `[in, out]` (`b` row-major
//! K x N with contiguous columns, `x @ w` of Flax / Keras / any K x N array, and any view
//! whose columns are contiguous).
//!
//! Output row `i` is `sum_p x[i, p] * w[p, :]`: each K step decodes a slice of one weight
//! row in registers and adds it, times the activations' elements, into accumulators that
//! hold a few rows of the output slice (`arch::*::axpy`). The weights stream from memory
//! once, as bytes: packing them into float32 panels first (the blocked GEMM) writes and
//! re-reads 4x the bytes for only `m` multiply-adds each. Above [`ROW_GROUP`] rows on AVX-512,
//! a tile of weight rows is decoded once into an L1 buffer for all row groups.
//!
//! The activations are packed once per call, K-major in groups of the kernels' height (up to
//! [`ROW_GROUP`] rows, or `TILE_GROUP` on the tile path; `xt[p * rows + r]`), so that a
//! kernel's broadcasts walk one contiguous array. Threads split the output columns (in
//! L1-sized slices, or L2-sized ones on the tile path); K is never split and each column's
//! sum is formed by the same operations whatever the split, so results do not depend on the
//! thread count.

use std::sync::Mutex;

use super::gemv::{activations, Weights};
use super::scratch::{self, Slot};
use super::{CPtr, Elems, Mat, ScalePlan};
use crate::alloc::Refused;
use crate::arch::{self, Isa};
use crate::error::Result;
#[cfg(target_arch = "x86_64")]
use crate::format::Format;
use crate::threads;

/// Axpy kernel: `out[r * ldo + j] = sum_{p < klen} xt[p * rows + r] * decode(w[p * ldw + j])`
/// for `r < rows` (at most [`ROW_GROUP`]), `j < ncols`.
pub(crate) type AxpyFn =
    unsafe fn(usize, *const f32, usize, *const u8, isize, usize, Weights, *mut f32, usize);

/// Activation rows per kernel pass (the kernels' largest register block).
pub(crate) const ROW_GROUP: usize = 8;

/// Bytes of output (a row group's slice of C, in float32) per work item: the slice stays in
/// L1 (48 KiB here) while the kernels add P weight rows at a time into it.
const ITEM_OUT_BYTES: usize = 16 << 10;

/// Bytes of output (all rows' slice of C, in float32) per work item on the tile path: the
/// kernel sweeps each tile row of the weights across all of the item's columns, strip by
/// strip, so the slice stays in L2 between tile rows.
const TILE_ITEM_OUT_BYTES: usize = 512 << 10;

/// Largest `m` of the axpy path on levels without the tile kernel, whose per-group kernels
/// decode the weights once per group of 8 rows (the crossover before the tile kernel
/// existed; `crossovers` is measured with the tiles).
pub(crate) const PER_GROUP_MAX: usize = 32;

/// Whether `isa` has the kernel that decodes each weight tile once for all rows
/// (`arch::x86_64::avx512::axpy::axpy_tiles_avx512`).
pub(crate) fn has_tiles(isa: Isa) -> bool {
    cfg!(target_arch = "x86_64") && matches!(isa, Isa::Avx512 | Isa::Avx512Bf16)
}

/// Largest `m` the axpy path takes on `isa`, given the CPU's measured `crossover`.
pub(crate) fn max_rows(isa: Isa, crossover: usize) -> usize {
    if has_tiles(isa) {
        crossover
    } else {
        crossover.min(PER_GROUP_MAX)
    }
}

/// # Safety
/// As [`super::compute`]; `b` is FP8 with unit column stride (or `n == 1`).
pub(crate) unsafe fn axpy(
    isa: Isa,
    a: Mat,
    b: Mat,
    plan: &ScalePlan<'_>,
    c: CPtr,
    ldc: isize,
) -> Result<()> {
    let (m, k) = (a.rows, a.cols);
    let Elems::Fp8(_, fmt) = b.elems else {
        unreachable!("the axpy path is only taken for FP8 weights")
    };
    // One row times E4M3 weights on AVX-512 with VBMI decodes by table lookup
    // (`arch::x86_64::avx512::axpy::axpy_table_e4m3`), exact, with unscaled activations.
    #[cfg(target_arch = "x86_64")]
    let table = matches!(isa, Isa::Avx512 | Isa::Avx512Bf16)
        && m == 1
        && fmt == Format::E4M3
        && arch::x86_64::has_avx512vbmi();
    #[cfg(not(target_arch = "x86_64"))]
    let table = false;

    let kernel: AxpyFn = match isa {
        #[cfg(target_arch = "x86_64")]
        _ if table => arch::x86_64::avx512::axpy::axpy_table_e4m3,
        Isa::Scalar => arch::portable::axpy::axpy,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => arch::x86_64::avx2::axpy::axpy_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => arch::x86_64::avx512::axpy::axpy_avx512,
        _ => arch::portable::axpy::axpy,
    };
    // More than one row group on AVX-512: weights decoded once per tile for all groups
    // (`arch::x86_64::avx512::axpy::axpy_tiles_avx512`).
    let tiles = has_tiles(isa) && m > ROW_GROUP;
    // E4M3 tiles decoded by table lookup where the CPU has VBMI (exact, unscaled activations).
    #[cfg(target_arch = "x86_64")]
    let tiles_table = tiles && fmt == Format::E4M3 && arch::x86_64::has_avx512vbmi();
    #[cfg(not(target_arch = "x86_64"))]
    let tiles_table = false;
    // K-major row groups of the kernels' height.
    #[cfg(target_arch = "x86_64")]
    let group = if tiles {
        arch::x86_64::avx512::axpy::TILE_GROUP
    } else {
        ROW_GROUP
    };
    #[cfg(not(target_arch = "x86_64"))]
    let group = ROW_GROUP;
    let path = Path {
        kernel,
        tiles,
        tiles_table,
    };
    scratch::with(Slot::Activations, m * k, |x| {
        // As in the GEMV path (the portable kernel, which aarch64 uses too, decodes by table).
        // SAFETY: forwarded from the caller.
        let weights = unsafe { activations(isa, a, fmt, table || tiles_table, x) };
        scratch::with(Slot::Packed, m * k, |xt| {
            pack_groups(x, xt, k, group);
            // SAFETY: forwarded from the caller; `xt` holds A's rows in groups of `group`.
            unsafe { axpy_all(&path, xt, weights, b, plan, c, ldc) }
                .map_err(|r| r.for_what("the output slices of a matmul"))
        })
        .map_err(|r| r.for_what("the activations of a matmul"))?
    })
    .map_err(|r| r.for_what("the activations of a matmul"))?
}

/// How [`axpy`] multiplies: the per-group kernel, or the AVX-512 tile kernel (by table
/// decode or not).
struct Path {
    kernel: AxpyFn,
    tiles: bool,
    tiles_table: bool,
}

/// The rows of `x` (`k` floats each) to `xt`, K-major in groups of `group` rows: group `g0`
/// (rows `g0..g0 + rows`) at offset `g0 * k`, element `(g0 + r, p)` at `g0 * k + p * rows + r`.
fn pack_groups(x: &[f32], xt: &mut [f32], k: usize, group: usize) {
    let m = x.len() / k;
    for g0 in (0..m).step_by(group) {
        let rows = group.min(m - g0);
        let src = &x[g0 * k..(g0 + rows) * k];
        for (p, dst) in xt[g0 * k..(g0 + rows) * k]
            .chunks_exact_mut(rows)
            .enumerate()
        {
            for (r, d) in dst.iter_mut().enumerate() {
                *d = src[r * k + p];
            }
        }
    }
}

/// The axpy path once the activations are packed (`xt`, see [`pack_groups`]).
///
/// # Safety
/// As [`axpy`]; `xt` holds the `m` rows of A packed in groups of the path's kernel height.
unsafe fn axpy_all(
    path: &Path,
    xt: &[f32],
    weights: Weights,
    b: Mat,
    plan: &ScalePlan<'_>,
    c: CPtr,
    ldc: isize,
) -> Result<(), Refused> {
    let (n, k) = (b.cols, b.rows);
    let m = xt.len() / k;
    let Path {
        kernel,
        tiles,
        tiles_table,
    } = *path;
    #[cfg(target_arch = "x86_64")]
    let tables = arch::x86_64::avx512::gemv::E4m3Bf16Tables::new();
    let seg = if plan.along_k() { plan.block } else { k };
    // Columns per work item: an L1-sized output slice of a row group (an L2-sized one of all
    // rows on the tile path), and at least one item per thread. Results do not depend on it (each column's
    // sum is formed the same way).
    let nthreads = threads::num_threads();
    let parallel = nthreads > 1 && m * n * k >= 1 << 18;
    #[cfg(target_arch = "x86_64")]
    const STRIP: usize = arch::x86_64::avx512::axpy::TILE_COLS;
    #[cfg(not(target_arch = "x86_64"))]
    const STRIP: usize = 64;
    let mut cols = if tiles {
        (TILE_ITEM_OUT_BYTES / 4 / m / STRIP).max(1) * STRIP
    } else {
        (ITEM_OUT_BYTES / 4 / m.min(ROW_GROUP)).max(64)
    };
    if parallel {
        cols = cols.min(n.div_ceil(nthreads).div_ceil(64) * 64);
    }
    let items = n.div_ceil(cols);
    // Where column `j` of a strip is in the tile kernel's output (table order within each
    // 64-column block with the table decode).
    let positions: [usize; STRIP] = std::array::from_fn(|j| {
        #[cfg(target_arch = "x86_64")]
        if tiles_table {
            return j / 64 * 64 + arch::x86_64::avx512::gemv::table_position(j % 64);
        }
        j
    });
    // One work item: output columns j0..j0 + ncols, through the slice `part` (rows `ldo`
    // apart, or strip-major on the tile path) and the tile buffer.
    let item_body = |j0: usize, ncols: usize, ldo: usize, part: &mut [f32], tile: &mut [f32]| {
        // The tile path (and its tile buffer) exists on x86-64 only.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (tile, tiles_table);
        let mut sa = vec![1.0f32; m];
        let mut sb = vec![1.0f32; ncols];
        for (kb, k0) in (0..k).step_by(seg).enumerate() {
            let klen = seg.min(k - k0);
            plan.fill(kb, 0, &mut sa, j0, &mut sb);
            let w = match b.elems {
                Elems::Fp8(p, _) => p.wrapping_offset(k0 as isize * b.rs + j0 as isize * b.cs),
                _ => unreachable!("checked above"),
            };
            if tiles {
                // SAFETY: as below, for all row groups at once; `part` holds the strips of m
                // rows, `tile` TILE_ROWS x TILE_COLS floats; the ISA is at least AVX-512.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    arch::x86_64::avx512::axpy::axpy_tiles_avx512(
                        klen,
                        m,
                        xt.as_ptr(),
                        k,
                        k0,
                        w,
                        b.rs,
                        ncols,
                        weights,
                        tiles_table.then_some(&tables),
                        part.as_mut_ptr(),
                        tile.as_mut_ptr(),
                    )
                };
                for (strip, sb) in sb.chunks(STRIP).enumerate() {
                    for (i, &sa) in sa.iter().enumerate() {
                        let src = &part[(strip * m + i) * STRIP..][..STRIP];
                        // SAFETY: row i, columns j0 + strip * STRIP.. of C (sb.len() of them)
                        // are inside C; items write disjoint columns.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                c.at(i, j0 + strip * STRIP, ldc),
                                sb.len(),
                            )
                        };
                        for ((d, &s), &pos) in dst.iter_mut().zip(sb).zip(&positions) {
                            let t = src[pos] * s;
                            *d = if k0 == 0 { t * sa } else { *d + t * sa };
                        }
                    }
                }
                continue;
            }
            for g0 in (0..m).step_by(ROW_GROUP) {
                let rows = ROW_GROUP.min(m - g0);
                // SAFETY: rows k0..k0+klen, columns j0..j0+ncols of B are inside B (unit
                // column stride); the group's xt holds k * rows floats, from K step k0 at
                // k0 * rows; `part` holds rows x ldo floats (ldo >= ncols rounded up to 64); the kernel was
                // chosen from an available ISA.
                unsafe {
                    kernel(
                        klen,
                        xt[g0 * k + k0 * rows..].as_ptr(),
                        rows,
                        w,
                        b.rs,
                        ncols,
                        weights,
                        part.as_mut_ptr(),
                        ldo,
                    )
                };
                for r in 0..rows {
                    let i = g0 + r;
                    let src = &part[r * ldo..r * ldo + ncols];
                    for (j, (&v, &s)) in src.iter().zip(&sb).enumerate() {
                        let t = v * s;
                        // SAFETY: (i, j0 + j) is inside C; items write disjoint columns.
                        unsafe {
                            let d = c.at(i, j0 + j, ldc);
                            *d = if k0 == 0 { t * sa[i] } else { *d + t * sa[i] };
                        }
                    }
                }
            }
        }
    };
    // A worker whose buffers could not grow (the call then fails with a MemoryError).
    let refused: Mutex<Option<Refused>> = Mutex::new(None);
    let item = |it: usize| {
        let j0 = it * cols;
        let ncols = cols.min(n - j0);
        // Rows padded to whole 64-column blocks (the table kernel's unit); on the tile path,
        // strip-major (see `axpy_tiles_avx512`).
        let ldo = ncols.div_ceil(64) * 64;
        let part_len = if tiles {
            ncols.div_ceil(STRIP) * m * STRIP
        } else {
            m.min(ROW_GROUP) * ldo
        };
        #[cfg(target_arch = "x86_64")]
        let tile_len = if tiles {
            arch::x86_64::avx512::axpy::TILE_ROWS * arch::x86_64::avx512::axpy::TILE_COLS
        } else {
            0
        };
        #[cfg(not(target_arch = "x86_64"))]
        let tile_len = 0;
        let done = scratch::with(Slot::Output, part_len, |part| {
            scratch::with(Slot::Tile, tile_len, |tile| {
                item_body(j0, ncols, ldo, part, tile)
            })
        })
        .and_then(|r| r);
        if let Err(r) = done {
            *refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        }
    };
    if parallel {
        threads::for_each((0..items).collect(), item);
    } else {
        (0..items).for_each(item);
    }
    match refused.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(r) => Err(r),
        None => Ok(()),
    }
}
