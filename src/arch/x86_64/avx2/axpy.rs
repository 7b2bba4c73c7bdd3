//! AVX2 axpy-form kernel for FP8 weights stored `[in, out]` (`x @ w`), as
//! [`crate::arch::x86_64::avx512::axpy`] with 8 columns per vector and 16 ymm registers:
//! rows 1-2 / 3 / 4-6 / 7-8 run `R x CV` = R x 4, 3 x 3, R x 2, R x 1 vectors.

#[allow(clippy::wildcard_imports)]
use std::arch::x86_64::*;

use crate::arch::x86_64::avx2::gemv::{decode8_e4m3, decode8_e4m3_scaled_no_nan, decode8_e5m2};
use crate::gemm::gemv::Weights;

/// Weight rows per pass over the output slice (see the AVX-512 kernel).
const P: usize = 4;

/// # Safety
/// AVX2 + FMA + F16C available; as `gemm::axpy::AxpyFn`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn axpy_avx2(
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
            unsafe { axpy256::<$r, $c>(klen, xt, w, ldw, ncols, weights, out, ldo) }
        };
    }
    match rows {
        1 => go!(1, 4),
        2 => go!(2, 4),
        3 => go!(3, 3),
        4 => go!(4, 2),
        5 => go!(5, 2),
        6 => go!(6, 2),
        7 => go!(7, 1),
        _ => go!(8, 1),
    }
}

/// Whether the `plen` weight rows at `w` (`ncols` bytes, `ldw` apart) hold an E4M3 NaN code.
#[inline(always)]
unsafe fn has_e4m3_nan(w: *const u8, ldw: isize, plen: usize, ncols: usize) -> bool {
    // SAFETY: reads stay inside the `ncols` bytes of each row; the caller enables AVX2.
    unsafe {
        let sign = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi8(-1);
        let mut any = _mm256_setzero_si256();
        for pp in 0..plen {
            let row = w.offset(pp as isize * ldw);
            let mut j = 0;
            while j + 32 <= ncols {
                let v = _mm256_loadu_si256(row.add(j).cast());
                any = _mm256_or_si256(any, _mm256_cmpeq_epi8(_mm256_or_si256(v, sign), ones));
                j += 32;
            }
            if (j..ncols).any(|c| *row.add(c) & 0x7F == 0x7F) {
                return true;
            }
        }
        _mm256_movemask_epi8(any) != 0
    }
}

/// `out[r * ldo + j] = sum_p xt[p * R + r] * decode(w[p * ldw + j])`, `P` weight rows per pass
/// over the output slice, `8 * CV` columns per step; the right edge (narrower than a step)
/// goes through zero-padded copies.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn axpy256<const R: usize, const CV: usize>(
    klen: usize,
    xt: *const f32,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    weights: Weights,
    out: *mut f32,
    ldo: usize,
) {
    let step = 8 * CV;
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
        let first = p0 == 0;
        let mut j = 0;
        while j < ncols {
            let width = step.min(ncols - j);
            let full = width == step;
            // SAFETY: full steps read and write `step` columns from j inside the weights'
            // and outputs' `ncols`; the edge goes through padded copies of `width` columns;
            // xt holds R floats per K step.
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); CV]; R];
                let mut tmp = [0.0f32; 8 * 4];
                if !first {
                    for r in 0..R {
                        let mut o = out.add(r * ldo + j).cast_const();
                        if !full {
                            std::ptr::copy_nonoverlapping(o, tmp.as_mut_ptr(), width);
                            o = tmp.as_ptr();
                        }
                        for c in 0..CV {
                            acc[r][c] = _mm256_loadu_ps(o.add(8 * c));
                        }
                    }
                }
                let mut pad = [0u8; 8 * 4];
                for pp in 0..plen {
                    let mut row = rows.offset(pp as isize * ldw).add(j);
                    if !full {
                        std::ptr::copy_nonoverlapping(row, pad.as_mut_ptr(), width);
                        row = pad.as_ptr();
                    }
                    let d: [__m256; CV] = std::array::from_fn(|c| {
                        let b = _mm_loadl_epi64(row.add(8 * c).cast());
                        match kind {
                            0 => decode8_e5m2(b),
                            1 => _mm256_mul_ps(decode8_e4m3(b), _mm256_set1_ps(256.0)),
                            2 => decode8_e4m3(b),
                            _ => decode8_e4m3_scaled_no_nan(b),
                        }
                    });
                    let x = xt.add((p0 + pp) * R);
                    for r in 0..R {
                        let xv = _mm256_set1_ps(*x.add(r));
                        for c in 0..CV {
                            acc[r][c] = _mm256_fmadd_ps(xv, d[c], acc[r][c]);
                        }
                    }
                }
                for r in 0..R {
                    let o = out.add(r * ldo + j);
                    if full {
                        for c in 0..CV {
                            _mm256_storeu_ps(o.add(8 * c), acc[r][c]);
                        }
                    } else {
                        for c in 0..CV {
                            _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * c), acc[r][c]);
                        }
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, width);
                    }
                }
            }
            j += step;
        }
        p0 += P;
    }
}
