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
//! needs edge cases. FP8 is decoded through the exact 256-entry tables of [`crate::scalar`].

use half::{bf16, f16};

use super::Elems;
use crate::scalar::tables;

/// 64-byte aligned storage for packed panels (one cache line, one zmm register).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [u32; 16]);

/// A growable aligned buffer viewed as `f32` or bfloat16 bits.
#[derive(Default)]
pub(crate) struct PackBuf(Vec<Line>);

impl PackBuf {
    pub(crate) fn f32s(&mut self, len: usize) -> &mut [f32] {
        self.grow(len * 4);
        // SAFETY: the buffer holds at least `len * 4` bytes, 64-byte aligned, every bit pattern
        // is a valid f32, and the borrow of `self` keeps it alive and unaliased.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<f32>(), len) }
    }

    pub(crate) fn u16s(&mut self, len: usize) -> &mut [u16] {
        self.grow(len * 2);
        // SAFETY: as in `f32s`, for u16.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u16>(), len) }
    }

    fn grow(&mut self, bytes: usize) {
        let lines = bytes.div_ceil(64);
        if self.0.len() < lines {
            self.0.resize(lines, Line::default());
        }
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

/// Pack an FP8 `src` into bfloat16 pair panels of width `panel`
/// (`dst.len() >= ceil(width/panel)*panel*2*ceil(kc/2)`). Other element types are not
/// packed to bfloat16 (see `kernel_choice`).
///
/// # Safety
/// As [`pack_f32`]; `src.elems` must be FP8.
pub(crate) unsafe fn pack_bf16_pairs(src: Src, panel: usize, dst: &mut [u16]) {
    let Elems::Fp8(ptr, fmt) = src.elems else {
        unreachable!("bfloat16 packing is only chosen for FP8 operands")
    };
    let t = tables::bf16_table(fmt);
    let kp = src.kc.div_ceil(2);
    let panels = src.width.div_ceil(panel);
    for q in 0..panels {
        let w0 = q * panel;
        let wn = panel.min(src.width - w0);
        let out = &mut dst[q * kp * panel * 2..(q + 1) * kp * panel * 2];
        for pp in 0..kp {
            let row = &mut out[pp * panel * 2..(pp + 1) * panel * 2];
            let p = 2 * pp;
            for w in 0..wn {
                let off = p as isize * src.ks + (w0 + w) as isize * src.ws;
                // SAFETY: X(p, w0 + w) is inside the source (p < kc, w0 + w < width).
                let lo = unsafe { *ptr.offset(off) };
                row[2 * w] = t[usize::from(lo)].to_bits();
                row[2 * w + 1] = if p + 1 < src.kc {
                    // SAFETY: X(p + 1, w0 + w) is inside the source.
                    let hi = unsafe { *ptr.offset(off + src.ks) };
                    t[usize::from(hi)].to_bits()
                } else {
                    0
                };
            }
            row[2 * wn..].fill(0);
        }
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
    for q in 0..panels {
        let w0 = q * panel;
        let wn = panel.min(src.width - w0);
        let out = &mut dst[q * kc * panel..(q + 1) * kc * panel];
        // SAFETY: the base of panel q, inside the source.
        let base = ptr.wrapping_offset(w0 as isize * src.ws);
        if src.ks.unsigned_abs() < src.ws.unsigned_abs() {
            // The source is contiguous (or nearly) along K: read each of the `wn` lines along
            // K in turn and scatter it into the panel (stride `panel`).
            for w in 0..wn {
                let line = base.wrapping_offset(w as isize * src.ws);
                for p in 0..kc {
                    // SAFETY: X(p, w0 + w) is inside the source.
                    out[p * panel + w] = conv(unsafe { *line.offset(p as isize * src.ks) });
                }
            }
            if wn < panel {
                for p in 0..kc {
                    out[p * panel + wn..(p + 1) * panel].fill(0.0);
                }
            }
        } else {
            for p in 0..kc {
                let row = &mut out[p * panel..(p + 1) * panel];
                let line = base.wrapping_offset(p as isize * src.ks);
                for (w, slot) in row[..wn].iter_mut().enumerate() {
                    // SAFETY: X(p, w0 + w) is inside the source.
                    *slot = conv(unsafe { *line.offset(w as isize * src.ws) });
                }
                row[wn..].fill(0.0);
            }
        }
    }
}
