//! Packing: copy a `kc x width` slice of an operand into micro-panels, decoding FP8 on the way.
//!
//! Both operands are packed by the same routine, seen as `X(p, w)` with `p` along K and `w`
//! along M (for A: `X(p, w) = A[w, p]`) or N (for B: `X(p, w) = B[p, w]`):
//!
//! ```text
//! float32 panels (width `panel` = MR or NR):   dst[q][p][w]        = X(p, q * panel + w)
//! bfloat16 pair panels (vdpbf16ps):            dst[q][p/2][w][p%2] = X(p, q * panel + w)
//! ```
//!
//! Columns past `width` and the odd K step of a pair panel are zero, so the microkernel never
//! needs edge cases. A kernel with `a_splat > 1` gets its float32 A panels with every element
//! repeated that many times ([`splat_in_place`]): `dst[q][p][w][c] = X(p, q * panel + w)`. FP8 is decoded through the exact 256-entry tables of [`crate::scalar`].

use half::{bf16, f16};

use super::Elems;
use crate::alloc::Refused;
#[cfg(target_arch = "x86_64")]
use crate::format::Format;
use crate::scalar::tables;

/// Bytes per cache line.
const LINE: usize = 64;
/// How far ahead (bytes) a source line is prefetched while packing along K.
const AHEAD: usize = 4 * LINE;

/// Ask for the cache line at `p` (never faults).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults, whatever the address; SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// 64-byte aligned storage for packed panels (one cache line, one zmm register).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [u32; 16]);

/// A growable aligned buffer viewed as `f32` or bfloat16 bits.
#[derive(Default)]
pub(crate) struct PackBuf(Vec<Line>);

impl PackBuf {
    /// The first `len` floats of the buffer, grown (fallibly) when shorter.
    pub(crate) fn f32s(&mut self, len: usize) -> Result<&mut [f32], Refused> {
        self.grow(len.checked_mul(4).ok_or(Refused::of::<f32>(len))?)?;
        // SAFETY: the buffer holds at least `len * 4` bytes, 64-byte aligned, every bit pattern
        // is a valid f32, and the borrow of `self` keeps it alive and unaliased.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<f32>(), len) })
    }

    /// The first `len` 16-bit words of the buffer, grown (fallibly) when shorter.
    pub(crate) fn u16s(&mut self, len: usize) -> Result<&mut [u16], Refused> {
        self.grow(len.checked_mul(2).ok_or(Refused::of::<u16>(len))?)?;
        // SAFETY: as in `f32s`, for u16.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u16>(), len) })
    }

    fn grow(&mut self, bytes: usize) -> Result<(), Refused> {
        crate::alloc::grow(&mut self.0, bytes.div_ceil(64), Line::default())
    }
}

/// A source `X(p, w) = base[p * ks + w * ws]` of `kc x width` elements.
#[derive(Clone, Copy)]
pub(crate) struct Src {
    pub elems: Elems,
    pub ks: isize,
    pub ws: isize,
    pub kc: usize,
    pub width: usize,
}

