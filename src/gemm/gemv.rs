//! The GEMV path: `m <= crossovers().gemv` rows times FP8 weights stored along K (`b = w.T` of an
//! `[out, in]` weight, so column `j` of `b` is the contiguous row `w[j]`).
//!
//! Each output is a dot product of an activation row with a weight row. The activation rows
//! (at most 8 x k floats) are converted to float32 once and stay in L1/L2; the weight rows are
//! streamed from memory exactly once, as bytes. Unlike the GEMM microkernel, these kernels
//! decode FP8 in registers: this path is bound by memory bandwidth (one multiply-add per
//! weight byte per row), so a few extra instructions per 16 bytes are free, while packing the
//! weights first would write and re-read 4x the bytes the path exists to avoid. Up to the
//! measured crossovers (`super::crossovers`) this beats packing: rows go in groups of 8 over
//! 64-column slices of the weights that stay in L2 between groups.
//!
//! One activation row times E4M3 weights (LLM decoding) has one more kernel where the CPU has
//! AVX-512 VBMI: `vpermi2b` looks up the bfloat16 pattern of 64 weight bytes at a time in two
//! 128-byte tables, and shifts and masks widen it to float32 for FMA
//! (`arch::x86_64::avx512::gemv::dot_table_f32`). All kernels prefetch the next column group's
//! weights.
//!
//! Threads split the output columns; K is never split, and each column's sum is formed by the
//! same operations whatever the split, so results do not depend on the thread count.

use super::scratch::{self, Slot};
use super::{CPtr, Elems, Mat, ScalePlan};
#[cfg(target_arch = "x86_64")]
use crate::alloc;
use crate::arch::{self, Isa};
use crate::error::Result;
use crate::format::Format;
use crate::scalar::tables;
use crate::threads;

/// How a dot kernel reads the weight bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Weights {
    /// E5M2 codes.
    E5M2,
    /// E4M3 codes.
    E4M3,
    /// E4M3 codes read as binary16 with E4M3's exponent field, i.e. the value times 2^-8, while
    /// the activations were multiplied by 2^8: both scalings are exact (no activation is
    /// within 2^8 of overflow, checked; the smallest E4M3 value, 2^-9, becomes 2^-17, a
    /// binary16 subnormal), so every product and sum is bit for bit the same, and the kernel
    /// saves a multiplication per 16 weights.
    E4M3TimesTwoPowMinus8,
}

/// Dot-product kernel: `out[r * ncols + j] = sum_p x[r * ldx + p] * decode(w[j * ldw + p])`
/// for `r < rows`, `j < ncols`, `p < klen`.
type DotFn = unsafe fn(usize, *const f32, usize, usize, *const u8, isize, usize, Weights, *mut f32);

/// Columns per work item.
const COLS_PER_ITEM: usize = 64;

/// Activation rows per kernel pass (the kernels' register blocking).
const ROW_GROUP: usize = 8;

/// # Safety
/// As [`super::compute`]; `b` is FP8 with `b.rs == 1` (or `k == 1`), `a.rows <= SMALL_M_MAX`.
pub(crate) unsafe fn gemv(
    isa: Isa,
    a: Mat,
    b: Mat,
    plan: &ScalePlan<'_>,
    c: CPtr,
    ldc: isize,
) -> Result<()> {
    let (m, k) = (a.rows, a.cols);
    let Elems::Fp8(_, fmt) = b.elems else {
        unreachable!("the GEMV path is only taken for FP8 weights")
    };
    // One row times E4M3 weights on AVX-512 with VBMI decodes the weights by table lookup
    // straight to float32 (`arch::x86_64::avx512::gemv::dot_table_f32`). Measured on Zen 4, one thread,
    // 1 x 8192 x 8192 with prefetching: 3.3-3.4 ms against 4.2 ms for the binary16 decode of
    // `dot512`. (A variant multiplying table-decoded bfloat16 weights with `vdpbf16ps` against
    // activations split into three bfloat16 parts was 2-3% faster and much subtler: not kept.)
    #[cfg(target_arch = "x86_64")]
    let table_f32 = matches!(isa, Isa::Avx512 | Isa::Avx512Bf16)
        && m == 1
        && b.cols >= TABLE_MIN_COLS
        && fmt == Format::E4M3
        && arch::x86_64::has_avx512vbmi();
    #[cfg(not(target_arch = "x86_64"))]
    let table_f32 = false;
    scratch::with(Slot::Activations, m * k, |x| {
        // SAFETY: forwarded from the caller.
        let weights = unsafe { activations(isa, a, fmt, table_f32, x) };
        // SAFETY: forwarded from the caller; `x` holds A's rows.
        unsafe { dot_all(isa, x, weights, table_f32, b, plan, c, ldc) }
    })
    .map_err(|r| r.for_what("the activations of a matmul"))?
}

