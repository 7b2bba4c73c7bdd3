//! NEON codec kernels, 16 elements per iteration (four registers of 4 f32 lanes, or one of 16
//! codes).
//!
//! Encoding uses the integer rounding of `arch::portable::codec` on 32-bit lanes (derivation
//! there): the normal range is `((abs + round_add + lsb) >> s)` clamped to the overflow code,
//! the subnormal range `fcvtnu(|x| * 2^(b-1+m))`, NaN a select, the sign an OR; the four
//! vectors are narrowed with `xtn`/`xtn2` into one 16-byte store. f64 is narrowed first with
//! `fcvtxn` (round to odd: the f64 is rounded once, see `arch::portable::codec`), f16 to E4M3
//! is widened with `fcvtl`, f16 to E5M2 is rounded on 16-bit lanes (the E5M2 code is the top
//! byte of the binary16 pattern), bf16 is widened by a shift.
//!
//! Decoding is FPU-free: the output pattern of every FP8 decode has at most 16 significant
//! bits at its top (f16 and bf16 whole; f32 is `bf16 << 16`, f64 has 1 + 11 + 4 top bits and
//! an FP8 significand has at most 3 fraction bits). So each output type has a 128-entry table
//! of 16-bit patterns per format, indexed by the magnitude, held as two 64-byte halves of low
//! bytes and two of high bytes in 16 registers: `tbl` looks up magnitudes 0..=63 in the first
//! half, `tbx` fills in 64..=127 from the second, and the sign bit is ORed into the high byte.
//! `st2` / `st4` interleave the bytes into f16 / f32 elements; f64 widens with `zip`.
//! See `arch::aarch64` for why FPCR cannot change a result.
//!
//! Every kernel is reachable only through [`codec_kernels`], which `arch::codec_kernels_for`
//! hands out only after `has_neon()` confirmed Advanced SIMD.

use core::arch::aarch64::*;
use std::arch::asm;
use std::sync::OnceLock;

use half::{bf16, f16};

use crate::arch::portable::codec::FmtConsts;
use crate::arch::{CodecKernels, Isa};
use crate::format::Format;
use crate::scalar;

/// Elements per main-loop iteration.
const BLOCK: usize = 16;

static CODEC: CodecKernels = CodecKernels {
    isa: Isa::Neon,
    encode_f32,
    encode_f64,
    encode_f16,
    encode_bf16,
    decode_f32,
    decode_f64,
    decode_f16,
    decode_bf16,
};

/// The codec kernels of this level. Only call when the CPU has it (`has_neon()`).
pub fn codec_kernels() -> &'static CodecKernels {
    &CODEC
}

