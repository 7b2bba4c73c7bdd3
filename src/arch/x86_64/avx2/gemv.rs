//! AVX2 GEMV kernels: FP8 weights decoded to float32 in registers, 8 bytes at a time (the
//! decoding is described in [`crate::arch::x86_64::avx512::gemv`]).

#[allow(clippy::wildcard_imports)]
use std::arch::x86_64::*;

use crate::gemm::gemv::Weights;

/// Prefetches into L2 the byte at offset `p` of the weight row `cols` rows after `row`: the
/// row the next column group reads at this point. The kernels stream C rows side by side;
/// requesting the next group's rows while this one is decoded keeps more DRAM requests in
/// flight than the hardware prefetchers do on their own. Measured (1 thread, Zen 4),
/// 1 x 8192 x 8192: bfloat16 kernel 3.8 -> 3.3 ms, AVX-512 E4M3 4.4 -> 4.2, E5M2 3.8 ->
/// 3.45, AVX2 6.0 -> 5.5 / 5.3 -> 4.6; 8 x 4096 x 4096: AVX-512 3.6 -> 3.1 ms. A distance of
/// two groups was no better. Past the last column the address is outside the weights:
/// prefetches do not fault, and the pointer is formed with wrapping arithmetic.
#[inline(always)]
pub(crate) fn prefetch_next(row: *const u8, cols: usize, ldw: isize, p: usize) {
    let ahead = row.wrapping_offset(cols as isize * ldw + p as isize);
    // SAFETY: a prefetch is a hint; it reads nothing architecturally and never faults.
    unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.cast()) };
}

#[inline(always)]
pub(crate) unsafe fn decode8_e5m2(bytes: __m128i) -> __m256 {
    // SAFETY: register-only intrinsics; the caller enables AVX2 + F16C.
    unsafe { _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(bytes), 8)) }
}

/// E4M3 -> float32 times 2^-8 (binary16 reading), NaN codes not handled.
#[inline(always)]
pub(crate) unsafe fn decode8_e4m3_scaled_no_nan(bytes: __m128i) -> __m256 {
    // SAFETY: register-only intrinsics; the caller enables AVX2 + F16C.
    unsafe {
        _mm256_cvtph_ps(_mm_and_si128(
            _mm_slli_epi16(_mm_cvtepi8_epi16(bytes), 7),
            _mm_set1_epi16(0xBF80u16 as i16),
        ))
    }
}

#[inline(always)]
pub(crate) unsafe fn decode8_e4m3(bytes: __m128i) -> __m256 {
    // SAFETY: register-only intrinsics; the caller enables AVX2 + F16C.
    unsafe {
        let wide = _mm_cvtepi8_epi16(bytes);
        let h = _mm_and_si128(_mm_slli_epi16(wide, 7), _mm_set1_epi16(0xBF80u16 as i16));
        let nan = _mm_cmpeq_epi16(
            _mm_and_si128(wide, _mm_set1_epi16(0x7F)),
            _mm_set1_epi16(0x7F),
        );
        let h = _mm_blendv_epi8(h, _mm_set1_epi16(0x7E00), nan);
        _mm256_cvtph_ps(h)
    }
}

/// # Safety
/// AVX2 + FMA + F16C available; as `DotFn`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_avx2(
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
    macro_rules! go {
        ($r:literal, $c:literal) => {
            // SAFETY: forwarded from the caller.
            unsafe { dot256::<$r, $c>(klen, x, ldx, w, ldw, ncols, weights, out) }
        };
    }
    // R * C accumulators + C decoded vectors + one activation vector fit 16 ymm registers.
    match rows {
        1 => go!(1, 4),
        2 => go!(2, 4),
        3 => go!(3, 2),
        4 => go!(4, 2),
        5 => go!(5, 1),
        6 => go!(6, 1),
        7 => go!(7, 1),
        _ => go!(8, 1),
    }
}

