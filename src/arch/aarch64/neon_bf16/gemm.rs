//! NEON BF16 GEMM microkernel for FP8 x FP8: 8 x 12 float32 tile, 24 accumulators, per K
//! *pair* 2 A loads, 3 B loads and 24 `bfdot` (by element), twice the multiply-adds per
//! instruction of the `neon` kernel's `fmla`.
//!
//! `bfdot` (Arm ARM, BFDOT (by element), without FEAT_EBF16 or with FPCR.EBF clear) computes
//! per float32 lane `acc + (a[2i] * b[2j] + a[2i+1] * b[2j+1])` with the products exact, each
//! addition rounded to odd, denormal inputs and results flushed to zero, independent of FPCR.
//! For FP8 inputs decoded to bfloat16 every product is exact in float32 and no product or sum
//! of FP8 products is denormal (|products| >= 2^-32, and sums are multiples of that), so each
//! product costs one addition whose error is below one float32 ulp (round to odd), as the
//! `(k + 2) * 2^-23` bound allows. The summation order and the rounding differ from the float32
//! kernel, so the two agree to the bound, not bit for bit (as on x86 with `vdpbf16ps`).
//!
//! The bfloat16 intrinsics are not stable in Rust 1.95, so each `bfdot` is one `asm!`
//! instruction on registers (no memory access); the loads and the epilogue are intrinsics.

use core::arch::aarch64::*;
use std::arch::asm;

use crate::arch::aarch64::neon::gemm::store_tile;
use crate::gemm::driver::{KLoop, Micro};

const MR: usize = 8;
const NR: usize = 12;

/// NEON BF16 kernel family (FP8 x FP8 only).
pub(crate) static GEMM: Micro<u16> = Micro {
    mr: MR,
    nr: NR,
    a_splat: 1,
    kc: 768,
    mc: 4096,
    nc: 336,
    func: neon_bf16_8x12,
    rows: None,
};

/// `acc += bfdot(b, a.2h[LANE])`.
///
/// # Safety
/// FEAT_BF16 available.
#[target_feature(enable = "neon,bf16")]
#[inline]
unsafe fn bfdot<const LANE: i32>(acc: float32x4_t, b: uint32x4_t, a: uint32x4_t) -> float32x4_t {
    let mut acc = acc;
    // SAFETY: one register-only instruction of FEAT_BF16, which the caller guarantees; it
    // reads `b` and `a`, updates `acc`, and touches no memory or flags.
    unsafe {
        asm!(
            "bfdot {acc:v}.4s, {b:v}.8h, {a:v}.2h[{lane}]",
            acc = inout(vreg) acc,
            b = in(vreg) b,
            a = in(vreg) a,
            lane = const LANE,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

macro_rules! dot_rows {
    ($acc:ident, $a:ident, $b:ident, $($i:literal, $r:literal, $l:literal);*) => {
        $(
            $acc[$i][0] = bfdot::<$l>($acc[$i][0], $b[0], $a[$r]);
            $acc[$i][1] = bfdot::<$l>($acc[$i][1], $b[1], $a[$r]);
            $acc[$i][2] = bfdot::<$l>($acc[$i][2], $b[2], $a[$r]);
        )*
    };
}

/// # Safety
/// NEON and FEAT_BF16 available; `a` holds `steps * nblk * 8` bfloat16 pairs, `b`
/// `steps * nblk * 12` pairs, `sa` / `sb` 8 / 12 floats at each block's offset; C is an
/// 8 x 12 tile with row stride `ldc`.
#[target_feature(enable = "neon,bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn neon_bf16_8x12(
    kl: KLoop,
    a: *const u16,
    b: *const u16,
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    // SAFETY: every pointer access stays within the lengths the caller guarantees; FEAT_BF16
    // is available (the caller's contract) for `bfdot`.
    unsafe {
        let mut a = a.cast::<u32>();
        let mut b = b.cast::<u32>();
        for t in 0..kl.nblk {
            let mut acc = [[vdupq_n_f32(0.0); 3]; MR];
            for _ in 0..kl.steps {
                let av = [vld1q_u32(a), vld1q_u32(a.add(4))];
                let bv = [vld1q_u32(b), vld1q_u32(b.add(4)), vld1q_u32(b.add(8))];
                dot_rows!(acc, av, bv,
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
