//! AVX2 (+FMA +F16C) kernels of the quantization passes.
//!
//! The magnitude maxima and the scaling multiply are the portable bodies of
//! [`crate::quant::kernels`] compiled with this level's features (they vectorise to
//! `vpmaxud` / `vmulps` on 256-bit registers); stochastic rounding is written with intrinsics
//! because its variable shifts and unsigned compares do not vectorise on their own.

use std::arch::x86_64::*;

use half::{bf16, f16};

use crate::arch::Isa;
use crate::quant::kernels::{self as k, AbsMaxKeys, QuantKernels};
use crate::quant::stochastic::{self, StochasticParams};

#[target_feature(enable = "avx2,fma,f16c")]
fn absmax_f32_impl(x: &[f32]) -> AbsMaxKeys {
    k::absmax_f32_body(x)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn absmax_f64_impl(x: &[f64]) -> AbsMaxKeys {
    k::absmax_f64_body(x)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn absmax_f16_impl(x: &[f16]) -> AbsMaxKeys {
    k::absmax_f16_body(x)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn absmax_bf16_impl(x: &[bf16]) -> AbsMaxKeys {
    k::absmax_bf16_body(x)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn group_max_f32_impl(row: &[f32], group: usize, out: &mut [u64]) {
    k::group_max_f32_body(row, group, out)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn group_max_f64_impl(row: &[f64], group: usize, out: &mut [u64]) {
    k::group_max_f64_body(row, group, out)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn group_max_f16_impl(row: &[f16], group: usize, out: &mut [u64]) {
    k::group_max_f16_body(row, group, out)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn group_max_bf16_impl(row: &[bf16], group: usize, out: &mut [u64]) {
    k::group_max_bf16_body(row, group, out)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_groups_f32_impl(src: &[f32], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    k::scale_groups_f32_body(src, col0, group, s, dst)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_groups_inplace_f32_impl(buf: &mut [f32], col0: usize, group: usize, s: &[f32]) {
    k::scale_groups_inplace_f32_body(buf, col0, group, s)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_groups_bf16_impl(src: &[bf16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    k::scale_groups_bf16_body(src, col0, group, s, dst)
}
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_groups_f16_impl(src: &[f16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    k::scale_groups_f16_body(src, col0, group, s, dst)
}

/// `lowbias32` on 8 lanes.
#[inline(always)]
fn mix32x8(x: __m256i) -> __m256i {
    // SAFETY: only reached from `#[target_feature(enable = "avx2")]` kernels.
    unsafe {
        let mut x = _mm256_xor_si256(x, _mm256_srli_epi32::<16>(x));
        x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7feb_352d));
        x = _mm256_xor_si256(x, _mm256_srli_epi32::<15>(x));
        x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x846c_a68bu32 as i32));
        _mm256_xor_si256(x, _mm256_srli_epi32::<16>(x))
    }
}

/// Unsigned `a > b` per 32-bit lane (all-ones / zero).
#[inline(always)]
fn gt_u32(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: only reached from `#[target_feature(enable = "avx2")]` kernels.
    unsafe {
        let bias = _mm256_set1_epi32(i32::MIN);
        _mm256_cmpgt_epi32(_mm256_xor_si256(a, bias), _mm256_xor_si256(b, bias))
    }
}

/// Store 8 x u32 lanes (each < 256) as 8 bytes at `dst`.
///
/// # Safety
/// `dst` must be valid for 8 bytes of writes; AVX2 must be enabled in the caller.
#[inline(always)]
unsafe fn store_codes(dst: *mut u8, code: __m256i) {
    // SAFETY: the caller guarantees 8 writable bytes and AVX2.
    unsafe {
        let p16 = _mm256_packus_epi32(code, code);
        let p8 = _mm256_packus_epi16(p16, p16);
        let bytes = _mm_unpacklo_epi32(
            _mm256_castsi256_si128(p8),
            _mm256_extracti128_si256::<1>(p8),
        );
        _mm_storel_epi64(dst.cast(), bytes);
    }
}

/// The integer form of [`stochastic::round_f32`] on 8 lanes (see its derivation there).
#[target_feature(enable = "avx2,fma,f16c")]
fn stochastic_f32_impl(src: &[f32], dst: &mut [u8], p: StochasticParams) {
    let n = src.len().min(dst.len());
    let fmt = p.fmt;
    let m = fmt.mantissa_bits() as i32;
    let emin = fmt.min_normal_exp();
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let k0 = _mm256_set1_epi32(p.key.k0 as i32);
    let one = _mm256_set1_epi32(1);
    let zero = _mm256_setzero_si256();
    let c32 = _mm256_set1_epi32(32);
    let mag = _mm256_set1_epi32(0x7FFF_FFFF);
    let mant_mask = _mm256_set1_epi32(0x7F_FFFF);
    let implicit = _mm256_set1_epi32(0x80_0000);
    let inf = _mm256_set1_epi32(0x7F80_0000);
    let emin_biased = _mm256_set1_epi32(emin + 127);
    let shift_base = _mm256_set1_epi32(23 - m);
    let mv = _mm256_set1_epi32(m);
    let max_biased = _mm256_set1_epi32(fmt.max_exp() + 127);
    let max_code = _mm256_set1_epi32(i32::from(fmt.max_code()));
    let overflow = _mm256_set1_epi32(i32::from(fmt.overflow_code(p.saturate)));
    let nan = _mm256_set1_epi32(i32::from(fmt.nan_code()));
    let sign_bit = _mm256_set1_epi32(0x80);
    // Fast-path constants: D = 23 - m dropped bits; code = (a >> D) - ((emin + 126) << m) + up.
    let drop_shift = _mm256_set1_epi32(23 - m);
    let keep_shift = _mm256_set1_epi32(32 - (23 - m));
    let drop_mask = _mm256_set1_epi32((1 << (23 - m)) - 1);
    let rebase = _mm256_set1_epi32((emin + 126) << m);
    let mut hi_cached = u32::MAX;
    let mut hk = p.key.high_key(hi_cached);
    let mut i = 0;
    while i + 8 <= n {
        let g = p.start + i as u64;
        let lo_idx = g as u32;
        if lo_idx > u32::MAX - 7 {
            // The 8 lanes straddle a 2^32 boundary of the index: do them one by one.
            let q = StochasticParams { start: g, ..p };
            stochastic::encode_f32(&src[i..i + 8], &mut dst[i..i + 8], q);
            i += 8;
            continue;
        }
        let hi = (g >> 32) as u32;
        if hi != hi_cached {
            hi_cached = hi;
            hk = p.key.high_key(hi);
        }
        // SAFETY: i + 8 <= n bounds the 32-byte load and the 8-byte store; avx2 is enabled.
        unsafe {
            let idx = _mm256_add_epi32(_mm256_set1_epi32(lo_idx as i32), lane);
            let h = mix32x8(_mm256_xor_si256(idx, k0));
            let r = mix32x8(_mm256_xor_si256(h, _mm256_set1_epi32(hk as i32)));

            let bits = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            let a = _mm256_and_si256(bits, mag);
            let sign = _mm256_and_si256(_mm256_srli_epi32::<24>(bits), sign_bit);
            let be = _mm256_srli_epi32::<23>(a);
            let below_range = _mm256_cmpgt_epi32(emin_biased, be);
            if _mm256_testz_si256(below_range, below_range) == 1 {
                // Every lane in the FP8 normal range or above (S = 23 - m): the code is the
                // f32 bits shifted down, rebased, plus the carry of the dropped bits.
                let low = _mm256_and_si256(a, drop_mask);
                let up = gt_u32(low, _mm256_srlv_epi32(r, keep_shift));
                let mut code = _mm256_sub_epi32(_mm256_srlv_epi32(a, drop_shift), rebase);
                code = _mm256_sub_epi32(code, up);
                let over = _mm256_or_si256(
                    _mm256_cmpgt_epi32(be, max_biased),
                    _mm256_cmpgt_epi32(code, max_code),
                );
                code = _mm256_blendv_epi8(code, overflow, over);
                code = _mm256_blendv_epi8(code, nan, _mm256_cmpgt_epi32(a, inf));
                code = _mm256_or_si256(code, sign);
                store_codes(dst.as_mut_ptr().add(i), code);
                i += 8;
                continue;
            }
            let mant = _mm256_and_si256(a, mant_mask);
            let sig = _mm256_or_si256(
                mant,
                _mm256_and_si256(_mm256_cmpgt_epi32(be, zero), implicit),
            );
            let t = _mm256_max_epi32(be, one);
            // e - ex (how far below the FP8 normal range), S, and e - emin.
            let below = _mm256_max_epi32(_mm256_sub_epi32(emin_biased, t), zero);
            let s = _mm256_add_epi32(shift_base, below);
            let e_off = _mm256_max_epi32(_mm256_sub_epi32(t, emin_biased), zero);
            // Shift counts >= 32 (including "negative" ones) give 0, as the derivation needs.
            let lo = _mm256_srlv_epi32(sig, s);
            let low = _mm256_and_si256(sig, _mm256_sub_epi32(_mm256_sllv_epi32(one, s), one));
            let up_short = gt_u32(low, _mm256_srlv_epi32(r, _mm256_sub_epi32(c32, s)));
            let up_long = gt_u32(_mm256_srlv_epi32(low, _mm256_sub_epi32(s, c32)), r);
            let short = _mm256_cmpgt_epi32(_mm256_add_epi32(c32, one), s);
            let up = _mm256_blendv_epi8(up_long, up_short, short);
            let mut code = _mm256_add_epi32(_mm256_sllv_epi32(e_off, mv), lo);
            code = _mm256_sub_epi32(code, up); // up is -1 where rounding up
            let over = _mm256_or_si256(
                _mm256_cmpgt_epi32(t, max_biased),
                _mm256_cmpgt_epi32(code, max_code),
            );
            code = _mm256_blendv_epi8(code, overflow, over);
            code = _mm256_blendv_epi8(code, nan, _mm256_cmpgt_epi32(a, inf));
            code = _mm256_or_si256(code, sign);
            store_codes(dst.as_mut_ptr().add(i), code);
        }
        i += 8;
    }
    let q = StochasticParams {
        start: p.start + i as u64,
        ..p
    };
    stochastic::encode_f32(&src[i..n], &mut dst[i..n], q);
}

fn absmax_f32(x: &[f32]) -> AbsMaxKeys {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { absmax_f32_impl(x) }
}
fn absmax_f64(x: &[f64]) -> AbsMaxKeys {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { absmax_f64_impl(x) }
}
fn absmax_f16(x: &[f16]) -> AbsMaxKeys {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { absmax_f16_impl(x) }
}
fn absmax_bf16(x: &[bf16]) -> AbsMaxKeys {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { absmax_bf16_impl(x) }
}
fn group_max_f32(row: &[f32], group: usize, out: &mut [u64]) {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { group_max_f32_impl(row, group, out) }
}
fn group_max_f64(row: &[f64], group: usize, out: &mut [u64]) {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { group_max_f64_impl(row, group, out) }
}
fn group_max_f16(row: &[f16], group: usize, out: &mut [u64]) {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { group_max_f16_impl(row, group, out) }
}
fn group_max_bf16(row: &[bf16], group: usize, out: &mut [u64]) {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { group_max_bf16_impl(row, group, out) }
}
fn scale_groups_f32(src: &[f32], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { scale_groups_f32_impl(src, col0, group, s, dst) }
}
fn scale_groups_inplace_f32(buf: &mut [f32], col0: usize, group: usize, s: &[f32]) {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { scale_groups_inplace_f32_impl(buf, col0, group, s) }
}
fn scale_groups_bf16(src: &[bf16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { scale_groups_bf16_impl(src, col0, group, s, dst) }
}
fn scale_groups_f16(src: &[f16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { scale_groups_f16_impl(src, col0, group, s, dst) }
}
fn stochastic_f32(src: &[f32], dst: &mut [u8], p: StochasticParams) {
    // SAFETY: this table is only handed out when the CPU has avx2+fma+f16c.
    unsafe { stochastic_f32_impl(src, dst, p) }
}

static QUANT: QuantKernels = QuantKernels {
    isa: Isa::Avx2,
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
    lookup_u16: crate::arch::portable::quant::lookup_u16_portable,
};

/// The quantization kernels of this level. Only call when the CPU has it.
pub fn quant_kernels() -> &'static QuantKernels {
    &QUANT
}
