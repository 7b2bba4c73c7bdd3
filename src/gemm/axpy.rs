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
//! The activations are packed once per call, K-major in groups of up to [`ROW_GROUP`] rows
//! (`xt[p * rows + r]`), so that a kernel's broadcasts walk one contiguous array. Threads
//! split the output columns in L1-sized slices; K is never split and each
//! column's sum is formed by the same operations whatever the split, so results do not
//! depend on the thread count.

use super::gemv::{activations, Weights};
use super::{CPtr, Elems, Mat, ScalePlan};
use crate::alloc;
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

/// Columns per work item on the tile path (4 steps of 48, 3 blocks of 64): the decoded tile
/// (`TILE_ROWS` x 192 floats, 12 KiB) and the output slices of 32 rows (24 KiB) stay in L1.
/// Measured (Intel Xeon, one thread, 4096 x 4096 E4M3 `[in, out]`, m = 32 / 16): 384 columns
/// 11.4-12.0 / 7.0 ms, 192 columns 9.7 / 6.3 ms.
const TILE_ITEM_COLS: usize = 192;

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
    let (m, n, k) = (a.rows, b.cols, a.cols);
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
    #[cfg(target_arch = "x86_64")]
    let tiles = matches!(isa, Isa::Avx512 | Isa::Avx512Bf16) && m > ROW_GROUP;
    #[cfg(not(target_arch = "x86_64"))]
    let tiles = false;
    // E4M3 tiles decoded by table lookup where the CPU has VBMI (exact, unscaled activations).
    #[cfg(target_arch = "x86_64")]
    let tiles_table = tiles && fmt == Format::E4M3 && arch::x86_64::has_avx512vbmi();
    #[cfg(not(target_arch = "x86_64"))]
    let tiles_table = false;
    // As in the GEMV path (the portable kernel, which aarch64 uses too, decodes by table).
    // SAFETY: forwarded from the caller.
    let (x, weights) = unsafe { activations(isa, a, fmt, table || tiles_table) }?;
    // K-major row groups: group g (rows g0..g0+rows) at offset g0 * k.
    let mut xt = alloc::filled_for(m * k, 0.0f32, "the activations of a matmul")?;
    for g0 in (0..m).step_by(ROW_GROUP) {
        let rows = ROW_GROUP.min(m - g0);
        let dst = &mut xt[g0 * k..(g0 + rows) * k];
        for r in 0..rows {
            for p in 0..k {
                dst[p * rows + r] = x[(g0 + r) * k + p];
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    let tables = arch::x86_64::avx512::gemv::E4m3Bf16Tables::new();
    let seg = if plan.along_k() { plan.block } else { k };
    // Columns per work item: an L1-sized output slice (all rows' on the tile path, plus the
    // tile), and at least one item per thread. Results do not depend on it (each column's
    // sum is formed the same way).
    let nthreads = threads::num_threads();
    let parallel = nthreads > 1 && m * n * k >= 1 << 18;
    let mut cols = if tiles {
        TILE_ITEM_COLS
    } else {
        (ITEM_OUT_BYTES / 4 / m.min(ROW_GROUP)).max(64)
    };
    if parallel {
        cols = cols.min(n.div_ceil(nthreads).div_ceil(64) * 64);
    }
    let items = n.div_ceil(cols);
    let xt = &xt[..];
    let item = |it: usize| {
        let j0 = it * cols;
        let ncols = cols.min(n - j0);
        // Rows padded to whole 64-column blocks (the table kernel's unit).
        let ldo = ncols.div_ceil(64) * 64;
        let mut part = vec![0.0f32; if tiles { m } else { m.min(ROW_GROUP) } * ldo];
        #[cfg(target_arch = "x86_64")]
        let mut tile = if tiles {
            vec![0.0f32; arch::x86_64::avx512::axpy::TILE_ROWS * ldo]
        } else {
            Vec::new()
        };
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
                // SAFETY: as below, for all row groups at once; `part` holds m rows of ldo
                // floats, `tile` TILE_ROWS rows; the ISA is at least AVX-512.
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
                        ldo,
                        tile.as_mut_ptr(),
                    )
                };
                for i in 0..m {
                    let src = &part[i * ldo..(i + 1) * ldo];
                    for (j, &s) in sb.iter().enumerate() {
                        #[cfg(target_arch = "x86_64")]
                        let pos = if tiles_table {
                            j / 64 * 64 + arch::x86_64::avx512::gemv::table_position(j % 64)
                        } else {
                            j
                        };
                        #[cfg(not(target_arch = "x86_64"))]
                        let pos = j;
                        let t = src[pos] * s;
                        // SAFETY: (i, j0 + j) is inside C; items write disjoint columns.
                        unsafe {
                            let d = c.at(i, j0 + j, ldc);
                            *d = if k0 == 0 { t * sa[i] } else { *d + t * sa[i] };
                        }
                    }
                }
                continue;
            }
            for g0 in (0..m).step_by(ROW_GROUP) {
                let rows = ROW_GROUP.min(m - g0);
                // SAFETY: rows k0..k0+klen, columns j0..j0+ncols of B are inside B (unit
                // column stride); the group's xt holds k * rows floats, from K step k0 at
                // k0 * rows; `part` holds rows x ldo floats (ldo >= ncols, a multiple of 64); the kernel was
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
    if parallel {
        threads::for_each((0..items).collect(), item);
    } else {
        (0..items).for_each(item);
    }
    Ok(())
}
