//! The portable GEMM microkernel.
//!
//! Written for the compiler's vectoriser: the tile is an array of rows and each K step is
//! `acc[i][j] += a[i] * b[j]` over the row, which becomes packed multiplies and adds (SSE2 on
//! x86-64, NEON on aarch64; no FMA is assumed). Each step rounds twice, the product and the
//! sum, each by at most half a float32 ulp (2^-24 relative), so a K block of `k` steps is
//! within `k * 2^-23` of the exact sum of products (relative to the sum of their magnitudes),
//! inside the `(k + 2) * 2^-23` bound every kernel meets. (Forming the step in float64, as an
//! FMA would round, halves the vector lanes and adds two conversions per step.)

use crate::gemm::driver::{KLoop, Micro};

const MR: usize = 4;
const NR: usize = 8;

/// The portable float32 kernel family.
pub(crate) static GEMM: Micro<f32> = Micro {
    mr: MR,
    nr: NR,
    kc: 256,
    mc: 1024,
    nc: 256,
    func: kernel_4x8,
    rows: None,
};

/// # Safety
/// `a` holds `steps * nblk * MR` floats, `b` `steps * nblk * NR`, `sa` / `sb` MR / NR floats
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
                a.add(t * kl.steps * MR),
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
            std::slice::from_raw_parts(a, kc * MR),
            std::slice::from_raw_parts(b, kc * NR),
            std::slice::from_raw_parts(sa, MR),
            std::slice::from_raw_parts(sb, NR),
        )
    };
    let mut acc = [[0.0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        let bp: &[f32; NR] = bp.try_into().expect("chunks of NR");
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &x) in row.iter().enumerate() {
            let t = x * sb[j];
            // SAFETY: (i, j) is inside the C tile.
            unsafe {
                let d = c.offset(i as isize * ldc + j as isize);
                *d = if first { t * sa[i] } else { *d + t * sa[i] };
            }
        }
    }
}
