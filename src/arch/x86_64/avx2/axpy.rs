//! AVX2 axpy-form kernel for FP8 weights stored `[in, out]` (`x @ w`), as
//! [`crate::arch::x86_64::avx512::axpy`] with 8 columns per vector and 16 ymm registers:
//! rows 1 / 2 / 3 / 4-6 / 7-8 run `R x CV` = 1 x 6, 2 x 4, 3 x 3, R x 2, R x 1 vectors.

#[allow(clippy::wildcard_imports)]
use std::arch::x86_64::*;

use crate::arch::x86_64::avx2::gemv::{decode8_e4m3, decode8_e4m3_scaled_no_nan, decode8_e5m2};
use crate::gemm::gemv::Weights;

/// K steps ahead that the weight lines are prefetched (see the AVX-512 kernel).
const PREFETCH_ROWS: isize = 16;

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
        1 => go!(1, 6),
        2 => go!(2, 4),
        3 => go!(3, 3),
        4 => go!(4, 2),
        5 => go!(5, 2),
        6 => go!(6, 2),
        7 => go!(7, 1),
        _ => go!(8, 1),
    }
}

/// `out[r * ldo + j] = sum_p xt[p * R + r] * decode(w[p * ldw + j])`. A column group
/// narrower than `8 * CV` (the right edge) reads each row slice through a zero-padded copy.
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
    let group = 8 * CV;
    let mut j = 0;
    while j < ncols {
        let width = group.min(ncols - j);
        let full = width == group;
        // SAFETY: full groups read `group` bytes of each weight row inside its `ncols`
        // columns; edge groups copy `width` bytes; xt reads are inside its klen * R floats;
        // stores cover `width` columns of the R output rows.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); CV]; R];
            let base = w.wrapping_add(j);
            let mut pad = [0u8; 8 * 6];
            let mut p = 0;
            let mut nan_aware = weights != Weights::E4M3TimesTwoPowMinus8;
            while p < klen {
                let mut row = base.offset(p as isize * ldw);
                let ahead = row.wrapping_offset(PREFETCH_ROWS * ldw);
                for off in (0..width).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off).cast());
                }
                if !full {
                    std::ptr::copy_nonoverlapping(row, pad.as_mut_ptr(), width);
                    row = pad.as_ptr();
                }
                let bytes: [__m128i; CV] =
                    std::array::from_fn(|c| _mm_loadl_epi64(row.add(8 * c).cast()));
                if !nan_aware {
                    // A NaN code (0x7F / 0xFF) is the only byte that ORed with the sign bit
                    // gives 0xFF; from the first one on, decode with the NaN fix-up.
                    let mut any = _mm_setzero_si128();
                    for b in bytes {
                        let hit =
                            _mm_cmpeq_epi8(_mm_or_si128(b, _mm_set1_epi8(-128)), _mm_set1_epi8(-1));
                        any = _mm_or_si128(any, hit);
                    }
                    nan_aware = _mm_movemask_epi8(any) & 0xFF != 0;
                }
                let d: [__m256; CV] = bytes.map(|b| match weights {
                    Weights::E5M2 => decode8_e5m2(b),
                    Weights::E4M3 => _mm256_mul_ps(decode8_e4m3(b), _mm256_set1_ps(256.0)),
                    Weights::E4M3TimesTwoPowMinus8 if nan_aware => decode8_e4m3(b),
                    Weights::E4M3TimesTwoPowMinus8 => decode8_e4m3_scaled_no_nan(b),
                });
                for r in 0..R {
                    let xv = _mm256_set1_ps(*xt.add(p * R + r));
                    for c in 0..CV {
                        acc[r][c] = _mm256_fmadd_ps(xv, d[c], acc[r][c]);
                    }
                }
                p += 1;
            }
            for r in 0..R {
                let o = out.add(r * ldo + j);
                if full {
                    for c in 0..CV {
                        _mm256_storeu_ps(o.add(8 * c), acc[r][c]);
                    }
                } else {
                    let mut tmp = [0.0f32; 8 * 6];
                    for c in 0..CV {
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * c), acc[r][c]);
                    }
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, width);
                }
            }
        }
        j += group;
    }
}
