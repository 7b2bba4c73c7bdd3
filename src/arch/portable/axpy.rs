//! The portable axpy-form kernel for FP8 weights stored `[in, out]` (`x @ w`): table decode,
//! products formed in float64 (exact) so each accumulation step rounds once, as a fused
//! multiply-add would.

use crate::format::Format;
use crate::gemm::gemv::Weights;
use crate::scalar::tables;

/// # Safety
/// As `gemm::axpy::AxpyFn`: `xt` holds `klen * rows` floats (K-major), `w` `klen` rows of
/// `ncols` bytes `ldw` apart, `out` `rows` rows of `ncols` floats `ldo` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn axpy(
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
    let t = match weights {
        Weights::E5M2 => tables::f32_table(Format::E5M2),
        Weights::E4M3 => tables::f32_table(Format::E4M3),
        Weights::E4M3TimesTwoPowMinus8 => unreachable!("only chosen for the SIMD kernels"),
    };
    for r in 0..rows {
        // SAFETY: output row r holds ncols floats.
        let o = unsafe { std::slice::from_raw_parts_mut(out.add(r * ldo), ncols) };
        o.fill(0.0);
        for p in 0..klen {
            // SAFETY: xt holds klen * rows floats; weight row p holds ncols bytes.
            let (x, wr) = unsafe {
                (
                    f64::from(*xt.add(p * rows + r)),
                    std::slice::from_raw_parts(w.offset(p as isize * ldw), ncols),
                )
            };
            for (acc, &code) in o.iter_mut().zip(wr) {
                *acc = (f64::from(*acc) + x * f64::from(t[usize::from(code)])) as f32;
            }
        }
    }
}