const fn format(e5: bool) -> Format {
    if e5 {
        Format::E5M2
    } else {
        Format::E4M3
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// `x >> (23 - m)`.
#[target_feature(enable = "neon")]
#[inline]
fn srl_mant<const E5: bool>(x: uint32x4_t) -> uint32x4_t {
    if E5 {
        vshrq_n_u32::<21>(x)
    } else {
        vshrq_n_u32::<20>(x)
    }
}

/// 4 f32 bit patterns -> their 4 signed FP8 codes in 32-bit lanes.
///
/// Lanes below the smallest FP8 normal take the subnormal candidate; it is computed from
/// `min(abs, min_normal)` so no lane converts a NaN or an out-of-range value.
#[target_feature(enable = "neon")]
#[inline]
fn encode_lanes<const E5: bool, const SAT: bool>(bits: uint32x4_t) -> uint32x4_t {
    let c = FmtConsts::get(E5, SAT);
    let abs = vandq_u32(bits, vdupq_n_u32(0x7FFF_FFFF));
    let lsb = vandq_u32(srl_mant::<E5>(abs), vdupq_n_u32(1));
    // Wraps (harmlessly) only for lanes below the FP8 normal range, which take `sub` below.
    let rounded = vaddq_u32(vaddq_u32(abs, vdupq_n_u32(c.round_add as u32)), lsb);
    let mut code = vminq_u32(srl_mant::<E5>(rounded), vdupq_n_u32(c.overflow as u32));
    if c.nan != c.overflow {
        let is_nan = vcgtq_u32(abs, vdupq_n_u32(0x7F80_0000));
        code = vbslq_u32(is_nan, vdupq_n_u32(c.nan as u32), code);
    }
    let min_normal = vdupq_n_u32(c.min_normal_bits as u32);
    let is_small = vcltq_u32(abs, min_normal);
    // Exact (a power-of-two scale of a value below 2^(1-b), result below 2^m); fcvtnu rounds
    // to nearest even by its encoding, whatever FPCR.RMode says.
    let scaled = vmulq_f32(
        vreinterpretq_f32_u32(vminq_u32(abs, min_normal)),
        vreinterpretq_f32_u32(vdupq_n_u32(c.sub_scale_bits as u32)),
    );
    let code = vbslq_u32(is_small, vcvtnq_u32_f32(scaled), code);
    vorrq_u32(code, vandq_u32(vshrq_n_u32::<24>(bits), vdupq_n_u32(0x80)))
}

/// 16 f32 bit patterns (four vectors, in order) -> 16 codes.
#[target_feature(enable = "neon")]
#[inline]
fn encode_block<const E5: bool, const SAT: bool>(bits: [uint32x4_t; 4]) -> uint8x16_t {
    let lo = vmovn_high_u32(
        vmovn_u32(encode_lanes::<E5, SAT>(bits[0])),
        encode_lanes::<E5, SAT>(bits[1]),
    );
    let hi = vmovn_high_u32(
        vmovn_u32(encode_lanes::<E5, SAT>(bits[2])),
        encode_lanes::<E5, SAT>(bits[3]),
    );
    vmovn_high_u16(vmovn_u16(lo), hi)
}

/// 4 f64 -> 4 f32 bit patterns rounded to odd (`fcvtxn`, rounding fixed by the instruction),
/// with each input's sign copied over so that FPCR.DN's positive default NaN cannot lose it.
#[target_feature(enable = "neon")]
#[inline]
fn f64_to_f32_odd(a: float64x2_t, b: float64x2_t) -> uint32x4_t {
    let y = vreinterpretq_u32_f32(vcvtx_high_f32_f64(vcvtx_f32_f64(a), b));
    let high_words = vshrn_high_n_u64::<32>(
        vshrn_n_u64::<32>(vreinterpretq_u64_f64(a)),
        vreinterpretq_u64_f64(b),
    );
    vbslq_u32(vdupq_n_u32(0x8000_0000), high_words, y)
}

/// 8 f16 bit patterns -> 8 f32 bit patterns (exact), each with its input's sign (FPCR.DN
/// would make a NaN the positive default NaN).
///
/// # Safety
/// Needs NEON. `fcvtl` widening is exact; FPCR.FZ / FZ16 do not apply to half-to-single
/// conversions (Arm ARM, `FPUnpackCV`), and the result is normal or zero, so FZ cannot flush it.
/// FPCR.AHP (the alternative half-precision format) must be clear, as on every Linux, macOS and
/// Windows ABI; the `half` crate's conversions assume the same.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn widen_f16(h: uint16x8_t) -> (uint32x4_t, uint32x4_t) {
    let (lo, hi): (uint32x4_t, uint32x4_t);
    // SAFETY: register-only conversions on NEON registers; no memory access, no flags.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    let sign = vdupq_n_u32(0x8000_0000);
    (
        vbslq_u32(sign, vshll_n_u16::<16>(vget_low_u16(h)), lo),
        vbslq_u32(sign, vshll_high_n_u16::<16>(h), hi),
    )
}

/// 8 f16 bit patterns -> 8 E5M2 codes in 16-bit lanes: round the low byte away.
#[target_feature(enable = "neon")]
#[inline]
fn encode_f16_e5m2_lanes<const SAT: bool>(h: uint16x8_t) -> uint16x8_t {
    let c = FmtConsts::get(true, SAT);
    let abs = vandq_u16(h, vdupq_n_u16(0x7FFF));
    let lsb = vandq_u16(vshrq_n_u16::<8>(abs), vdupq_n_u16(1));
    let rounded = vaddq_u16(vaddq_u16(abs, vdupq_n_u16(0x7F)), lsb);
    let code = vminq_u16(vshrq_n_u16::<8>(rounded), vdupq_n_u16(c.overflow as u16));
    let is_nan = vcgtq_u16(abs, vdupq_n_u16(0x7C00));
    let code = vbslq_u16(is_nan, vdupq_n_u16(c.nan as u16), code);
    vorrq_u16(code, vandq_u16(vshrq_n_u16::<8>(h), vdupq_n_u16(0x80)))
}

/// Scalar-reference tail: elements `start..n`.
#[inline(always)]
fn encode_tail<T: Copy>(
    src: &[T],
    dst: &mut [u8],
    start: usize,
    fmt: Format,
    sat: bool,
    f: fn(T, Format, bool) -> u8,
) {
    for (d, &s) in dst[start..].iter_mut().zip(&src[start..]) {
        *d = f(s, fmt, sat);
    }
}

/// f32, bf16 and f16 (to E4M3) share the f32 body; `$load` reads 16 elements at a pointer as
/// four vectors of f32 bit patterns.
macro_rules! encode_via_f32_kernel {
    ($name:ident, $ty:ty, $scalar:path, |$p:ident| $load:expr) => {
        /// # Safety
        /// Needs the CPU features of this level.
        #[target_feature(enable = "neon")]
        unsafe fn $name<const E5: bool, const SAT: bool>(src: &[$ty], dst: &mut [u8]) {
            let n = src.len().min(dst.len());
            let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
            let mut i = 0;
            while i + BLOCK <= n {
                // SAFETY: i + 16 <= n: the 16 elements read and 16 bytes written are in bounds.
                unsafe {
                    let $p: *const $ty = s.add(i);
                    let bits: [uint32x4_t; 4] = $load;
                    vst1q_u8(d.add(i), encode_block::<E5, SAT>(bits));
                }
                i += BLOCK;
            }
            encode_tail(&src[..n], &mut dst[..n], i, format(E5), SAT, $scalar);
        }
    };
}

encode_via_f32_kernel!(encode_f32_kernel, f32, scalar::encode_f32, |p| {
    let v = vld1q_u32_x4(p.cast());
    [v.0, v.1, v.2, v.3]
});
encode_via_f32_kernel!(encode_bf16_kernel, bf16, scalar::encode_bf16, |p| {
    // bf16 is the top half of an f32: widening is a shift.
    let v = vld1q_u16_x2(p.cast());
    [
        vshll_n_u16::<16>(vget_low_u16(v.0)),
        vshll_high_n_u16::<16>(v.0),
        vshll_n_u16::<16>(vget_low_u16(v.1)),
        vshll_high_n_u16::<16>(v.1),
    ]
});
encode_via_f32_kernel!(encode_f16_e4m3_kernel, f16, scalar::encode_f16, |p| {
    let v = vld1q_u16_x2(p.cast());
    let (a, b) = widen_f16(v.0);
    let (c, d) = widen_f16(v.1);
    [a, b, c, d]
});
encode_via_f32_kernel!(encode_f64_kernel, f64, scalar::encode_f64, |p| {
    let v = vld1q_f64_x4(p);
    let w = vld1q_f64_x4(p.add(8));
    [
        f64_to_f32_odd(v.0, v.1),
        f64_to_f32_odd(v.2, v.3),
        f64_to_f32_odd(w.0, w.1),
        f64_to_f32_odd(w.2, w.3),
    ]
});

/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "neon")]
unsafe fn encode_f16_e5m2_kernel<const SAT: bool>(src: &[f16], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + BLOCK <= n {
        // SAFETY: i + 16 <= n: 16 halves read, 16 bytes written, in bounds.
        unsafe {
            let v = vld1q_u16_x2(s.add(i).cast());
            let a = encode_f16_e5m2_lanes::<SAT>(v.0);
            let b = encode_f16_e5m2_lanes::<SAT>(v.1);
            vst1q_u8(d.add(i), vmovn_high_u16(vmovn_u16(a), b));
        }
        i += BLOCK;
    }
    encode_tail(
        &src[..n],
        &mut dst[..n],
        i,
        Format::E5M2,
        SAT,
        scalar::encode_f16,
    );
}

