//! The blocked GEMM loop nest (see the module docs of [`super`]) over one microkernel family.

use std::cell::RefCell;

use rayon::prelude::*;

use super::pack::{self, PackBuf, Src};
use super::{kernels, CPtr, Elems, KernelChoice, Mat, ScalePlan};
use crate::threads;

/// A microkernel: `C[MR x NR] = (first ? 0 : C) + (A_panel @ B_panel) * sb[col] * sa[row]`.
///
/// Arguments: `kc` (K steps, or K pairs for bfloat16 pair panels), the packed A and B
/// micro-panels, C (row stride `ldc`, unit column stride), `first`, and the MR row scales and
/// NR column scales.
pub(crate) type KernelFn<E> =
    unsafe fn(usize, *const E, *const E, *mut f32, isize, bool, *const f32, *const f32);

/// A microkernel with its register block (MR x NR) and cache blocking (KC, MC, NC).
pub(crate) struct Micro<E> {
    pub mr: usize,
    pub nr: usize,
    /// K block in elements of K (even for pair kernels).
    pub kc: usize,
    /// Rows of A packed per block (a multiple of `mr`), sized for L2.
    pub mc: usize,
    /// Columns of B packed per block (a multiple of `nr`), sized for L3.
    pub nc: usize,
    pub func: KernelFn<E>,
}

/// A packed element type: float32, or bfloat16 bits in K pairs.
pub(crate) trait PackElem: Copy + Send + Sync + 'static {
    /// Whether panels hold K in pairs (the kernel's `kc` argument is then in pairs).
    const PAIRS: bool;
    fn buf(b: &mut PackBuf, len: usize) -> &mut [Self];
    /// # Safety
    /// As [`pack::pack_f32`].
    unsafe fn pack(src: Src, panel: usize, dst: &mut [Self]);
}

impl PackElem for f32 {
    const PAIRS: bool = false;
    fn buf(b: &mut PackBuf, len: usize) -> &mut [f32] {
        b.f32s(len)
    }
    unsafe fn pack(src: Src, panel: usize, dst: &mut [f32]) {
        // SAFETY: forwarded from the caller.
        unsafe { pack::pack_f32(src, panel, dst) }
    }
}

impl PackElem for u16 {
    const PAIRS: bool = true;
    fn buf(b: &mut PackBuf, len: usize) -> &mut [u16] {
        b.u16s(len)
    }
    unsafe fn pack(src: Src, panel: usize, dst: &mut [u16]) {
        // SAFETY: forwarded from the caller.
        unsafe { pack::pack_bf16_pairs(src, panel, dst) }
    }
}

impl Elems {
    fn offset(self, off: isize) -> Elems {
        match self {
            Elems::Fp8(p, f) => Elems::Fp8(p.wrapping_offset(off), f),
            Elems::F32(p) => Elems::F32(p.wrapping_offset(off)),
            Elems::F16(p) => Elems::F16(p.wrapping_offset(off)),
            Elems::Bf16(p) => Elems::Bf16(p.wrapping_offset(off)),
        }
    }
}

/// Products below this many multiply-adds run on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

thread_local! {
    /// Each worker's packed A block, reused across calls.
    static A_PACK: RefCell<PackBuf> = RefCell::new(PackBuf::default());
}

