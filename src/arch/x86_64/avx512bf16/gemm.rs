//! AVX-512 BF16 GEMM microkernel for FP8 x FP8 and bfloat16 x FP8: 14 x 32 float32 tile, 28 zmm accumulators, per
//! K *pair* 2 B loads, 14 broadcasts, 28 `vdpbf16ps`.
//!
//! `vdpbf16ps` (Intel SDM, VDPBF16PS) computes per float32 lane
//! `acc += a[2i+1] * b[2i+1]; acc += a[2i] * b[2i]` with round-to-nearest-even, denormal
//! inputs treated as zero and denormal outputs flushed, independent of MXCSR. For FP8 inputs
//! decoded to bfloat16 every product is exact in float32 and no input, product or partial sum
//! of FP8 products is denormal (|products| >= 2^-32), so each lane sees at most one rounding
//! per product, like two FMAs, and the `(k + 2) * 2^-23` bound holds. The summation order
//! within a pair differs from the float32 kernel, so the two kernels agree to the bound, not
//! bit for bit.

use std::arch::x86_64::*;

use crate::arch::x86_64::avx2::gemm::prefetch_c;
use crate::arch::x86_64::avx512::gemm::store_14x32;
use crate::gemm::driver::{KLoop, Micro};

/// AVX-512 BF16 kernel family (FP8 x FP8, and bfloat16 x FP8 in the range of
/// `gemm::bf16_dot_exact`).
pub(crate) static GEMM: Micro<u16> = Micro {
    mr: 14,
    nr: 32,
    a_splat: 1,
    kc: 768,
    mc: 14 * 292,
    nc: 384,
    func: avx512_bf16_14x32,
    rows: None,
};

/// # Safety
/// AVX-512 F + BF16 available; `a` holds `steps * nblk * 14` bfloat16 pairs, `b`
/// `steps * nblk * 32` pairs, `sa` / `sb` 14 / 32 floats at each block's offset; C is a
/// 14 x 32 tile with row stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_bf16_14x32(
    kl: KLoop,
    a: *const u16,
    b: *const u16,
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    const MR: usize = 14;
    // SAFETY: every pointer access stays within the lengths the caller guarantees; the
    // transmutes reinterpret 512-bit integer vectors as 32 bfloat16 lanes (same size, any
    // bit pattern valid).
    unsafe {
        prefetch_c(c, ldc, MR, first);
        let mut a = a.cast::<i32>();
        let mut b = b.cast::<i32>();
        for t in 0..kl.nblk {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            for _ in 0..kl.steps {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i)));
                    row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
                }
                a = a.add(MR);
                b = b.add(32);
            }
            let (sa, sb) = (sa.add(t * kl.sa_stride), sb.add(t * kl.sb_stride));
            store_14x32(&acc, c, ldc, first && t == 0, sa, sb);
        }
    }
}