/// The GEMV path once the activations are float32 rows `x` (`weights`: how to decode).
///
/// # Safety
/// As [`gemv`]; `x` holds the `m` rows of A, `k` floats each.
#[allow(clippy::too_many_arguments)]
unsafe fn dot_all(
    isa: Isa,
    x: &[f32],
    weights: Weights,
    table_f32: bool,
    b: Mat,
    plan: &ScalePlan<'_>,
    c: CPtr,
    ldc: isize,
) -> Result<()> {
    let (n, k) = (b.cols, b.rows);
    let m = x.len() / k;
    let dot: DotFn = match isa {
        Isa::Scalar => arch::portable::gemv::dot,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => arch::x86_64::avx2::gemv::dot_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => arch::x86_64::avx512::gemv::dot_avx512,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonBf16 => arch::aarch64::neon::gemv::dot_neon,
        #[allow(unreachable_patterns)]
        _ => arch::portable::gemv::dot,
    };
    let seg = if plan.along_k() { plan.block } else { k };
    #[cfg(target_arch = "x86_64")]
    let seg_pad = seg.div_ceil(64) * 64;
    #[cfg(target_arch = "x86_64")]
    let xp = if table_f32 {
        permute_activations(x, k, seg, seg_pad)?
    } else {
        Vec::new()
    };
    #[cfg(target_arch = "x86_64")]
    let tables = arch::x86_64::avx512::gemv::E4m3Bf16Tables::new();
    let items = n.div_ceil(COLS_PER_ITEM);
    let parallel = threads::num_threads() > 1 && items > 1 && m * n * k >= 1 << 18;
    let item = |it: usize| {
        let j0 = it * COLS_PER_ITEM;
        let ncols = COLS_PER_ITEM.min(n - j0);
        let mut part = [0.0f32; ROW_GROUP * COLS_PER_ITEM];
        let mut sa = [1.0f32; super::SMALL_M_MAX];
        let mut sb = [1.0f32; COLS_PER_ITEM];
        for (kb, k0) in (0..k).step_by(seg).enumerate() {
            let klen = seg.min(k - k0);
            plan.fill(kb, 0, &mut sa[..m], j0, &mut sb[..ncols]);
            let w = match b.elems {
                Elems::Fp8(p, _) => p.wrapping_offset(j0 as isize * b.cs + k0 as isize),
                _ => unreachable!("checked above"),
            };
            // Rows in groups of 8: the item's weight columns (COLS_PER_ITEM x k bytes) come
            // from memory for the first group and from L2 for the others.
            for g0 in (0..m).step_by(ROW_GROUP) {
                let rows = ROW_GROUP.min(m - g0);
                if table_f32 {
                    // SAFETY: as below; with `table_f32`, m == 1 and `xp` holds segment `kb`
                    // from `kb * seg_pad` on, ceil(klen / 64) blocks of 64; `table_f32` implies
                    // AVX-512 (the active ISA is at least that) and VBMI (detected).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        arch::x86_64::avx512::gemv::dot_table_f32(
                            klen,
                            xp[kb * seg_pad..].as_ptr(),
                            w,
                            b.cs,
                            ncols,
                            &tables,
                            part.as_mut_ptr(),
                        )
                    };
                } else {
                    // SAFETY: columns j0..j0+ncols of B, rows k0..k0+klen, are inside B
                    // (contiguous along K); x rows hold k floats; `part` holds rows * ncols
                    // floats; the kernel for `isa` was selected from an available ISA.
                    unsafe {
                        dot(
                            klen,
                            x[g0 * k + k0..].as_ptr(),
                            k,
                            rows,
                            w,
                            b.cs,
                            ncols,
                            weights,
                            part.as_mut_ptr(),
                        )
                    };
                }
                for r in 0..rows {
                    let i = g0 + r;
                    for j in 0..ncols {
                        let t = part[r * ncols + j] * sb[j];
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

#[cfg(target_arch = "x86_64")]
/// Fewest output columns for which the table kernel is used (its activations are permuted
/// once per call, serially; narrower products keep the binary16-decode kernels).
const TABLE_MIN_COLS: usize = 512;

/// One activation row in the order `dot_table_f32` multiplies it: per K segment of `seg`
/// (padded with zeros to `seg_pad`, a multiple of 64), per 64-element block, in the order the
/// kernel's table decode leaves the weights (`arch::x86_64::avx512::gemv::table_position`).
#[cfg(target_arch = "x86_64")]
fn permute_activations(x: &[f32], k: usize, seg: usize, seg_pad: usize) -> Result<Vec<f32>> {
    let mut xp = alloc::filled_for(
        k.div_ceil(seg) * seg_pad,
        0.0f32,
        "the activations of a matmul",
    )?;
    for (s, seg_vals) in x[..k].chunks(seg).enumerate() {
        let seg_out = &mut xp[s * seg_pad..];
        for (p, &v) in seg_vals.iter().enumerate() {
            seg_out[p / 64 * 64 + arch::x86_64::avx512::gemv::table_position(p % 64)] = v;
        }
    }
    Ok(xp)
}

/// Writes the rows of `a` to `x` (`a.rows * a.cols` floats) as contiguous float32, and returns
/// how the kernels are to decode the FP8 weights. The x86 kernels decode E4M3 through
/// binary16, which gives the value times 2^-8 (see [`Weights`]): when no activation is within
/// 2^8 of overflow, the activations are multiplied by 2^8 once (exact) instead of every
/// decoded weight. Table decoders (`table`: the VBMI table kernels; the portable and NEON
/// levels) take the activations unscaled.
///
/// # Safety
/// `a` addresses its whole (strided) matrix.
pub(crate) unsafe fn activations(
    isa: Isa,
    a: Mat,
    fmt: Format,
    table: bool,
    x: &mut [f32],
) -> Weights {
    let k = a.cols;
    for (i, row) in x.chunks_exact_mut(k).enumerate() {
        // SAFETY: row i of A is inside A.
        unsafe { load_row(a, i, row) };
    }
    if fmt == Format::E5M2 {
        return Weights::E5M2;
    }
    let table_decode = table || matches!(isa, Isa::Scalar | Isa::Neon | Isa::NeonBf16);
    if table_decode || !x.iter().all(|v| !v.is_finite() || v.abs() < 2f32.powi(119)) {
        return Weights::E4M3;
    }
    x.iter_mut().for_each(|v| *v *= 256.0);
    Weights::E4M3TimesTwoPowMinus8
}

/// Row `i` of `a` as float32.
///
/// # Safety
/// `a` must address its whole matrix.
pub(crate) unsafe fn load_row(a: Mat, i: usize, row: &mut [f32]) {
    let base = i as isize * a.rs;
    macro_rules! gather {
        ($p:expr, $conv:expr) => {
            for (p, slot) in row.iter_mut().enumerate() {
                // SAFETY: (i, p) is inside A.
                *slot = $conv(unsafe { *$p.offset(base + p as isize * a.cs) });
            }
        };
    }
    match a.elems {
        Elems::F32(p) if a.cs == 1 => {
            // SAFETY: row i of A is `row.len()` contiguous floats inside A.
            row.copy_from_slice(unsafe { std::slice::from_raw_parts(p.offset(base), row.len()) })
        }
        Elems::Fp8(p, f) => {
            let t = tables::f32_table(f);
            gather!(p, |v: u8| t[usize::from(v)])
        }
        Elems::F32(p) => gather!(p, |v: f32| v),
        Elems::F16(p) => gather!(p, half::f16::to_f32),
        Elems::Bf16(p) => gather!(p, half::bf16::to_f32),
    }
}