macro_rules! dispatch_encode {
    ($kernel:ident, $src:expr, $dst:expr, $fmt:expr, $sat:expr) => {
        // SAFETY: this wrapper is only reachable through `codec_kernels()`, which
        // `arch::codec_kernels_for` hands out only when `has_neon()` detected every feature the
        // kernel is compiled with. The kernels touch only min(src.len(), dst.len()) elements.
        unsafe {
            match ($fmt, $sat) {
                (Format::E4M3, false) => $kernel::<false, false>($src, $dst),
                (Format::E4M3, true) => $kernel::<false, true>($src, $dst),
                (Format::E5M2, false) => $kernel::<true, false>($src, $dst),
                (Format::E5M2, true) => $kernel::<true, true>($src, $dst),
            }
        }
    };
}

fn encode_f32(src: &[f32], dst: &mut [u8], fmt: Format, saturate: bool) {
    dispatch_encode!(encode_f32_kernel, src, dst, fmt, saturate)
}

fn encode_f64(src: &[f64], dst: &mut [u8], fmt: Format, saturate: bool) {
    dispatch_encode!(encode_f64_kernel, src, dst, fmt, saturate)
}

fn encode_bf16(src: &[bf16], dst: &mut [u8], fmt: Format, saturate: bool) {
    dispatch_encode!(encode_bf16_kernel, src, dst, fmt, saturate)
}

