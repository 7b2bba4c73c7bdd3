//! AVX2 + FMA GEMM microkernel: 6 x 16 float32 tile, 12 ymm accumulators, per K step 2 B loads,
//! 6 broadcasts, 12 FMA. Cache blocking: see [`crate::arch::x86_64::avx512::gemm`].

use std::arch::x86_64::*;

use crate::gemm::driver::{KLoop, Micro};

/// AVX2 + FMA float32 kernel family.
pub(crate) static GEMM: Micro<f32> = Micro {
    mr: 6,
    nr: 16,
    a_splat: 1,
    kc: 512,
    mc: 6 * 682,
    nc: 384,
    func: avx2_f32_6x16,
    rows: None,
};

/// # Safety
/// AVX2 + FMA available; `a` holds `steps * nblk * 6` floats, `b` `steps * nblk * 16`, `sa` /
/// `sb` 6 / 16 floats at each block's offset; C is a 6 x 16 tile with row stride `ldc`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx2_f32_6x16(
    kl: KLoop,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    const MR: usize = 6;
    // SAFETY: every pointer access stays within the lengths the caller guarantees.
    unsafe {
        prefetch_c(c, ldc, MR, first);
        let (mut a, mut b) = (a, b);
        for t in 0..kl.nblk {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for _ in 0..kl.steps {
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_set1_ps(*a.add(i));
                    row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
                }
                a = a.add(MR);
                b = b.add(16);
            }
            let (sa, sb) = (sa.add(t * kl.sa_stride), sb.add(t * kl.sb_stride));
            let s0 = _mm256_loadu_ps(sb);
            let s1 = _mm256_loadu_ps(sb.add(8));
            for (i, row) in acc.iter().enumerate() {
                let si = _mm256_set1_ps(*sa.add(i));
                let cp = c.offset(i as isize * ldc);
                let t0 = _mm256_mul_ps(row[0], s0);
                let t1 = _mm256_mul_ps(row[1], s1);
                if first && t == 0 {
                    _mm256_storeu_ps(cp, _mm256_mul_ps(t0, si));
                    _mm256_storeu_ps(cp.add(8), _mm256_mul_ps(t1, si));
                } else {
                    _mm256_storeu_ps(cp, _mm256_fmadd_ps(t0, si, _mm256_loadu_ps(cp)));
                    _mm256_storeu_ps(
                        cp.add(8),
                        _mm256_fmadd_ps(t1, si, _mm256_loadu_ps(cp.add(8))),
                    );
                }
            }
        }
    }
}

/// Ask for the C tile (`rows` rows of 128 bytes) while the K loop runs, when it will be read.
#[inline(always)]
pub(crate) fn prefetch_c(c: *mut f32, ldc: isize, rows: usize, first: bool) {
    if !first {
        for i in 0..rows {
            let row = c.wrapping_offset(i as isize * ldc);
            // SAFETY: prefetching never faults, whatever the address.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(row.cast());
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(16).cast());
            }
        }
    }
}
