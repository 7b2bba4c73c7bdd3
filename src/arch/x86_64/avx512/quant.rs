//! AVX-512 (F + BW + VL) kernels of the quantization passes.
//!
//! As in `quant_avx2`: the magnitude maxima and the scaling multiply are the portable bodies
//! compiled with this level's features (512-bit `vpmaxud` / `vmulps`), stochastic rounding is
//! written with intrinsics (mask registers replace the AVX2 blends, `vpmovdb` packs the codes).

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::codec;
use crate::arch::Isa;
use crate::format::Format;
use crate::quant::kernels::{self as k, AbsMaxKeys, QuantKernels};
use crate::quant::stochastic::{self, StochasticParams};

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn absmax_f32_impl(x: &[f32]) -> AbsMaxKeys {
    k::absmax_f32_body(x)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn absmax_f64_impl(x: &[f64]) -> AbsMaxKeys {
    k::absmax_f64_body(x)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn absmax_f16_impl(x: &[f16]) -> AbsMaxKeys {
    k::absmax_f16_body(x)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn absmax_bf16_impl(x: &[bf16]) -> AbsMaxKeys {
    k::absmax_bf16_body(x)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn group_max_f32_impl(row: &[f32], group: usize, out: &mut [u64]) {
    k::group_max_f32_body(row, group, out)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn group_max_f64_impl(row: &[f64], group: usize, out: &mut [u64]) {
    k::group_max_f64_body(row, group, out)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn group_max_f16_impl(row: &[f16], group: usize, out: &mut [u64]) {
    k::group_max_f16_body(row, group, out)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn group_max_bf16_impl(row: &[bf16], group: usize, out: &mut [u64]) {
    k::group_max_bf16_body(row, group, out)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn scale_groups_f32_impl(src: &[f32], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    k::scale_groups_f32_body(src, col0, group, s, dst)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn scale_groups_inplace_f32_impl(buf: &mut [f32], col0: usize, group: usize, s: &[f32]) {
    k::scale_groups_inplace_f32_body(buf, col0, group, s)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn scale_groups_bf16_impl(src: &[bf16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    k::scale_groups_bf16_body(src, col0, group, s, dst)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn scale_groups_f16_impl(src: &[f16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    k::scale_groups_f16_body(src, col0, group, s, dst)
}

/// `codes[j] = encode_sat(f32(src[j]) * s[(col0 + j) / group])`: the widening, one IEEE
/// multiply (under MXCSR, like the separate scaling pass) and the saturating encoding of the
/// codec kernels, on registers.
///
/// # Safety
/// Needs the CPU features of this level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn scale_encode_bf16_kernel<const E5: bool>(
    src: &[bf16],
    col0: usize,
    group: usize,
    s: &[f32],
    dst: &mut [u8],
) {
    let n = src.len().min(dst.len());
    let mut j = 0;
    while j < n {
        let g = (col0 + j) / group.max(1);
        let end = ((g + 1) * group.max(1) - col0).min(n);
        let scale = _mm512_set1_ps(s[g]);
        let scaled = |h: __m256i| -> __m512i {
            let x = _mm512_castsi512_ps(codec::bf16_to_f32_bits(h));
            _mm512_castps_si512(_mm512_mul_ps(x, scale))
        };
        let (p, d) = (src.as_ptr(), dst.as_mut_ptr());
        while j + codec::BLOCK <= end {
            // SAFETY: j + 64 <= end <= n: the 64 elements read and 64 bytes written are in
            // bounds of both slices.
            unsafe {
                let load = |i: usize| scaled(_mm256_loadu_si256(p.add(i).cast()));
                let bits = [load(j), load(j + 16), load(j + 32), load(j + 48)];
                let codes = codec::encode_block::<E5, true>(bits);
                _mm512_storeu_si512(d.add(j).cast(), codes);
            }
            j += codec::BLOCK;
        }
        while j < end {
            let len = (end - j).min(16);
            let k = codec::mask16(len);
            // SAFETY: the masked load and store touch only the `len` elements from j, all in
            // bounds (j + len <= n); masked-off lanes are not accessed (fault-suppressed).
            unsafe {
                let bits = scaled(_mm256_maskz_loadu_epi16(k, p.add(j).cast()));
                let codes = codec::encode_f32_lanes::<E5, true>(bits);
                _mm512_mask_cvtepi32_storeu_epi8(d.add(j).cast(), k, codes);
            }
            j += len;
        }
    }
}

/// `lowbias32` on 16 lanes.
#[inline(always)]
fn mix32x16(x: __m512i) -> __m512i {
    // SAFETY: only reached from `#[target_feature(enable = "avx512f")]` kernels.
    unsafe {
        let mut x = _mm512_xor_si512(x, _mm512_srli_epi32::<16>(x));
        x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb_352d));
        x = _mm512_xor_si512(x, _mm512_srli_epi32::<15>(x));
        x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x846c_a68bu32 as i32));
        _mm512_xor_si512(x, _mm512_srli_epi32::<16>(x))
    }
}

/// The integer form of [`stochastic::round_f32`] on 16 lanes (see its derivation there).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn stochastic_f32_impl(src: &[f32], dst: &mut [u8], p: StochasticParams) {
    let n = src.len().min(dst.len());
    let fmt = p.fmt;
    let m = fmt.mantissa_bits() as i32;
    let emin = fmt.min_normal_exp();
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let k0 = _mm512_set1_epi32(p.key.k0 as i32);
    let one = _mm512_set1_epi32(1);
    let zero = _mm512_setzero_si512();
    let c32 = _mm512_set1_epi32(32);
    let mag = _mm512_set1_epi32(0x7FFF_FFFF);
    let mant_mask = _mm512_set1_epi32(0x7F_FFFF);
    let implicit = _mm512_set1_epi32(0x80_0000);
    let inf = _mm512_set1_epi32(0x7F80_0000);
    let emin_biased = _mm512_set1_epi32(emin + 127);
    let shift_base = _mm512_set1_epi32(23 - m);
    let mv = _mm512_set1_epi32(m);
    let max_biased = _mm512_set1_epi32(fmt.max_exp() + 127);
    let max_code = _mm512_set1_epi32(i32::from(fmt.max_code()));
    let overflow = _mm512_set1_epi32(i32::from(fmt.overflow_code(p.saturate)));
    let nan = _mm512_set1_epi32(i32::from(fmt.nan_code()));
    let sign_bit = _mm512_set1_epi32(0x80);
    // Fast-path constants: D = 23 - m dropped bits; code = (a >> D) - ((emin + 126) << m) + up.
    let drop_shift = _mm512_set1_epi32(23 - m);
    let keep_shift = _mm512_set1_epi32(32 - (23 - m));
    let drop_mask = _mm512_set1_epi32((1 << (23 - m)) - 1);
    let rebase = _mm512_set1_epi32((emin + 126) << m);
    let mut hi_cached = u32::MAX;
    let mut hk = p.key.high_key(hi_cached);
    let mut i = 0;
    while i + 16 <= n {
        let g = p.start + i as u64;
        let lo_idx = g as u32;
        if lo_idx > u32::MAX - 15 {
            // The 16 lanes straddle a 2^32 boundary of the index: do them one by one.
            let q = StochasticParams { start: g, ..p };
            stochastic::encode_f32(&src[i..i + 16], &mut dst[i..i + 16], q);
            i += 16;
            continue;
        }
        let hi = (g >> 32) as u32;
        if hi != hi_cached {
            hi_cached = hi;
            hk = p.key.high_key(hi);
        }
        // SAFETY: i + 16 <= n bounds the 64-byte load and the 16-byte store; avx512f is enabled.
        unsafe {
            let idx = _mm512_add_epi32(_mm512_set1_epi32(lo_idx as i32), lane);
            let h = mix32x16(_mm512_xor_si512(idx, k0));
            let r = mix32x16(_mm512_xor_si512(h, _mm512_set1_epi32(hk as i32)));

            let bits = _mm512_loadu_si512(src.as_ptr().add(i).cast());
            let a = _mm512_and_si512(bits, mag);
            let sign = _mm512_and_si512(_mm512_srli_epi32::<24>(bits), sign_bit);
            let be = _mm512_srli_epi32::<23>(a);
            if _mm512_cmpge_epi32_mask(be, emin_biased) == 0xFFFF {
                // Every lane in the FP8 normal range or above (S = 23 - m): the code is the
                // f32 bits shifted down, rebased, plus the carry of the dropped bits.
                let low = _mm512_and_si512(a, drop_mask);
                let up = _mm512_cmpgt_epu32_mask(low, _mm512_srlv_epi32(r, keep_shift));
                let mut code = _mm512_sub_epi32(_mm512_srlv_epi32(a, drop_shift), rebase);
                code = _mm512_mask_add_epi32(code, up, code, one);
                let over = _mm512_cmpgt_epi32_mask(be, max_biased)
                    | _mm512_cmpgt_epi32_mask(code, max_code);
                code = _mm512_mask_mov_epi32(code, over, overflow);
                code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epi32_mask(a, inf), nan);
                code = _mm512_or_si512(code, sign);
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(code));
                i += 16;
                continue;
            }
            let mant = _mm512_and_si512(a, mant_mask);
            let normal = _mm512_cmpgt_epi32_mask(be, zero);
            let sig = _mm512_mask_or_epi32(mant, normal, mant, implicit);
            let t = _mm512_max_epi32(be, one);
            let below = _mm512_max_epi32(_mm512_sub_epi32(emin_biased, t), zero);
            let s = _mm512_add_epi32(shift_base, below);
            let e_off = _mm512_max_epi32(_mm512_sub_epi32(t, emin_biased), zero);
            // Shift counts >= 32 (including "negative" ones) give 0, as the derivation needs.
            let lo = _mm512_srlv_epi32(sig, s);
            let low = _mm512_and_si512(sig, _mm512_sub_epi32(_mm512_sllv_epi32(one, s), one));
            let up_short =
                _mm512_cmpgt_epu32_mask(low, _mm512_srlv_epi32(r, _mm512_sub_epi32(c32, s)));
            let up_long =
                _mm512_cmpgt_epu32_mask(_mm512_srlv_epi32(low, _mm512_sub_epi32(s, c32)), r);
            let short = _mm512_cmple_epi32_mask(s, c32);
            let up = (up_short & short) | (up_long & !short);
            let mut code = _mm512_add_epi32(_mm512_sllv_epi32(e_off, mv), lo);
            code = _mm512_mask_add_epi32(code, up, code, one);
            let over =
                _mm512_cmpgt_epi32_mask(t, max_biased) | _mm512_cmpgt_epi32_mask(code, max_code);
            code = _mm512_mask_mov_epi32(code, over, overflow);
            code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epi32_mask(a, inf), nan);
            code = _mm512_or_si512(code, sign);
            _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(code));
        }
        i += 16;
    }
    let q = StochasticParams {
        start: p.start + i as u64,
        ..p
    };
    stochastic::encode_f32(&src[i..n], &mut dst[i..n], q);
}

/// 32 lookups per step in the 256-entry table held in eight registers: `vpermi2w` picks from
/// 64 entries with the low 6 bits of each index, bits 6 and 7 choose among the four picks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn lookup_u16_impl(codes: &[u8], table: &[u16; 256], out: &mut [u16]) {
    let n = codes.len().min(out.len());
    // SAFETY: the table is 512 bytes, read as eight 64-byte vectors.
    let t: [__m512i; 8] =
        std::array::from_fn(|k| unsafe { _mm512_loadu_si512(table.as_ptr().add(32 * k).cast()) });
    let (bit6, bit7) = (_mm512_set1_epi16(0x40), _mm512_set1_epi16(0x80));
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n bounds the 32-byte load and the 64-byte store.
        unsafe {
            let idx = _mm512_cvtepu8_epi16(_mm256_loadu_si256(codes.as_ptr().add(i).cast()));
            let q0 = _mm512_permutex2var_epi16(t[0], idx, t[1]);
            let q1 = _mm512_permutex2var_epi16(t[2], idx, t[3]);
            let q2 = _mm512_permutex2var_epi16(t[4], idx, t[5]);
            let q3 = _mm512_permutex2var_epi16(t[6], idx, t[7]);
            let hi6 = _mm512_test_epi16_mask(idx, bit6);
            let lo_half = _mm512_mask_blend_epi16(hi6, q0, q1);
            let hi_half = _mm512_mask_blend_epi16(hi6, q2, q3);
            let r = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(idx, bit7), lo_half, hi_half);
            _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), r);
        }
        i += 32;
    }
    k::lookup_u16_body(&codes[i..n], table, &mut out[i..n]);
}