fn encode_f16(src: &[f16], dst: &mut [u8], fmt: Format, saturate: bool) {
    // SAFETY: as in `dispatch_encode!`: reachable only when `has_neon()` holds; the kernels
    // touch only min(src.len(), dst.len()) elements.
    unsafe {
        match (fmt, saturate) {
            (Format::E5M2, false) => encode_f16_e5m2_kernel::<false>(src, dst),
            (Format::E5M2, true) => encode_f16_e5m2_kernel::<true>(src, dst),
            (Format::E4M3, false) => encode_f16_e4m3_kernel::<false, false>(src, dst),
            (Format::E4M3, true) => encode_f16_e4m3_kernel::<false, true>(src, dst),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// The top 16 bits of one output type's decoded patterns, by magnitude code (0..=127), as
/// 64-byte halves of low and high bytes (the `tbl` / `tbx` operands).
pub(crate) struct SplitTable {
    lo: [[u8; 64]; 2],
    hi: [[u8; 64]; 2],
}

impl SplitTable {
    /// From the top halves of a scalar decode table. Panics (a bug, caught by every test) if a
    /// negative code's pattern is not its magnitude's with the sign bit set or if a pattern has
    /// bits outside its top 16.
    fn new(top16: impl Fn(u8) -> u16) -> SplitTable {
        for c in 0..128u8 {
            assert_eq!(top16(c | 0x80), top16(c) | 0x8000, "code {c:#x}");
        }
        SplitTable::from_magnitudes(top16)
    }

    /// From the 16-bit patterns of the magnitude codes 0..=127 (negative codes are looked up
    /// with the sign bit ORed into the high byte).
    pub(crate) fn from_magnitudes(top16: impl Fn(u8) -> u16) -> SplitTable {
        let mut t = SplitTable {
            lo: [[0; 64]; 2],
            hi: [[0; 64]; 2],
        };
        for c in 0..128u8 {
            let v = top16(c);
            let (half, j) = (usize::from(c) / 64, usize::from(c) % 64);
            t.lo[half][j] = v as u8;
            t.hi[half][j] = (v >> 8) as u8;
        }
        t
    }
}

/// The output types with a table of their own.
#[derive(Clone, Copy)]
pub(crate) enum TableKind {
    F16 = 0,
    /// bfloat16, and float32 (whose patterns are the bfloat16 ones shifted left by 16).
    Bf16F32 = 1,
    F64 = 2,
}

/// The split table of one output type and format.
pub(crate) fn split_table(kind: TableKind, fmt: Format) -> &'static SplitTable {
    static TABLES: OnceLock<Vec<SplitTable>> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        let mut v = Vec::with_capacity(6);
        for f in Format::ALL {
            let (t16, tb, t32, t64) = (
                scalar::tables::f16_table(f),
                scalar::tables::bf16_table(f),
                scalar::tables::f32_table(f),
                scalar::tables::f64_table(f),
            );
            v.push(SplitTable::new(|c| t16[usize::from(c)].to_bits()));
            v.push(SplitTable::new(|c| {
                let bits = t32[usize::from(c)].to_bits();
                assert_eq!(bits & 0xFFFF, 0);
                assert_eq!(tb[usize::from(c)].to_bits(), (bits >> 16) as u16);
                (bits >> 16) as u16
            }));
            v.push(SplitTable::new(|c| {
                let bits = t64[usize::from(c)].to_bits();
                assert_eq!(bits & 0xFFFF_FFFF_FFFF, 0);
                (bits >> 48) as u16
            }));
        }
        v
    });
    let f = match fmt {
        Format::E4M3 => 0,
        Format::E5M2 => 1,
    };
    &tables[3 * f + kind as usize]
}

