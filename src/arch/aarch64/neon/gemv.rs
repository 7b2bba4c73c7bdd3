//! NEON GEMV kernel (see `gemm::gemv`): weights decoded in registers by table lookup (`tbl` /
//! `tbx` on the float32 patterns' top bytes, as the codec's decoder), float32 FMA.

use core::arch::aarch64::*;

use crate::arch::aarch64::neon::codec::{load_table, lookup, split_table, TableKind};
use crate::format::Format;
use crate::gemm::gemv::Weights;
use crate::scalar::tables;

/// Most activation rows per call (`gemm::gemv`'s row group).
const MAX_ROWS: usize = 8;

/// Table decode of 16 weights per step, one float32x4 accumulator per activation row.
///
/// # Safety
/// NEON available (the active level is `neon` or above); see `gemm::gemv::DotFn`: `x` holds
/// `rows <= 8` rows of `klen` floats `ldx` apart, `w` `ncols` rows of `klen` bytes `ldw`
/// apart, `out` `rows * ncols` floats.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_neon(
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
    let fmt = match weights {
        Weights::E5M2 => Format::E5M2,
        Weights::E4M3 => Format::E4M3,
        Weights::E4M3TimesTwoPowMinus8 => unreachable!("not chosen for the NEON kernel"),
    };
    let rows = rows.min(MAX_ROWS);
    let t = tables::f32_table(fmt);
    // SAFETY: NEON is available (caller); the table is 4 x 64 readable bytes.
    let regs = unsafe { load_table(split_table(TableKind::Bf16F32, fmt)) };
    let body = klen / 16 * 16;
    for j in 0..ncols {
        let wr = w.wrapping_offset(j as isize * ldw);
        let mut acc = [vdupq_n_f32(0.0); MAX_ROWS];
        let mut p = 0;
        while p < body {
            // SAFETY: p + 16 <= klen: 16 weight bytes of row j and 16 floats of each of the
            // `rows` activation rows are in bounds.
            unsafe {
                let (lo, hi) = lookup(&regs, vld1q_u8(wr.add(p)));
                let h0 = vzip1q_u8(lo, hi);
                let h1 = vzip2q_u8(lo, hi);
                let wf = [
                    f32s_of(h0, false),
                    f32s_of(h0, true),
                    f32s_of(h1, false),
                    f32s_of(h1, true),
                ];
                for (r, a) in acc.iter_mut().enumerate().take(rows) {
                    let xr = x.add(r * ldx + p);
                    let mut s = *a;
                    for (q, wq) in wf.iter().enumerate() {
                        s = vfmaq_f32(s, vld1q_f32(xr.add(4 * q)), *wq);
                    }
                    *a = s;
                }
            }
            p += 16;
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            let mut sum = vaddvq_f32(*a);
            for q in body..klen {
                // SAFETY: q < klen: inside weight row j and activation row r.
                let (xv, wv) = unsafe { (*x.add(r * ldx + q), *wr.add(q)) };
                sum = xv.mul_add(t[usize::from(wv)], sum);
            }
            // SAFETY: (r, j) is inside `out`.
            unsafe { *out.add(r * ncols + j) = sum };
        }
    }
}

/// Eight 16-bit patterns (byte pairs) -> four float32 with those patterns as their top halves:
/// the low four (`high == false`) or the high four.
#[target_feature(enable = "neon")]
#[inline]
fn f32s_of(h: uint8x16_t, high: bool) -> float32x4_t {
    let h = vreinterpretq_u16_u8(h);
    let z = vdupq_n_u16(0);
    vreinterpretq_f32_u16(if high {
        vzip2q_u16(z, h)
    } else {
        vzip1q_u16(z, h)
    })
}