/// `C` weight rows at a time against `R` activation rows, 8 weights per step.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn dot256<const R: usize, const C: usize>(
    klen: usize,
    x: *const f32,
    ldx: usize,
    w: *const u8,
    ldw: isize,
    ncols: usize,
    weights: Weights,
    out: *mut f32,
) {
    let main = klen - klen % 8;
    let mut j = 0;
    while j < ncols {
        // Past the last column, the last one is computed again and not stored.
        let cols: [usize; C] = std::array::from_fn(|c| (j + c).min(ncols - 1));
        // SAFETY: rows `cols` of w hold klen bytes, x rows klen floats; the tails are
        // copied into zero-padded buffers.
        unsafe {
            let wr: [*const u8; C] = cols.map(|c| w.offset(c as isize * ldw));
            let decode = |b: __m128i| match weights {
                Weights::E5M2 => decode8_e5m2(b),
                Weights::E4M3 => _mm256_mul_ps(decode8_e4m3(b), _mm256_set1_ps(256.0)),
                Weights::E4M3TimesTwoPowMinus8 => decode8_e4m3(b),
            };
            let mut acc = [[_mm256_setzero_ps(); R]; C];
            let mut p = 0;
            if weights == Weights::E4M3TimesTwoPowMinus8 {
                // As in `dot512`: look for NaN codes once per 32 bytes of the C rows, and
                // decode without the fix-up while there are none.
                let sign = _mm256_set1_epi8(-128);
                let ones = _mm256_set1_epi8(-1);
                while p + 32 <= main {
                    if p % 64 == 0 {
                        for row in wr {
                            prefetch_next(row, C, ldw, p);
                        }
                    }
                    let mut nan = _mm256_setzero_si256();
                    for row in wr {
                        let v = _mm256_loadu_si256(row.add(p).cast());
                        nan =
                            _mm256_or_si256(nan, _mm256_cmpeq_epi8(_mm256_or_si256(v, sign), ones));
                    }
                    if _mm256_movemask_epi8(nan) != 0 {
                        break; // finish this row group with the NaN-aware loop below
                    }
                    for s in 0..4 {
                        let q = p + 8 * s;
                        let d: [__m256; C] = wr.map(|row| {
                            decode8_e4m3_scaled_no_nan(_mm_loadl_epi64(row.add(q).cast()))
                        });
                        for r in 0..R {
                            let xv = _mm256_loadu_ps(x.add(r * ldx + q));
                            for c in 0..C {
                                acc[c][r] = _mm256_fmadd_ps(xv, d[c], acc[c][r]);
                            }
                        }
                    }
                    p += 32;
                }
            }
            while p < main {
                if p % 64 == 0 {
                    for row in wr {
                        prefetch_next(row, C, ldw, p);
                    }
                }
                let d: [__m256; C] = wr.map(|row| decode(_mm_loadl_epi64(row.add(p).cast())));
                for r in 0..R {
                    let xv = _mm256_loadu_ps(x.add(r * ldx + p));
                    for c in 0..C {
                        acc[c][r] = _mm256_fmadd_ps(xv, d[c], acc[c][r]);
                    }
                }
                p += 8;
            }
            if main < klen {
                let n = klen - main;
                let d: [__m256; C] = wr.map(|row| {
                    let mut tail = [0u8; 16];
                    std::ptr::copy_nonoverlapping(row.add(main), tail.as_mut_ptr(), n);
                    decode(_mm_loadl_epi64(tail.as_ptr().cast()))
                });
                for r in 0..R {
                    let mut tx = [0.0f32; 8];
                    std::ptr::copy_nonoverlapping(x.add(r * ldx + main), tx.as_mut_ptr(), n);
                    let xv = _mm256_loadu_ps(tx.as_ptr());
                    for c in 0..C {
                        acc[c][r] = _mm256_fmadd_ps(xv, d[c], acc[c][r]);
                    }
                }
            }
            for c in 0..C {
                if j + c < ncols {
                    for r in 0..R {
                        // Fixed-order horizontal sum: (lo + hi) halves, then pairs.
                        let a = acc[c][r];
                        let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                        *out.add(r * ncols + j + c) = _mm_cvtss_f32(s);
                    }
                }
            }
        }
        j += C;
    }
}
