//! NEON float32 GEMM microkernel: 8 x 12 tile in 24 of the 32 vector registers, per K step
//! 2 A loads, 3 B loads and 24 `fmla` (by element: each A value is a lane of an A register,
//! so no broadcasts). FP8 operands are decoded to float32 while packing (`gemm::pack`).
//! `fmla` is a fused multiply-add, so each step rounds once, as in the x86 kernels; blocking
//! as the AVX2 family's, sized for 64-128 KiB L1D and 1-2 MiB L2 per core.

use core::arch::aarch64::*;

use crate::gemm::driver::{KLoop, Micro};

const MR: usize = 8;
const NR: usize = 12;

/// NEON float32 kernel family.
pub(crate) static GEMM: Micro<f32> = Micro {
    mr: MR,
    nr: NR,
    a_splat: 1,
    kc: 512,
    mc: 4096,
    nc: 240,
    func: neon_f32_8x12,
    rows: None,
};

/// `acc[i][j] += b[j] * a[i / 4][i % 4]` for the 8 x 3 accumulators.
macro_rules! fma_rows {
    ($acc:ident, $a:ident, $b:ident, $($i:literal, $r:literal, $l:literal);*) => {
        $(
            $acc[$i][0] = vfmaq_laneq_f32::<$l>($acc[$i][0], $b[0], $a[$r]);
            $acc[$i][1] = vfmaq_laneq_f32::<$l>($acc[$i][1], $b[1], $a[$r]);
            $acc[$i][2] = vfmaq_laneq_f32::<$l>($acc[$i][2], $b[2], $a[$r]);
        )*
    };
}

/// # Safety
/// NEON available; `a` holds `steps * nblk * 8` floats, `b` `steps * nblk * 12`, `sa` / `sb`
/// 8 / 12 floats at each block's offset; C is an 8 x 12 tile with row stride `ldc`.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn neon_f32_8x12(
    kl: KLoop,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    // SAFETY: every pointer access stays within the lengths the caller guarantees.
    unsafe {
        let (mut a, mut b) = (a, b);
        for t in 0..kl.nblk {
            let mut acc = [[vdupq_n_f32(0.0); 3]; MR];
            for _ in 0..kl.steps {
                let av = [vld1q_f32(a), vld1q_f32(a.add(4))];
                let bv = [vld1q_f32(b), vld1q_f32(b.add(4)), vld1q_f32(b.add(8))];
                fma_rows!(acc, av, bv,
                    0, 0, 0; 1, 0, 1; 2, 0, 2; 3, 0, 3;
                    4, 1, 0; 5, 1, 1; 6, 1, 2; 7, 1, 3);
                a = a.add(MR);
                b = b.add(NR);
            }
            let (sa, sb) = (sa.add(t * kl.sa_stride), sb.add(t * kl.sb_stride));
            store_tile(&acc, c, ldc, first && t == 0, sa, sb);
        }
    }
}

/// `C = (first ? 0 : C) + (acc * sb[col]) * sa[row]` for an 8 x 12 tile (shared with the
/// BF16 kernel).
///
/// # Safety
/// NEON available; `sa` / `sb` hold 8 / 12 floats; C is an 8 x 12 tile with row stride `ldc`.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn store_tile(
    acc: &[[float32x4_t; 3]; MR],
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    // SAFETY: as the caller guarantees.
    unsafe {
        let s = [vld1q_f32(sb), vld1q_f32(sb.add(4)), vld1q_f32(sb.add(8))];
        for (i, row) in acc.iter().enumerate() {
            let si = vdupq_n_f32(*sa.add(i));
            let cp = c.offset(i as isize * ldc);
            for j in 0..3 {
                let t = vmulq_f32(row[j], s[j]);
                let p = cp.add(4 * j);
                if first {
                    vst1q_f32(p, vmulq_f32(t, si));
                } else {
                    vst1q_f32(p, vfmaq_f32(vld1q_f32(p), t, si));
                }
            }
        }
    }
}
