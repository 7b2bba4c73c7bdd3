//! The portable GEMV kernel: FP8 weights decoded by table, products formed in float64 (exact)
//! so each accumulation step rounds once, as a fused multiply-add would.

use crate::format::Format;
use crate::gemm::gemv::Weights;
use crate::scalar::tables;

/// Table decode, float64-formed multiply-add.
///
/// # Safety
/// See `gemm::gemv::DotFn`: `x` holds `rows` rows of `klen` floats `ldx` apart, `w` `ncols` rows of
/// `klen` bytes `ldw` apart, `out` `rows * ncols` floats.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot(
    klen: usize,
    x: *const f32,
    ldx: usize,
    rows: usize,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    weights: Weights,
    out: *mut f32,
) {
    let t = match weights {
        Weights::E5M2 => tables::f32_table(Format::E5M2),
        Weights::E4M3 => tables::f32_table(Format::E4M3),
        Weights::E4M3TimesTwoPowMinus8 => unreachable!("only chosen for the SIMD kernels"),
    };
    for j in 0..ncols {
        // SAFETY: weight row j holds klen bytes.
        let wr = unsafe { std::slice::from_raw_parts(w.offset(j as isize * ldw), klen) };
        for r in 0..rows {
            // SAFETY: activation row r holds klen floats.
            let xr = unsafe { std::slice::from_raw_parts(x.add(r * ldx), klen) };
            let mut acc = 0.0f32;
            for (&xv, &wv) in xr.iter().zip(wr) {
                acc = (f64::from(acc) + f64::from(xv) * f64::from(t[usize::from(wv)])) as f32;
            }
            // SAFETY: (r, j) is inside `out`.
            unsafe { *out.add(r * ncols + j) = acc };
        }
    }
}
