//! The portable GEMM microkernel.
//!
//! Written for the compiler's vectoriser: the tile is an array of rows and each K step is
//! `acc[i][j] += a[i] * b[j]` over the row, which becomes packed multiplies and adds (SSE2 on
//! x86-64, NEON on aarch64; no FMA is assumed). Each step rounds twice, the product and the
//! sum, each by at most half a float32 ulp (2^-24 relative), so a K block of `k` steps is
//! within `k * 2^-23` of the exact sum of products (relative to the sum of their magnitudes),
//! inside the `(k + 2) * 2^-23` bound every kernel meets. (Forming the step in float64, as an
//! FMA would round, halves the vector lanes and adds two conversions per step.)
//!
//! A is packed with every value repeated [`SPLAT`] times. SSE2 has no broadcast load, so a
//! plain panel costs a shuffle per A value per K step, and shuffles issue on the same ports
//! as the adds: a 4 x 8 step was 8 multiplies, 8 adds and 4 shuffles on three vector ports
//! (20 / 3 cycles); with the copies it is 16 / 3, the bound of SSE2 without FMA (three
//! multiplies or adds per cycle here, 12 flops). A taller tile does not help: a 6 x 8 step
//! still spends one shuffle per 4 multiply-adds.

use crate::gemm::driver::{KLoop, Micro};

const MR: usize = 4;
const NR: usize = 8;
/// Copies of each A value in the packed A panel: one 128-bit vector (SSE2, NEON), so that the
/// kernel loads every A value already broadcast (see `a_splat` of [`Micro`]).
const SPLAT: usize = 4;

/// The portable float32 kernel family.
pub(crate) static GEMM: Micro<f32> = Micro {
    mr: MR,
    nr: NR,
    a_splat: SPLAT,
    kc: 512,
    mc: 1024,
    nc: 256,
    func: kernel_4x8,
    rows: None,
};

/// # Safety
/// `a` holds `steps * nblk * MR * SPLAT` floats, `b` `steps * nblk * NR`, `sa` / `sb` MR / NR floats
/// at each block's offset; C is an MR x NR tile with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_4x8(
    kl: KLoop,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    for t in 0..kl.nblk {
        // SAFETY: block t of the K loop, as the caller guarantees.
        unsafe {
            block_4x8(
                kl.steps,
                a.add(t * kl.steps * MR * SPLAT),
                b.add(t * kl.steps * NR),
                c,
                ldc,
                first && t == 0,
                sa.add(t * kl.sa_stride),
                sb.add(t * kl.sb_stride),
            )
        };
    }
}

/// One K block of [`kernel_4x8`].
///
/// # Safety
/// As [`kernel_4x8`] for a single block of `kc` steps.
#[allow(clippy::too_many_arguments)]
unsafe fn block_4x8(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    // SAFETY: the caller guarantees the lengths above.
    let (a, b, sa, sb) = unsafe {
        (
            std::slice::from_raw_parts(a, kc * MR * SPLAT),
            std::slice::from_raw_parts(b, kc * NR),
            std::slice::from_raw_parts(sa, MR),
            std::slice::from_raw_parts(sb, NR),
        )
    };
    let mut acc = [[0.0f32; NR]; MR];
    // One K step: `acc[i][j] += a[i] * b[j]`, with a[i] read as the vector of its SPLAT
    // copies (lane j % SPLAT), so each row of the tile is NR / SPLAT multiplies and adds.
    let step = |acc: &mut [[f32; NR]; MR], ap: &[f32], bp: &[f32]| {
        let bp: &[f32; NR] = bp.try_into().expect("chunks of NR");
        for (row, av) in acc.iter_mut().zip(ap.chunks_exact(SPLAT)) {
            let av: &[f32; SPLAT] = av.try_into().expect("chunks of SPLAT");
            for (j, (x, &bv)) in row.iter_mut().zip(bp).enumerate() {
                *x += av[j % SPLAT] * bv;
            }
        }
    };
    // Two K steps per iteration (the compiler does not unroll this loop itself).
    let (a2, b2) = (a.chunks_exact(2 * MR * SPLAT), b.chunks_exact(2 * NR));
    let (a_last, b_last) = (a2.remainder(), b2.remainder());
    for (ap, bp) in a2.zip(b2) {
        step(&mut acc, &ap[..MR * SPLAT], &bp[..NR]);
        step(&mut acc, &ap[MR * SPLAT..], &bp[NR..]);
    }
    if !a_last.is_empty() {
        step(&mut acc, a_last, b_last);
    }
    // One row of C at a time, with `first` decided outside the loops so that both loops
    // vectorise (the same operations, in the same order, for every element).
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: row i of the C tile holds NR floats and nothing else refers to them here.
        let crow = unsafe { std::slice::from_raw_parts_mut(c.offset(i as isize * ldc), NR) };
        let s = sa[i];
        if first {
            for ((d, &x), &t) in crow.iter_mut().zip(row).zip(sb) {
                *d = x * t * s;
            }
        } else {
            for ((d, &x), &t) in crow.iter_mut().zip(row).zip(sb) {
                *d += x * t * s;
            }
        }
    }
}
