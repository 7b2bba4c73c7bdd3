//! The blocked GEMM loop nest (see the module docs of [`super`]) over one microkernel family.

use std::cell::RefCell;
use std::sync::{Mutex, PoisonError};

use super::pack::{self, PackBuf, Src};
use super::{CPtr, Elems, KernelChoice, Mat, ScalePlan};
use crate::alloc::{self, Refused};
use crate::arch;
use crate::error::Result;
use crate::threads;

/// The K loop of one microkernel call: `nblk` consecutive blocks of `steps` K steps each (K
/// pairs for bfloat16 pair panels). Block `t` is summed on its own and added to C scaled by
/// its MR row scales `sa + t * sa_stride` and NR column scales `sb + t * sb_stride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KLoop {
    pub steps: usize,
    pub nblk: usize,
    pub sa_stride: usize,
    pub sb_stride: usize,
}

/// A microkernel: for each block `t` of the [`KLoop`],
/// `C[MR x NR] = (first && t == 0 ? 0 : C) + (A_t @ B_t) * sb_t[col] * sa_t[row]`.
///
/// Arguments: the K loop, the packed A and B micro-panels, C (row stride `ldc`, unit column
/// stride), `first`, and the row and column scales of block 0. Once C has been touched by the
/// first block it stays in L1, so scales that change every K block (DeepSeek-V3 layouts) cost
/// one L1 round trip of the tile per block, not a pass over C in memory.
pub(crate) type KernelFn<E> =
    unsafe fn(KLoop, *const E, *const E, *mut f32, isize, bool, *const f32, *const f32);

/// A microkernel with its register block (MR x NR) and cache blocking (KC, MC, NC).
pub(crate) struct Micro<E> {
    pub mr: usize,
    pub nr: usize,
    /// Copies of each A element in a packed A micro-panel: 1, or the vector width of a kernel
    /// that loads each A value as a whole vector instead of broadcasting it (SSE2 has no
    /// broadcast load: a load and a shuffle per value, and the shuffle competes with the adds
    /// for the same ports).
    pub a_splat: usize,
    /// K block in elements of K (even for pair kernels).
    pub kc: usize,
    /// Rows of A packed per block (a multiple of `mr`), sized for L2.
    pub mc: usize,
    /// Columns of B packed per block (a multiple of `nr`), sized for L3.
    pub nc: usize,
    pub func: KernelFn<E>,
    /// The kernel for the first `rows < MR` rows of a full-width tile, written straight into
    /// C (the last row tile of most products: 128 rows are 9 tiles of 14 and one of 2, of
    /// which a full-tile kernel would compute 14). `None`: a local full tile, then a copy.
    pub rows: Option<RowsFn<E>>,
}

/// A [`KernelFn`] for the first `rows` (< MR) rows of the tile; A micro-panels keep their
/// MR stride.
pub(crate) type RowsFn<E> =
    unsafe fn(usize, KLoop, *const E, *const E, *mut f32, isize, bool, *const f32, *const f32);

/// A packed element type: float32, or bfloat16 bits in K pairs.
pub(crate) trait PackElem: Copy + Send + Sync + 'static {
    /// Whether panels hold K in pairs (the kernel's `kc` argument is then in pairs).
    const PAIRS: bool;
    fn buf(b: &mut PackBuf, len: usize) -> Result<&mut [Self], Refused>;
    /// # Safety
    /// As [`pack::pack_f32`].
    unsafe fn pack(src: Src, panel: usize, dst: &mut [Self]);
}

impl PackElem for f32 {
    const PAIRS: bool = false;
    fn buf(b: &mut PackBuf, len: usize) -> Result<&mut [f32], Refused> {
        b.f32s(len)
    }
    unsafe fn pack(src: Src, panel: usize, dst: &mut [f32]) {
        // SAFETY: forwarded from the caller.
        unsafe { pack::pack_f32(src, panel, dst) }
    }
}