fn absmax_f32(x: &[f32]) -> AbsMaxKeys {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { absmax_f32_impl(x) }
}
fn absmax_f64(x: &[f64]) -> AbsMaxKeys {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { absmax_f64_impl(x) }
}
fn absmax_f16(x: &[f16]) -> AbsMaxKeys {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { absmax_f16_impl(x) }
}
fn absmax_bf16(x: &[bf16]) -> AbsMaxKeys {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { absmax_bf16_impl(x) }
}
fn group_max_f32(row: &[f32], group: usize, out: &mut [u64]) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { group_max_f32_impl(row, group, out) }
}
fn group_max_f64(row: &[f64], group: usize, out: &mut [u64]) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { group_max_f64_impl(row, group, out) }
}
fn group_max_f16(row: &[f16], group: usize, out: &mut [u64]) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { group_max_f16_impl(row, group, out) }
}
fn group_max_bf16(row: &[bf16], group: usize, out: &mut [u64]) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { group_max_bf16_impl(row, group, out) }
}
fn scale_groups_f32(src: &[f32], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { scale_groups_f32_impl(src, col0, group, s, dst) }
}
fn scale_groups_inplace_f32(buf: &mut [f32], col0: usize, group: usize, s: &[f32]) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { scale_groups_inplace_f32_impl(buf, col0, group, s) }
}
fn scale_groups_bf16(src: &[bf16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { scale_groups_bf16_impl(src, col0, group, s, dst) }
}
fn scale_groups_f16(src: &[f16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { scale_groups_f16_impl(src, col0, group, s, dst) }
}
fn scale_encode_bf16(
    src: &[bf16],
    col0: usize,
    group: usize,
    s: &[f32],
    dst: &mut [u8],
    fmt: Format,
) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level);
    // the kernel touches min(src.len(), dst.len()) elements and reads the scales of the
    // groups they belong to, bounds-checked.
    unsafe {
        match fmt {
            Format::E4M3 => scale_encode_bf16_kernel::<false>(src, col0, group, s, dst),
            Format::E5M2 => scale_encode_bf16_kernel::<true>(src, col0, group, s, dst),
        }
    }
}
fn stochastic_f32(src: &[f32], dst: &mut [u8], p: StochasticParams) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { stochastic_f32_impl(src, dst, p) }
}
fn lookup_u16(codes: &[u8], table: &[u16; 256], out: &mut [u16]) {
    // SAFETY: this table is only handed out when the CPU has avx512f+bw+vl (and avx2 level).
    unsafe { lookup_u16_impl(codes, table, out) }
}

static QUANT: QuantKernels = QuantKernels {
    isa: Isa::Avx512,
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
    scale_encode_bf16: Some(scale_encode_bf16),
    stochastic_f32,
    lookup_u16,
};

/// The quantization kernels of this level. Only call when the CPU has it.
pub fn quant_kernels() -> &'static QuantKernels {
    &QUANT
}