/// The table in registers.
#[derive(Clone, Copy)]
pub(crate) struct Regs {
    lo: [uint8x16x4_t; 2],
    hi: [uint8x16x4_t; 2],
}

/// # Safety
/// Needs NEON.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn load_table(t: &SplitTable) -> Regs {
    // SAFETY: each half is 64 readable bytes.
    unsafe {
        Regs {
            lo: [vld1q_u8_x4(t.lo[0].as_ptr()), vld1q_u8_x4(t.lo[1].as_ptr())],
            hi: [vld1q_u8_x4(t.hi[0].as_ptr()), vld1q_u8_x4(t.hi[1].as_ptr())],
        }
    }
}

/// 16 codes -> the low and high bytes of their 16-bit output patterns: the magnitude's
/// pattern with the code's sign bit flipped in (for decode tables: set).
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn lookup(r: &Regs, codes: uint8x16_t) -> (uint8x16_t, uint8x16_t) {
    let mag = vandq_u8(codes, vdupq_n_u8(0x7F));
    // 0..=63 -> 64..=127, out of range for a 64-byte `tbx`: those lanes keep the `tbl` result.
    let upper = veorq_u8(mag, vdupq_n_u8(0x40));
    let lo = vqtbx4q_u8(vqtbl4q_u8(r.lo[0], mag), r.lo[1], upper);
    let hi = vqtbx4q_u8(vqtbl4q_u8(r.hi[0], mag), r.hi[1], upper);
    (lo, veorq_u8(hi, vandq_u8(codes, vdupq_n_u8(0x80))))
}

/// Scalar-reference tail from a decode table: elements `start..n`.
#[inline(always)]
fn decode_tail<T: Copy>(src: &[u8], dst: &mut [T], start: usize, table: &[T; 256]) {
    for (d, &s) in dst[start..].iter_mut().zip(&src[start..]) {
        *d = table[usize::from(s)];
    }
}

