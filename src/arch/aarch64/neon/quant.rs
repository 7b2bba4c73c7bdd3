//! NEON kernels of the quantization passes.
//!
//! The magnitude maxima and the scaling multiply are the portable bodies of
//! [`crate::quant::kernels`] compiled with this level's features (they vectorise to `umax` /
//! `fmul` on 128-bit registers; the scaled encode then runs the NEON codec); stochastic
//! rounding is written with intrinsics (variable shifts and unsigned compares), as is the
//! dequantization table lookup (`tbl` / `tbx` when the table is sign-symmetric).

use core::arch::aarch64::*;

use half::{bf16, f16};

use crate::arch::Isa;
use crate::quant::kernels::{self as k, AbsMaxKeys, QuantKernels};
use crate::quant::stochastic::{self, StochasticParams};

macro_rules! neon_bodies {
    ($($name:ident($($arg:ident: $t:ty),*) $(-> $ret:ty)? = $body:path;)*) => {
        $(
            fn $name($($arg: $t),*) $(-> $ret)? {
                /// # Safety
                /// Needs NEON.
                #[target_feature(enable = "neon")]
                unsafe fn imp($($arg: $t),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                // SAFETY: this table is only handed out when the CPU has NEON.
                unsafe { imp($($arg),*) }
            }
        )*
    };
}

neon_bodies! {
    absmax_f32(x: &[f32]) -> AbsMaxKeys = k::absmax_f32_body;
    absmax_f64(x: &[f64]) -> AbsMaxKeys = k::absmax_f64_body;
    absmax_f16(x: &[f16]) -> AbsMaxKeys = k::absmax_f16_body;
    absmax_bf16(x: &[bf16]) -> AbsMaxKeys = k::absmax_bf16_body;
    group_max_f32(row: &[f32], group: usize, out: &mut [u64]) = k::group_max_f32_body;
    group_max_f64(row: &[f64], group: usize, out: &mut [u64]) = k::group_max_f64_body;
    group_max_f16(row: &[f16], group: usize, out: &mut [u64]) = k::group_max_f16_body;
    group_max_bf16(row: &[bf16], group: usize, out: &mut [u64]) = k::group_max_bf16_body;
    scale_groups_f32(src: &[f32], col0: usize, group: usize, s: &[f32], dst: &mut [f32])
        = k::scale_groups_f32_body;
    scale_groups_inplace_f32(buf: &mut [f32], col0: usize, group: usize, s: &[f32])
        = k::scale_groups_inplace_f32_body;
    scale_groups_bf16(src: &[bf16], col0: usize, group: usize, s: &[f32], dst: &mut [f32])
        = k::scale_groups_bf16_body;
    scale_groups_f16(src: &[f16], col0: usize, group: usize, s: &[f32], dst: &mut [f32])
        = k::scale_groups_f16_body;
}

/// `lowbias32` on 4 lanes.
#[target_feature(enable = "neon")]
#[inline]
fn mix32x4(x: uint32x4_t) -> uint32x4_t {
    let mut x = veorq_u32(x, vshrq_n_u32::<16>(x));
    x = vmulq_u32(x, vdupq_n_u32(0x7feb_352d));
    x = veorq_u32(x, vshrq_n_u32::<15>(x));
    x = vmulq_u32(x, vdupq_n_u32(0x846c_a68b));
    veorq_u32(x, vshrq_n_u32::<16>(x))
}

/// `x >> count` per lane for counts in `-64..=i32::MAX`, 0 for counts of 32 and more (as
/// `vpsrlvd`); a negative count shifts left, which only lanes whose result is discarded see.
#[target_feature(enable = "neon")]
#[inline]
fn srl(x: uint32x4_t, count: int32x4_t) -> uint32x4_t {
    vshlq_u32(x, vnegq_s32(vminq_s32(count, vdupq_n_s32(64))))
}

/// `x << count` per lane, 0 for counts of 32 and more (`count >= 0`).
#[target_feature(enable = "neon")]
#[inline]
fn sll(x: uint32x4_t, count: int32x4_t) -> uint32x4_t {
    vshlq_u32(x, vminq_s32(count, vdupq_n_s32(64)))
}

/// The integer form of [`stochastic::round_f32`] on 4 lanes (see its derivation there); the
/// same operations as the AVX2 kernel.
///
/// # Safety
/// Needs NEON.
#[target_feature(enable = "neon")]
unsafe fn stochastic_f32_impl(src: &[f32], dst: &mut [u8], p: StochasticParams) {
    let n = src.len().min(dst.len());
    let fmt = p.fmt;
    let m = fmt.mantissa_bits() as i32;
    let emin = fmt.min_normal_exp();
    let lane_init: [u32; 4] = [0, 1, 2, 3];
    // SAFETY: four readable u32.
    let lane = unsafe { vld1q_u32(lane_init.as_ptr()) };
    let k0 = vdupq_n_u32(p.key.k0);
    let one = vdupq_n_s32(1);
    let zero = vdupq_n_s32(0);
    let c32 = vdupq_n_s32(32);
    let mag = vdupq_n_u32(0x7FFF_FFFF);
    let mant_mask = vdupq_n_u32(0x7F_FFFF);
    let implicit = vdupq_n_u32(0x80_0000);
    let inf = vdupq_n_u32(0x7F80_0000);
    let emin_biased = vdupq_n_s32(emin + 127);
    let shift_base = vdupq_n_s32(23 - m);
    let mv = vdupq_n_s32(m);
    let max_biased = vdupq_n_s32(fmt.max_exp() + 127);
    let max_code = vdupq_n_s32(i32::from(fmt.max_code()));
    let overflow = vdupq_n_u32(u32::from(fmt.overflow_code(p.saturate)));
    let nan = vdupq_n_u32(u32::from(fmt.nan_code()));
    let sign_bit = vdupq_n_u32(0x80);
    let drop_mask = vdupq_n_u32((1 << (23 - m)) - 1);
    let rebase = vdupq_n_s32((emin + 126) << m);
    let mut hi_cached = u32::MAX;
    let mut hk = p.key.high_key(hi_cached);
    let mut i = 0;
    while i + 4 <= n {
        let g = p.start + i as u64;
        let lo_idx = g as u32;
        if lo_idx > u32::MAX - 3 {
            // The 4 lanes straddle a 2^32 boundary of the index: do them one by one.
            let q = StochasticParams { start: g, ..p };
            stochastic::encode_f32(&src[i..i + 4], &mut dst[i..i + 4], q);
            i += 4;
            continue;
        }
        let hi = (g >> 32) as u32;
        if hi != hi_cached {
            hi_cached = hi;
            hk = p.key.high_key(hi);
        }
        let idx = vaddq_u32(vdupq_n_u32(lo_idx), lane);
        let h = mix32x4(veorq_u32(idx, k0));
        let r = mix32x4(veorq_u32(h, vdupq_n_u32(hk)));
        // SAFETY: i + 4 <= n bounds the 16-byte load.
        let bits = unsafe { vld1q_u32(src.as_ptr().add(i).cast()) };
        let a = vandq_u32(bits, mag);
        let sign = vandq_u32(vshrq_n_u32::<24>(bits), sign_bit);
        let be = vreinterpretq_s32_u32(vshrq_n_u32::<23>(a));
        let below_range = vcltq_s32(be, emin_biased);
        let (code, over) = if vmaxvq_u32(below_range) == 0 {
            // Every lane in the FP8 normal range or above: the f32 bits shifted down,
            // rebased, plus the carry of the dropped bits.
            let low = vandq_u32(a, drop_mask);
            let up = vcgtq_u32(low, srl(r, vdupq_n_s32(32 - (23 - m))));
            let code = vsubq_s32(vreinterpretq_s32_u32(srl(a, shift_base)), rebase);
            let code = vsubq_s32(code, vreinterpretq_s32_u32(up));
            let over = vorrq_u32(vcgtq_s32(be, max_biased), vcgtq_s32(code, max_code));
            (code, over)
        } else {
            let mant = vandq_u32(a, mant_mask);
            let sig = vorrq_u32(mant, vandq_u32(vcgtq_s32(be, zero), implicit));
            let t = vmaxq_s32(be, one);
            let below = vmaxq_s32(vsubq_s32(emin_biased, t), zero);
            let s = vaddq_s32(shift_base, below);
            let e_off = vmaxq_s32(vsubq_s32(t, emin_biased), zero);
            let lo = srl(sig, s);
            let low = vandq_u32(sig, vsubq_u32(sll(vdupq_n_u32(1), s), vdupq_n_u32(1)));
            let up_short = vcgtq_u32(low, srl(r, vsubq_s32(c32, s)));
            let up_long = vcgtq_u32(srl(low, vsubq_s32(s, c32)), r);
            let short = vcltq_s32(s, vaddq_s32(c32, one));
            let up = vbslq_u32(short, up_short, up_long);
            let code = vaddq_s32(
                vreinterpretq_s32_u32(sll(vreinterpretq_u32_s32(e_off), mv)),
                vreinterpretq_s32_u32(lo),
            );
            let code = vsubq_s32(code, vreinterpretq_s32_u32(up));
            let over = vorrq_u32(vcgtq_s32(t, max_biased), vcgtq_s32(code, max_code));
            (code, over)
        };
        let code = vbslq_u32(over, overflow, vreinterpretq_u32_s32(code));
        let code = vbslq_u32(vcgtq_u32(a, inf), nan, code);
        let code = vorrq_u32(code, sign);
        let bytes = vmovn_u16(vcombine_u16(vmovn_u32(code), vdup_n_u16(0)));
        // SAFETY: i + 4 <= n: four writable bytes, at any alignment (`vst1_lane_u32` would be a
        // typed u32 store, which needs 4-byte alignment a byte slice does not have).
        unsafe {
            std::ptr::write_unaligned(
                dst.as_mut_ptr().add(i).cast::<u32>(),
                vget_lane_u32::<0>(vreinterpret_u32_u8(bytes)),
            )
        };
        i += 4;
    }
    let q = StochasticParams {
        start: p.start + i as u64,
        ..p
    };
    stochastic::encode_f32(&src[i..n], &mut dst[i..n], q);
}

fn stochastic_f32(src: &[f32], dst: &mut [u8], p: StochasticParams) {
    // SAFETY: this table is only handed out when the CPU has NEON.
    unsafe { stochastic_f32_impl(src, dst, p) }
}

/// `out[j] = table[codes[j]]`. A sign-symmetric table (`table[c | 0x80] == table[c] ^
/// 0x8000`, as every dequantization table of finite scales is) fits 2 x 128 bytes in 16
/// registers and is looked up with `tbl` / `tbx`, 16 codes per step; any other table takes
/// the portable loop.
fn lookup_u16(codes: &[u8], table: &[u16; 256], out: &mut [u16]) {
    let n = codes.len().min(out.len());
    let symmetric = (0..128).all(|c| table[c | 0x80] == table[c] ^ 0x8000);
    if n < 256 || !symmetric {
        return k::lookup_u16_body(codes, table, out);
    }
    // SAFETY: this table is only handed out when the CPU has NEON; the kernel touches only the
    // first n elements of each slice.
    unsafe { lookup_u16_symmetric(&codes[..n], table, &mut out[..n]) }
}

/// # Safety
/// Needs NEON; `codes.len() == out.len()`; `table` sign-symmetric.
#[target_feature(enable = "neon")]
unsafe fn lookup_u16_symmetric(codes: &[u8], table: &[u16; 256], out: &mut [u16]) {
    use crate::arch::aarch64::neon::codec::{load_table, lookup, SplitTable};
    let split = SplitTable::from_magnitudes(|c| table[usize::from(c)]);
    // SAFETY: NEON is available (caller); the table is 4 x 64 readable bytes.
    let regs = unsafe { load_table(&split) };
    let n = codes.len();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: 16 codes read and 16 halves written, in bounds.
        unsafe {
            let (lo, hi) = lookup(&regs, vld1q_u8(codes.as_ptr().add(i)));
            vst2q_u8(out.as_mut_ptr().add(i).cast(), uint8x16x2_t(lo, hi));
        }
        i += 16;
    }
    k::lookup_u16_body(&codes[i..], table, &mut out[i..]);
}

static QUANT: QuantKernels = QuantKernels {
    isa: Isa::Neon,
    absmax_f32,
    absmax_f64,
    absmax_f16,
    absmax_bf16,
    group_max_f32,
    group_max_f64,
    group_max_f16,
    group_max_bf16,
    scale_groups_f32,
    scale_groups_inplace_f32,
    scale_groups_bf16,
    scale_groups_f16,
    scale_encode_bf16: None,
    stochastic_f32,
    lookup_u16,
};

/// The quantization kernels of this level. Only call when the CPU has it (`has_neon()`).
pub fn quant_kernels() -> &'static QuantKernels {
    &QUANT
}