impl PackElem for u16 {
    const PAIRS: bool = true;
    fn buf(b: &mut PackBuf, len: usize) -> Result<&mut [u16], Refused> {
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

/// Largest MR * NR of any kernel.
const MAX_TILE: usize = 16 * 32;

/// Products below this many multiply-adds run on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 18;

thread_local! {
    /// The calling thread's packed A block, reused across calls: a fresh multi-MiB buffer per
    /// call cost its page faults and zeroing every time.
    static A_PACK: RefCell<PackBuf> = RefCell::new(PackBuf::default());
    /// Each worker's packed B block (L2-sized), reused across calls.
    static B_PACK: RefCell<PackBuf> = RefCell::new(PackBuf::default());
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
) -> Result<()> {
    // SAFETY (all arms): forwarded; `kernel_choice` only returns an x86 family when the CPU
    // has its features (the ISA was checked by `arch`).
    match choice {
        KernelChoice::Scalar => unsafe { run(&arch::portable::gemm::GEMM, a, b, plan, c, ldc) },
        #[cfg(target_arch = "x86_64")]
        KernelChoice::Avx2 => unsafe { run(&arch::x86_64::avx2::gemm::GEMM, a, b, plan, c, ldc) },
        #[cfg(target_arch = "x86_64")]
        KernelChoice::Avx512 => unsafe {
            run(&arch::x86_64::avx512::gemm::GEMM, a, b, plan, c, ldc)
        },
        #[cfg(target_arch = "x86_64")]
        KernelChoice::Avx512Bf16 => unsafe {
            run(&arch::x86_64::avx512bf16::gemm::GEMM, a, b, plan, c, ldc)
        },
        #[cfg(target_arch = "aarch64")]
        KernelChoice::Neon => unsafe { run(&arch::aarch64::neon::gemm::GEMM, a, b, plan, c, ldc) },
        #[cfg(target_arch = "aarch64")]
        KernelChoice::NeonBf16 => unsafe {
            run(&arch::aarch64::neon_bf16::gemm::GEMM, a, b, plan, c, ldc)
        },
        #[allow(unreachable_patterns)]
        _ => unsafe { run(&arch::portable::gemm::GEMM, a, b, plan, c, ldc) },
    }
}

/// Run `f(0..n)` on the pool when `parallel`, else in order on this thread.
fn for_each_index(n: usize, parallel: bool, f: impl Fn(usize) + Sync + Send) {
    if parallel && n > 1 {
        threads::for_each((0..n).collect(), f);
    } else {
        (0..n).for_each(f);
    }
}

/// Split `count` items into `parts` contiguous ranges whose lengths differ by at most one.
fn even_range(count: usize, parts: usize, i: usize) -> (usize, usize) {
    (i * count / parts, (i + 1) * count / parts)
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
) -> Result<()> {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let (mr, nr) = (mk.mr, mk.nr);
    // Packed A elements per K step of a micro-panel.
    let a_step = mr * mk.a_splat;
    // K chunks of about KC. When a scale changes along K, a chunk is a whole number of scale
    // blocks, each summed and scaled on its own inside the kernel (one block per chunk if
    // the block is odd and panels hold K pairs, so that blocks start on a pair).
    let (kc_step, blk_len) = if plan.along_k() {
        let bl = plan.block;
        let per = if E::PAIRS && bl % 2 == 1 {
            1
        } else {
            (mk.kc / bl).max(1)
        };
        (per * bl, bl)
    } else {
        (mk.kc, mk.kc)
    };
    let blocks_per_chunk = kc_step / blk_len;
    let steps = |len: usize| if E::PAIRS { len.div_ceil(2) } else { len };
    let nthreads = threads::num_threads();
    let parallel = nthreads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_MACS;
    // Column blocks: the B block of one work item, packed by the thread that computes it and
    // kept in its L2 (about NC columns of whole NR panels, spread evenly and a multiple of the
    // thread count of them, so that the threads get equal shares). Narrow products also split
    // the rows. Tile boundaries stay multiples of MR / NR from the origin and the K chunks are
    // fixed, so the result does not depend on these choices.
    let npanels = n.div_ceil(nr);
    let mut nblocks = n.div_ceil(mk.nc);
    if parallel {
        nblocks = nblocks.div_ceil(nthreads) * nthreads;
    }
    let nblocks = nblocks.min(npanels).max(1);
    let mparts = if parallel && nblocks < 2 * nthreads {
        (2 * nthreads).div_ceil(nblocks)
    } else {
        1
    };

    // Scales of every block of a chunk: block t at `t * m_pad` / `t * n_pad`.
    let (m_pad, n_pad) = (m.div_ceil(mr) * mr, npanels * nr);
    let mut sa = alloc::filled_for(
        m_pad * blocks_per_chunk,
        1.0f32,
        "the row scales of a matmul",
    )?;
    let mut sb = alloc::filled_for(
        n_pad * blocks_per_chunk,
        1.0f32,
        "the column scales of a matmul",
    )?;
    // The packed A block, shared by the work items (taken from the calling thread's cache for
    // the call; an error return drops it).
    let mut a_pack = A_PACK.with(RefCell::take);
    // A worker that could not grow its B buffer (the call then fails with a MemoryError).
    let refused: Mutex<Option<Refused>> = Mutex::new(None);

    for i0 in (0..m).step_by(mk.mc) {
        let mcur = mk.mc.min(m - i0);
        let atiles = mcur.div_ceil(mr);
        for k0 in (0..k).step_by(kc_step) {
            let kcur = kc_step.min(k - k0);
            let first = k0 == 0;
            // Packed K length (pairs are padded to even).
            let klen = if E::PAIRS { kcur.div_ceil(2) * 2 } else { kcur };
            // Whole blocks, then a shorter last block at the end of K.
            let (nfull, rem) = (kcur / blk_len, kcur % blk_len);
            for t in 0..nfull + usize::from(rem > 0) {
                let kb = k0 / plan.block + t;
                let (sa_t, sb_t) = (&mut sa[t * m_pad..], &mut sb[t * n_pad..]);
                plan.fill(kb, i0, &mut sa_t[i0..i0 + mcur], 0, &mut sb_t[..n]);
            }
            let full = KLoop {
                steps: steps(blk_len),
                nblk: nfull,
                sa_stride: m_pad,
                sb_stride: n_pad,
            };
            let last = KLoop {
                steps: steps(rem),
                nblk: 1,
                sa_stride: m_pad,
                sb_stride: n_pad,
            };
            // Offset of the last block in a packed micro-panel of width w (a whole number of
            // pairs: blocks are even whenever a chunk holds more than one).
            let rem_off = |w: usize| nfull * blk_len * w;
            // Both calls of the partial-rows kernel for the first `rows` rows of a tile.
            let rows_calls = |f: RowsFn<E>,
                              rows: usize,
                              app: *const E,
                              bpp: *const E,
                              cp: *mut f32,
                              sap: *const f32,
                              sbp: *const f32| {
                // SAFETY: as in `tile_calls`, with C holding `rows` x NR floats.
                unsafe {
                    if nfull > 0 {
                        f(rows, full, app, bpp, cp, ldc, first, sap, sbp);
                    }
                    if rem > 0 {
                        f(
                            rows,
                            last,
                            app.add(rem_off(a_step)),
                            bpp.add(rem_off(nr)),
                            cp,
                            ldc,
                            first && nfull == 0,
                            sap.add(nfull * m_pad),
                            sbp.add(nfull * n_pad),
                        );
                    }
                }
            };
            // Both kernel calls of one tile into C at `cp` (or a local tile).
            let tile_calls = |app: *const E,
                              bpp: *const E,
                              cp: *mut f32,
                              ld: isize,
                              first: bool,
                              sap: *const f32,
                              sbp: *const f32| {
                // SAFETY: the panels hold klen K steps of MR * a_splat / NR elements, the scale vectors
                // hold the blocks' MR / NR entries at these offsets, C (or the local tile)
                // holds MR x NR floats with row stride `ld` (checked by the callers).
                unsafe {
                    if nfull > 0 {
                        (mk.func)(full, app, bpp, cp, ld, first, sap, sbp);
                    }
                    if rem > 0 {
                        (mk.func)(
                            last,
                            app.add(rem_off(a_step)),
                            bpp.add(rem_off(nr)),
                            cp,
                            ld,
                            first && nfull == 0,
                            sap.add(nfull * m_pad),
                            sbp.add(nfull * n_pad),
                        );
                    }
                }
            };

            // Pack A[i0.., k0..] once for every column block, the MR panels split between
            // the threads.
            let a_panel_len = a_step * klen;
            let ap = E::buf(&mut a_pack, atiles * a_panel_len)
                .map_err(|r| r.for_what("the packed left operand of a matmul"))?;
            let aparts = if parallel { nthreads.min(atiles) } else { 1 };
            let mut a_chunks: Vec<(usize, &mut [E])> = Vec::new();
            let mut rest = &mut ap[..];
            for part in 0..aparts {
                let (t0, t1) = even_range(atiles, aparts, part);
                let (head, tail) = rest.split_at_mut((t1 - t0) * a_panel_len);
                a_chunks.push((t0, head));
                rest = tail;
            }
            let pack_a = |(t0, dst): (usize, &mut [E])| {
                let r0 = t0 * mr;
                let src = Src {
                    elems: a
                        .elems
                        .offset((i0 + r0) as isize * a.rs + k0 as isize * a.cs),
                    ks: a.cs,
                    ws: a.rs,
                    kc: kcur,
                    width: (dst.len() / a_panel_len * mr).min(mcur - r0),
                };
                // The unsplatted panels fill the start of `dst`; then each element is repeated.
                let packed = dst.len() / mk.a_splat;
                // SAFETY: A[i0 + r0.., k0..k0 + kcur] (src.width rows) is inside A.
                unsafe { E::pack(src, mr, &mut dst[..packed]) };
                pack::splat_in_place(dst, packed, mk.a_splat);
            };
            if parallel && aparts > 1 {
                threads::for_each(a_chunks, pack_a);
            } else {
                a_chunks.into_iter().for_each(pack_a);
            }
            let ap: &[E] = ap;
            let (sa, sb) = (&sa[..], &sb[..]);

            // Work items: (column block, row part). Each packs its B block, then runs every A
            // micro-panel (kept in L1) against the block's B panels (streamed from L2).
            let item = |it: usize| {
                let (jb, mp) = (it / mparts, it % mparts);
                let (q0, q1) = even_range(npanels, nblocks, jb);
                let (j0, j1) = (q0 * nr, (q1 * nr).min(n));
                let (t0, t1) = even_range(atiles, mparts, mp);
                if q0 == q1 || t0 == t1 {
                    return;
                }
                let panel_len = klen * nr;
                B_PACK.with(|cell| {
                    let mut buf = cell.borrow_mut();
                    let bp = match E::buf(&mut buf, (q1 - q0) * panel_len) {
                        Ok(bp) => bp,
                        Err(r) => {
                            *refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
                            return;
                        }
                    };
                    let b_src = Src {
                        elems: b.elems.offset(k0 as isize * b.rs + j0 as isize * b.cs),
                        ks: b.rs,
                        ws: b.cs,
                        kc: kcur,
                        width: j1 - j0,
                    };
                    // SAFETY: B[k0..k0 + kcur, j0..j1] is inside B.
                    unsafe { E::pack(b_src, nr, bp) };
                    for ir in t0..t1 {
                        let ii = ir * mr;
                        let mrc = mr.min(mcur - ii);
                        let app = ap[ir * a_panel_len..].as_ptr();
                        let sap = sa[i0 + ii..].as_ptr();
                        for q in q0..q1 {
                            let jj = q * nr;
                            let nrc = nr.min(n - jj);
                            let bpp = bp[(q - q0) * panel_len..].as_ptr();
                            let sbp = sb[jj..].as_ptr();
                            let cp = c.at(i0 + ii, jj, ldc);
                            if mrc == mr && nrc == nr {
                                // A full MR x NR tile inside C.
                                tile_calls(app, bpp, cp, ldc, first, sap, sbp);
                                continue;
                            }
                            if let (Some(f), true) = (mk.rows, nrc == nr) {
                                // The last rows of C, full width: only those rows computed.
                                rows_calls(f, mrc, app, bpp, cp, sap, sbp);
                                continue;
                            }
                            // Edge tiles go through a local MR x NR tile, of which the valid
                            // mrc x nrc part is merged into C.
                            let mut tile = [0.0f32; MAX_TILE];
                            tile_calls(app, bpp, tile.as_mut_ptr(), nr as isize, true, sap, sbp);
                            for i in 0..mrc {
                                for j in 0..nrc {
                                    let t = tile[i * nr + j];
                                    // SAFETY: (i, j) is inside the valid part of the tile.
                                    unsafe {
                                        let d = cp.offset(i as isize * ldc + j as isize);
                                        *d = if first { t } else { *d + t };
                                    }
                                }
                            }
                        }
                    }
                });
            };
            for_each_index(nblocks * mparts, parallel, item);
            if let Some(r) = refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                return Err(r.for_what("the packed right operand of a matmul"));
            }
        }
    }
    A_PACK.with(|cell| cell.replace(a_pack));
    Ok(())
}