/// One decode kernel: `$store(d, lo, hi)` writes the 16 elements at `d`.
macro_rules! decode_kernel {
    ($name:ident, $ty:ty, $kind:expr, $table:path, |$d:ident, $lo:ident, $hi:ident| $store:expr) => {
        /// # Safety
        /// Needs the CPU features of this level.
        #[target_feature(enable = "neon")]
        unsafe fn $name(src: &[u8], dst: &mut [$ty], fmt: Format) {
            let n = src.len().min(dst.len());
            let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
            let mut i = 0;
            if n >= BLOCK {
                // SAFETY: NEON is available (caller); the table is 4 x 64 readable bytes.
                let regs = unsafe { load_table(split_table($kind, fmt)) };
                while i + BLOCK <= n {
                    // SAFETY: i + 16 <= n: 16 codes read, 16 elements written, in bounds.
                    unsafe {
                        let ($lo, $hi) = lookup(&regs, vld1q_u8(s.add(i)));
                        let $d: *mut $ty = d.add(i);
                        $store;
                    }
                    i += BLOCK;
                }
            }
            decode_tail(&src[..n], &mut dst[..n], i, $table(fmt));
        }
    };
}

decode_kernel!(
    decode_f16_kernel,
    f16,
    TableKind::F16,
    scalar::tables::f16_table,
    |d, lo, hi| { vst2q_u8(d.cast(), uint8x16x2_t(lo, hi)) }
);
decode_kernel!(
    decode_bf16_kernel,
    bf16,
    TableKind::Bf16F32,
    scalar::tables::bf16_table,
    |d, lo, hi| { vst2q_u8(d.cast(), uint8x16x2_t(lo, hi)) }
);
decode_kernel!(
    decode_f32_kernel,
    f32,
    TableKind::Bf16F32,
    scalar::tables::f32_table,
    |d, lo, hi| {
        let z = vdupq_n_u8(0);
        vst4q_u8(d.cast(), uint8x16x4_t(z, z, lo, hi))
    }
);
decode_kernel!(
    decode_f64_kernel,
    f64,
    TableKind::F64,
    scalar::tables::f64_table,
    |d, lo, hi| {
        // 16-bit patterns, then each moved to the top of a 64-bit lane by two zips with zero.
        let z = vdupq_n_u16(0);
        let h = [
            vreinterpretq_u16_u8(vzip1q_u8(lo, hi)),
            vreinterpretq_u16_u8(vzip2q_u8(lo, hi)),
        ];
        let d = d.cast::<u32>();
        for (j, h) in h.into_iter().enumerate() {
            let w = [
                vreinterpretq_u32_u16(vzip1q_u16(z, h)),
                vreinterpretq_u32_u16(vzip2q_u16(z, h)),
            ];
            for (k, w) in w.into_iter().enumerate() {
                let zw = vdupq_n_u32(0);
                let at = d.add(16 * j + 8 * k);
                vst1q_u32(at, vzip1q_u32(zw, w));
                vst1q_u32(at.add(4), vzip2q_u32(zw, w));
            }
        }
    }
);

macro_rules! dispatch_decode {
    ($kernel:ident, $src:expr, $dst:expr, $fmt:expr) => {
        // SAFETY: this wrapper is only reachable through `codec_kernels()`, which
        // `arch::codec_kernels_for` hands out only when `has_neon()` detected NEON. The kernels
        // touch only min(src.len(), dst.len()) elements.
        unsafe { $kernel($src, $dst, $fmt) }
    };
}

fn decode_f32(src: &[u8], dst: &mut [f32], fmt: Format) {
    dispatch_decode!(decode_f32_kernel, src, dst, fmt)
}

fn decode_f64(src: &[u8], dst: &mut [f64], fmt: Format) {
    dispatch_decode!(decode_f64_kernel, src, dst, fmt)
}

fn decode_f16(src: &[u8], dst: &mut [f16], fmt: Format) {
    dispatch_decode!(decode_f16_kernel, src, dst, fmt)
}

fn decode_bf16(src: &[u8], dst: &mut [bf16], fmt: Format) {
    dispatch_decode!(decode_bf16_kernel, src, dst, fmt)
}