/// Blocked `C = A @ B` (scaled) with the kernel family `choice`.
///
/// # Safety
/// As [`super::compute`].
pub(crate) unsafe fn gemm(
    choice: KernelChoice,
    a: Mat,
    b: Mat,
    plan: &ScalePlan<'_>,
    c: CPtr,
    ldc: isize,
) {
    // SAFETY (all arms): forwarded; `kernel_choice` only returns an x86 family when the CPU
    // has its features (the ISA was checked by `arch`).
    match choice {
        KernelChoice::Scalar => unsafe { run(&kernels::SCALAR, a, b, plan, c, ldc) },
        #[cfg(target_arch = "x86_64")]
        KernelChoice::Avx2 => unsafe { run(&super::x86::AVX2_F32, a, b, plan, c, ldc) },
        #[cfg(target_arch = "x86_64")]
        KernelChoice::Avx512 => unsafe { run(&super::x86::AVX512_F32, a, b, plan, c, ldc) },
        #[cfg(target_arch = "x86_64")]
        KernelChoice::Avx512Bf16 => unsafe { run(&super::x86::AVX512_BF16, a, b, plan, c, ldc) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unsafe { run(&kernels::SCALAR, a, b, plan, c, ldc) },
    }
}

/// Run `f(0..n)` on the pool when `parallel`, else in order on this thread.
fn for_each_index(n: usize, parallel: bool, f: impl Fn(usize) + Sync + Send) {
    if parallel && n > 1 {
        threads::run(|| (0..n).into_par_iter().for_each(&f));
    } else {
        (0..n).for_each(f);
    }
}

/// # Safety
/// As [`super::compute`], and `mk.func` must be runnable on this CPU.
unsafe fn run<E: PackElem>(
    mk: &Micro<E>,
    a: Mat,
    b: Mat,
    plan: &ScalePlan<'_>,
    c: CPtr,
    ldc: isize,
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let (mr, nr) = (mk.mr, mk.nr);
    // K blocks: one per scale block when a scale changes along K, so that each block's sum is
    // scaled on its own; otherwise the cache-sized KC.
    let kc_step = if plan.along_k() { plan.block } else { mk.kc };
    let nthreads = threads::num_threads();
    let parallel = nthreads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_MACS;
    // Row blocks: at most MC rows, a multiple of MR, and a multiple of the thread count of them
    // so the threads get equal shares. Tile boundaries stay multiples of MR from row 0, so the
    // result does not depend on this choice.
    let mut nblocks = m.div_ceil(mk.mc);
    if parallel {
        nblocks = nblocks.div_ceil(nthreads) * nthreads;
    }
    let mc = m.div_ceil(nblocks).div_ceil(mr) * mr;
    let mblocks = m.div_ceil(mc);
    let nc = mk.nc;

    let mut sa = vec![1.0f32; m.div_ceil(mr) * mr];
    let mut sb = vec![1.0f32; nc.min(n).div_ceil(nr) * nr];
    let mut b_pack = PackBuf::default();

    for j0 in (0..n).step_by(nc) {
        let ncur = nc.min(n - j0);
        let npanels = ncur.div_ceil(nr);
        for (kb, k0) in (0..k).step_by(kc_step).enumerate() {
            let kcur = kc_step.min(k - k0);
            let first = k0 == 0;
            // Packed K length (pairs are padded to even) and the kernel's K argument.
            let (klen, kargs) = if E::PAIRS {
                (kcur.div_ceil(2) * 2, kcur.div_ceil(2))
            } else {
                (kcur, kcur)
            };
            plan.fill(kb, 0, &mut sa[..m], j0, &mut sb[..ncur]);
            let panel_len = klen * nr;
            let bp = E::buf(&mut b_pack, npanels * panel_len);
            let b_src = |q: usize| Src {
                elems: b
                    .elems
                    .offset(k0 as isize * b.rs + (j0 + q * nr) as isize * b.cs),
                ks: b.rs,
                ws: b.cs,
                kc: kcur,
                width: nr.min(ncur - q * nr),
            };
            let pack_b = |(q, dst): (usize, &mut [E])| {
                // SAFETY: panel q covers B[k0..k0+kcur, j0+q*nr..] inside B.
                unsafe { E::pack(b_src(q), nr, dst) }
            };
            if parallel {
                threads::run(|| bp.par_chunks_mut(panel_len).enumerate().for_each(pack_b));
            } else {
                bp.chunks_mut(panel_len).enumerate().for_each(pack_b);
            }
            let bp: &[E] = bp;

            // Work items: (row block, range of B panels). Split N too when there are fewer row
            // blocks than a couple per thread (short, wide products).
            let nsplit = if parallel {
                (2 * nthreads).div_ceil(mblocks).clamp(1, npanels)
            } else {
                1
            };
            let (sa, sb) = (&sa[..], &sb[..]);
            let item = |it: usize| {
                let (ib, s) = (it / nsplit, it % nsplit);
                let i0 = ib * mc;
                let mcur = mc.min(m - i0);
                let (q0, q1) = (s * npanels / nsplit, (s + 1) * npanels / nsplit);
                A_PACK.with(|cell| {
                    let mut buf = cell.borrow_mut();
                    let ap = E::buf(&mut buf, mcur.div_ceil(mr) * mr * klen);
                    let a_src = Src {
                        elems: a.elems.offset(i0 as isize * a.rs + k0 as isize * a.cs),
                        ks: a.cs,
                        ws: a.rs,
                        kc: kcur,
                        width: mcur,
                    };
                    // SAFETY: A[i0..i0+mcur, k0..k0+kcur] is inside A.
                    unsafe { E::pack(a_src, mr, ap) };
                    for q in q0..q1 {
                        let jj = q * nr;
                        let nrc = nr.min(ncur - jj);
                        let bpp = bp[q * panel_len..].as_ptr();
                        for ir in 0..mcur.div_ceil(mr) {
                            let ii = ir * mr;
                            let mrc = mr.min(mcur - ii);
                            let app = ap[ir * mr * klen..].as_ptr();
                            let sap = sa[i0 + ii..].as_ptr();
                            let sbp = sb[jj..].as_ptr();
                            let cp = c.at(i0 + ii, j0 + jj, ldc);
                            if mrc == mr && nrc == nr {
                                // SAFETY: full MR x NR tile inside C; the panels hold
                                // kargs steps; sa/sb hold MR / NR entries from these offsets.
                                unsafe { (mk.func)(kargs, app, bpp, cp, ldc, first, sap, sbp) };
                            } else {
                                // SAFETY: as above, edge tiles go through a local MR x NR tile.
                                unsafe {
                                    edge_tile(
                                        mk, kargs, app, bpp, cp, ldc, first, sap, sbp, mrc, nrc,
                                    )
                                };
                            }
                        }
                    }
                });
            };
            for_each_index(mblocks * nsplit, parallel, item);
        }
    }
}

/// Largest MR * NR of any kernel.
const MAX_TILE: usize = 16 * 32;

/// An edge tile: the kernel writes a full local tile, of which `mrc x nrc` is merged into C.
///
/// # Safety
/// As the kernel call in [`run`], with only `mrc x nrc` of C valid.
#[allow(clippy::too_many_arguments)]
unsafe fn edge_tile<E: PackElem>(
    mk: &Micro<E>,
    kargs: usize,
    ap: *const E,
    bp: *const E,
    cp: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
    mrc: usize,
    nrc: usize,
) {
    let mut tile = [0.0f32; MAX_TILE];
    debug_assert!(mk.mr * mk.nr <= MAX_TILE);
    // SAFETY: `tile` holds MR x NR floats with row stride NR; the panels are as in `run`.
    unsafe {
        (mk.func)(
            kargs,
            ap,
            bp,
            tile.as_mut_ptr(),
            mk.nr as isize,
            true,
            sa,
            sb,
        )
    };
    for i in 0..mrc {
        for j in 0..nrc {
            let t = tile[i * mk.nr + j];
            // SAFETY: (i, j) is inside the valid part of the C tile.
            unsafe {
                let d = cp.offset(i as isize * ldc + j as isize);
                *d = if first { t } else { *d + t };
            }
        }
    }
}