/// Pack `src` into float32 panels of width `panel` (`dst.len() >= ceil(width/panel)*panel*kc`).
///
/// # Safety
/// Every `X(p, w)` with `p < kc`, `w < width` must be readable.
pub(crate) unsafe fn pack_f32(src: Src, panel: usize, dst: &mut [f32]) {
    // Every packer below writes ceil(width / panel) panels of kc x panel floats.
    assert!(
        dst.len() >= src.width.div_ceil(panel) * src.kc * panel,
        "pack buffer too small"
    );
    #[cfg(target_arch = "x86_64")]
    if src.ks == 1 && (panel == 14 || panel == 32) && crate::arch::x86_64::has_avx512() {
        use crate::arch::x86_64::avx512::gemm::{pack_klines_f32, KLines};
        if let Elems::Fp8(p, Format::E4M3) = src.elems {
            if crate::arch::x86_64::has_avx512vbmi() {
                let tables = crate::arch::x86_64::avx512::gemv::E4m3Bf16Tables::new();
                // SAFETY: AVX-512 and VBMI were detected; line w of the source (K contiguous)
                // holds X(0..kc, w) for w < width (the caller's guarantee); dst checked.
                return unsafe {
                    crate::arch::x86_64::avx512::gemm::pack_klines_e4m3_table(
                        p,
                        src.ws,
                        src.kc,
                        src.width,
                        panel,
                        &tables,
                        dst.as_mut_ptr(),
                    )
                };
            }
        }
        let lines = match src.elems {
            Elems::Fp8(p, f) => KLines::Fp8(p, f),
            Elems::F32(p) => KLines::F32(p),
            Elems::F16(p) => KLines::F16(p),
            Elems::Bf16(p) => KLines::Bf16(p),
        };
        // SAFETY: AVX-512 was detected; line w of the source (K contiguous, `ks == 1`) holds
        // X(0..kc, w) for w < width (the caller's guarantee); dst checked.
        return unsafe {
            pack_klines_f32(lines, src.ws, src.kc, src.width, panel, dst.as_mut_ptr())
        };
    }
    #[cfg(target_arch = "x86_64")]
    if let Elems::Fp8(ptr, fmt) = src.elems {
        if src.ws == 1 && panel == 32 && crate::arch::x86_64::has_avx512() {
            // SAFETY: AVX-512 was detected; the caller guarantees X(p, w) readable for
            // p < kc, w < width (row p at ptr + p * ks, columns contiguous); dst checked.
            return unsafe {
                crate::arch::x86_64::avx512::gemm::pack_fp8_rows_f32x32(
                    ptr,
                    src.ks,
                    src.kc,
                    src.width,
                    fmt,
                    dst.as_mut_ptr(),
                )
            };
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { pack_f32_portable(src, panel, dst) }
}

/// [`pack_f32`] without the vectorised packers (the reference they are tested against).
///
/// # Safety
/// As [`pack_f32`].
pub(crate) unsafe fn pack_f32_portable(src: Src, panel: usize, dst: &mut [f32]) {
    // SAFETY (all arms): forwarded from the caller.
    match src.elems {
        Elems::Fp8(ptr, fmt) => {
            let t = tables::f32_table(fmt);
            unsafe { pack_typed(ptr, src, panel, dst, |c: u8| t[usize::from(c)]) }
        }
        Elems::F32(ptr) => unsafe { pack_typed(ptr, src, panel, dst, |x: f32| x) },
        Elems::F16(ptr) => unsafe { pack_typed(ptr, src, panel, dst, f16::to_f32) },
        Elems::Bf16(ptr) => unsafe { pack_typed(ptr, src, panel, dst, bf16::to_f32) },
    }
}

/// Pack a bfloat16 `src` into bfloat16 pair panels (the layout of [`pack_bf16_pairs`]): the
/// bits are copied. Along K (activations stored row-major, `ks == 1`) each line is read in
/// order; otherwise element by element.
///
/// # Safety
/// As [`pack_f32`], with `ptr` the source's base pointer.
unsafe fn pack_bf16_source_pairs(ptr: *const bf16, src: Src, panel: usize, dst: &mut [u16]) {
    let kp = src.kc.div_ceil(2);
    let panels = src.width.div_ceil(panel);
    assert!(
        dst.len() >= panels * kp * panel * 2,
        "pack buffer too small"
    );
    let (ks, ws) = (src.ks, src.ws);
    for q in 0..panels {
        let w0 = q * panel;
        let wn = panel.min(src.width - w0);
        let out = &mut dst[q * kp * panel * 2..(q + 1) * kp * panel * 2];
        for w in 0..panel {
            for p in 0..2 * kp {
                let bits = if w < wn && p < src.kc {
                    let off = p as isize * ks + (w0 + w) as isize * ws;
                    // SAFETY: X(p, w0 + w) with p < kc, w0 + w < width is inside the source.
                    unsafe { (*ptr.offset(off)).to_bits() }
                } else {
                    0
                };
                out[(p / 2 * panel + w) * 2 + p % 2] = bits;
            }
        }
    }
}

/// Pack an FP8 `src` into bfloat16 pair panels of width `panel`
/// (`dst.len() >= ceil(width/panel)*panel*2*ceil(kc/2)`). Other element types are not
/// packed to bfloat16 (see `kernel_choice`); bfloat16 sources are copied.
///
/// # Safety
/// As [`pack_f32`]; `src.elems` must be FP8.
pub(crate) unsafe fn pack_bf16_pairs(src: Src, panel: usize, dst: &mut [u16]) {
    let (ptr, fmt) = match src.elems {
        Elems::Fp8(ptr, fmt) => (ptr, fmt),
        // SAFETY: forwarded from the caller.
        Elems::Bf16(ptr) => return unsafe { pack_bf16_source_pairs(ptr, src, panel, dst) },
        _ => unreachable!("bfloat16 packing is only chosen for FP8 and bfloat16 operands"),
    };
    let t = tables::bf16_table(fmt);
    let kp = src.kc.div_ceil(2);
    let full_pairs = src.kc / 2;
    let panels = src.width.div_ceil(panel);
    assert!(
        dst.len() >= panels * kp * panel * 2,
        "pack buffer too small"
    );
    let (ks, ws) = (src.ks, src.ws);
    let d = dst.as_mut_ptr();
    // The vectorised 32-column pair packer needs AVX-512 BW (checked once per call; in practice
    // bfloat16 panels are only packed for the AVX-512 BF16 kernel).
    #[cfg(target_arch = "x86_64")]
    let simd = crate::arch::x86_64::has_avx512();
    let code = |off: isize| -> u16 {
        // SAFETY: every offset passed below addresses X(p, w) with p < kc, w < width.
        t[usize::from(unsafe { *ptr.offset(off) })].to_bits()
    };
    for q in 0..panels {
        let w0 = q * panel;
        let wn = panel.min(src.width - w0);
        let qbase = q * kp * panel * 2;
        // SAFETY (writes): indices below `qbase + kp * panel * 2 <= dst.len()`.
        unsafe {
            if ks == 1 {
                // Contiguous along K (A row-major, B = w.T): the two codes of a pair are
                // adjacent bytes. Walk K in steps of one source cache line: each of the `wn`
                // lines is read whole (and the next ones prefetched), and the panel slice
                // written meanwhile (LINE x panel values) stays in L1.
                let out32 = d.add(qbase).cast::<u32>();
                let base = ptr.offset(w0 as isize * ws);
                for pp0 in (0..full_pairs).step_by(LINE / 2) {
                    let pp1 = (pp0 + LINE / 2).min(full_pairs);
                    for w in 0..wn {
                        let line = base.offset(w as isize * ws);
                        prefetch(line.wrapping_add(2 * pp0 + AHEAD));
                        for pp in pp0..pp1 {
                            let bytes = line.add(2 * pp);
                            let lo = u32::from(t[usize::from(*bytes)].to_bits());
                            let hi = u32::from(t[usize::from(*bytes.add(1))].to_bits());
                            out32.add(pp * panel + w).write_unaligned(lo | hi << 16);
                        }
                    }
                }
                if kp > full_pairs {
                    let row = out32.add(full_pairs * panel);
                    for w in 0..wn {
                        let lo = *base.offset(w as isize * ws).add(2 * full_pairs);
                        row.add(w)
                            .write_unaligned(u32::from(t[usize::from(lo)].to_bits()));
                    }
                }
            } else if ks.unsigned_abs() < ws.unsigned_abs() {
                // Nearly contiguous along K: walk each line along K.
                for w in 0..wn {
                    let line = (w0 + w) as isize * ws;
                    let out = d.add(qbase + 2 * w);
                    if ks == 1 {
                        // Adjacent bytes form a pair: one 32-bit store per pair.
                        let bytes = ptr.offset(line);
                        let out32 = out.cast::<u32>();
                        for pp in 0..full_pairs {
                            let lo = u32::from(t[usize::from(*bytes.add(2 * pp))].to_bits());
                            let hi = u32::from(t[usize::from(*bytes.add(2 * pp + 1))].to_bits());
                            out32.add(pp * panel).write_unaligned(lo | hi << 16);
                        }
                    } else {
                        for pp in 0..full_pairs {
                            let off = line + (2 * pp) as isize * ks;
                            *out.add(pp * panel * 2) = code(off);
                            *out.add(pp * panel * 2 + 1) = code(off + ks);
                        }
                    }
                    if kp > full_pairs {
                        let off = line + (2 * full_pairs) as isize * ks;
                        *out.add(full_pairs * panel * 2) = code(off);
                        *out.add(full_pairs * panel * 2 + 1) = 0;
                    }
                }
            } else {
                for pp in 0..kp {
                    let out = d.add(qbase + pp * panel * 2);
                    let lo = (2 * pp) as isize * ks + w0 as isize * ws;
                    let has_hi = 2 * pp + 1 < src.kc;
                    if ws == 1 && has_hi {
                        // Two source rows contiguous along the panel: one 32-bit store per w.
                        let (lo_row, hi_row) = (ptr.offset(lo), ptr.offset(lo + ks));
                        #[cfg(target_arch = "x86_64")]
                        if simd && wn == 32 && panel == 32 {
                            crate::arch::x86_64::avx512::gemm::pack_pairs32(lo_row, hi_row, t, out);
                            continue;
                        }
                        let out32 = out.cast::<u32>();
                        for w in 0..wn {
                            let l = u32::from(t[usize::from(*lo_row.add(w))].to_bits());
                            let h = u32::from(t[usize::from(*hi_row.add(w))].to_bits());
                            out32.add(w).write_unaligned(l | h << 16);
                        }
                        continue;
                    }
                    for w in 0..wn {
                        let off = lo + w as isize * ws;
                        *out.add(2 * w) = code(off);
                        *out.add(2 * w + 1) = if has_hi { code(off + ks) } else { 0 };
                    }
                }
            }
            for pp in 0..kp {
                for w in wn..panel {
                    *d.add(qbase + (pp * panel + w) * 2) = 0;
                    *d.add(qbase + (pp * panel + w) * 2 + 1) = 0;
                }
            }
        }
    }
}

/// Repeat each of the first `len` elements of `buf` `copies` times in place:
/// `buf[i * copies + c] = old buf[i]` (the packed A layout of a kernel with `a_splat > 1`).
pub(crate) fn splat_in_place<E: Copy>(buf: &mut [E], len: usize, copies: usize) {
    match copies {
        1 => {}
        // The one splat in use (128-bit vectors of float32), with the copies as one store.
        4 => splat_const::<E, 4>(buf, len),
        _ => {
            assert!(buf.len() >= len * copies, "splat buffer too small");
            // Backwards, so that element i is read before the copies of the elements after
            // it (all at positions >= (i + 1) * copies > i) are written.
            for i in (0..len).rev() {
                let x = buf[i];
                buf[i * copies..(i + 1) * copies].fill(x);
            }
        }
    }
}

fn splat_const<E: Copy, const N: usize>(buf: &mut [E], len: usize) {
    assert!(buf.len() >= len * N, "splat buffer too small");
    // Backwards, as in `splat_in_place`.
    for i in (0..len).rev() {
        let x = buf[i];
        buf[i * N..(i + 1) * N].copy_from_slice(&[x; N]);
    }
}

/// # Safety
/// As [`pack_f32`], with `ptr` the typed base pointer.
#[inline(always)]
unsafe fn pack_typed<S: Copy>(
    ptr: *const S,
    src: Src,
    panel: usize,
    dst: &mut [f32],
    conv: impl Fn(S) -> f32,
) {
    let kc = src.kc;
    let panels = src.width.div_ceil(panel);
    assert!(dst.len() >= panels * kc * panel, "pack buffer too small");
    let (ks, ws) = (src.ks, src.ws);
    let d = dst.as_mut_ptr();
    for q in 0..panels {
        let w0 = q * panel;
        let wn = panel.min(src.width - w0);
        let out = d.wrapping_add(q * kc * panel);
        // SAFETY: reads address X(p, w0 + w) with p < kc, w < wn (inside the source); writes
        // stay below `(q + 1) * kc * panel <= dst.len()`.
        unsafe {
            if ks == 1 {
                // Contiguous along K: walk K in steps of one source cache line; each of the
                // `wn` lines is read whole (and the next ones prefetched), and the panel slice
                // written meanwhile stays in L1.
                let base = ptr.offset(w0 as isize * ws);
                let step = LINE / std::mem::size_of::<S>();
                for p0 in (0..kc).step_by(step) {
                    let p1 = (p0 + step).min(kc);
                    for w in 0..wn {
                        let line = base.offset(w as isize * ws);
                        prefetch(line.wrapping_add(p0).cast::<u8>().wrapping_add(AHEAD));
                        for p in p0..p1 {
                            *out.add(p * panel + w) = conv(*line.add(p));
                        }
                    }
                }
            } else if ks.unsigned_abs() < ws.unsigned_abs() {
                // Nearly contiguous along K: read each of the `wn` lines along K in turn and
                // scatter it into the panel (stride `panel`).
                for w in 0..wn {
                    let line = ptr.offset((w0 + w) as isize * ws);
                    if ks == 1 {
                        for p in 0..kc {
                            *out.add(p * panel + w) = conv(*line.add(p));
                        }
                    } else {
                        for p in 0..kc {
                            *out.add(p * panel + w) = conv(*line.offset(p as isize * ks));
                        }
                    }
                }
            } else {
                for p in 0..kc {
                    let line = ptr.offset(p as isize * ks + w0 as isize * ws);
                    let row = out.add(p * panel);
                    if ws == 1 {
                        for w in 0..wn {
                            *row.add(w) = conv(*line.add(w));
                        }
                    } else {
                        for w in 0..wn {
                            *row.add(w) = conv(*line.offset(w as isize * ws));
                        }
                    }
                }
            }
            if wn < panel {
                for p in 0..kc {
                    for w in wn..panel {
                        *out.add(p * panel + w) = 0.0;
                    }
                }
            }
        }
    }
}
