//! AVX-512 F GEMM microkernel (float32 FMA) and the AVX-512 BW packing of FP8 code pairs to
//! bfloat16 for the [`crate::arch::x86_64::avx512bf16::gemm`] kernel.
//!
//! The x86-64 microkernels side by side. Register blocking (row-major C, vectors along N, A broadcast from the packed panel):
//!
//! | kernel | MR x NR | accumulators | per K step |
//! |---|---|---|---|
//! | AVX2 f32 | 6 x 16 | 12 ymm | 2 B loads, 6 broadcasts, 12 FMA |
//! | AVX-512 f32 | 14 x 32 | 28 zmm | 2 B loads, 14 broadcasts, 28 FMA |
//! | AVX-512 BF16 | 14 x 32 | 28 zmm | per K *pair*: 2 B loads, 14 broadcasts, 28 `vdpbf16ps` |
//!
//! Cache blocking (the loop nest of [`crate::gemm`]: A micro-panel in L1, B block in L2) was
//! measured on the Intel Xeon (48 KiB L1D, 2 MiB L2 per core), one thread, float32 x E4M3 at
//! m = 128 / 512 / 2048 and k = n = 4096, against numpy's float32 matmul in the same run:
//! KC = 512 with NC = 384 (a 768 KiB B block) was best or level with KC 256-768 and NC
//! 256-1024 (2048: 0.95-1.00x numpy, against 0.94-0.96x for KC 256-384 / NC 640-1024).
//! The bfloat16 kernel keeps KC = 768 (the AMD Zen 4 figure of the previous nest, 21 KiB of
//! A micro-panel) with a B block sized for Zen 4's 1 MiB L2 (768 x 384 x 2 bytes).

#[allow(clippy::wildcard_imports)]
use std::arch::x86_64::*;

use crate::arch::x86_64::avx2::gemm::prefetch_c;
use crate::arch::x86_64::avx512::gemv::{
    decode16_e4m3, decode16_e5m2, decode64_e4m3_table, E4m3Bf16Tables, TableRegs,
};
use crate::format::Format;
use crate::gemm::driver::{KLoop, Micro};

/// AVX-512 float32 kernel family.
pub(crate) static GEMM: Micro<f32> = Micro {
    mr: 14,
    nr: 32,
    a_splat: 1,
    kc: 512,
    mc: 14 * 292,
    nc: 384,
    func: avx512_f32_14x32,
    rows: Some(avx512_f32_rows),
};
/// Scale the (up to) 14 x 32 accumulator tile and store (or accumulate) it into C.
///
/// # Safety
/// AVX-512 F available; `sa` holds `acc.len()` floats, `sb` 32; C is an `acc.len()` x 32 tile.
#[inline(always)]
pub(crate) unsafe fn store_14x32(
    acc: &[[__m512; 2]],
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    // SAFETY: pointer accesses within the caller's guarantees.
    unsafe {
        let s0 = _mm512_loadu_ps(sb);
        let s1 = _mm512_loadu_ps(sb.add(16));
        for (i, row) in acc.iter().enumerate() {
            let si = _mm512_set1_ps(*sa.add(i));
            let cp = c.offset(i as isize * ldc);
            let t0 = _mm512_mul_ps(row[0], s0);
            let t1 = _mm512_mul_ps(row[1], s1);
            if first {
                _mm512_storeu_ps(cp, _mm512_mul_ps(t0, si));
                _mm512_storeu_ps(cp.add(16), _mm512_mul_ps(t1, si));
            } else {
                _mm512_storeu_ps(cp, _mm512_fmadd_ps(t0, si, _mm512_loadu_ps(cp)));
                _mm512_storeu_ps(
                    cp.add(16),
                    _mm512_fmadd_ps(t1, si, _mm512_loadu_ps(cp.add(16))),
                );
            }
        }
    }
}
/// # Safety
/// AVX-512 F available; `a` holds `steps * nblk * 14` floats, `b` `steps * nblk * 32`, `sa` /
/// `sb` 14 / 32 floats at each block's offset; C is a 14 x 32 tile with row stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_f32_14x32(
    kl: KLoop,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe { f32_rows::<14>(kl, a, b, c, ldc, first, sa, sb) }
}

/// The first `rows` (1..=13) rows of the 14 x 32 kernel's tile: the same operations per
/// output element, so a row's result does not depend on the tile it falls in.
///
/// # Safety
/// As [`avx512_f32_14x32`], with C a `rows` x 32 tile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_f32_rows(
    rows: usize,
    kl: KLoop,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    macro_rules! go {
        ($($r:literal)*) => {
            match rows {
                // SAFETY: forwarded from the caller.
                $($r => unsafe { f32_rows::<$r>(kl, a, b, c, ldc, first, sa, sb) },)*
                _ => unreachable!("a partial tile has 1 to 13 rows"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12 13)
}

/// The float32 kernel on the first `R` rows of a 14-row A micro-panel.
///
/// # Safety
/// As [`avx512_f32_rows`], with AVX-512 F enabled by the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn f32_rows<const R: usize>(
    kl: KLoop,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: isize,
    first: bool,
    sa: *const f32,
    sb: *const f32,
) {
    const MR: usize = 14;
    // SAFETY: every pointer access stays within the lengths the caller guarantees.
    unsafe {
        prefetch_c(c, ldc, R, first);
        let (mut a, mut b) = (a, b);
        for t in 0..kl.nblk {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for _ in 0..kl.steps {
                let b0 = _mm512_loadu_ps(b);
                let b1 = _mm512_loadu_ps(b.add(16));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(*a.add(i));
                    row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
                }
                a = a.add(MR);
                b = b.add(32);
            }
            let (sa, sb) = (sa.add(t * kl.sa_stride), sb.add(t * kl.sb_stride));
            store_14x32(&acc, c, ldc, first && t == 0, sa, sb);
        }
    }
}
/// Pack 32 columns of two K rows of FP8 codes (`lo`, `hi`) into 32 bfloat16 pairs at `out`
/// (`out[2w] = table[lo[w]]`, `out[2w+1] = table[hi[w]]`).
///
/// The 128 magnitudes of `table` sit in four zmm registers; `vpermt2w` looks up 64 of them
/// per instruction (index bits 0..5), bit 6 picks the half, and the sign bit is ORed back
/// (for both formats `table[c | 0x80] = table[c] | 0x8000`, NaN and zero included, as the
/// packing tests check against the scalar path).
///
/// # Safety
/// AVX-512 F + BW available; `lo` and `hi` hold 32 bytes, `out` 64 `u16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn pack_pairs32(
    lo: *const u8,
    hi: *const u8,
    table: &[half::bf16; 256],
    out: *mut u16,
) {
    // SAFETY: the loads read 4 x 64 bytes of the table and 32 bytes of each row, the stores
    // write 128 bytes at `out`, all inside what the caller guarantees.
    unsafe {
        let tp = table.as_ptr().cast::<u16>();
        let t0 = _mm512_loadu_si512(tp.cast());
        let t1 = _mm512_loadu_si512(tp.add(32).cast());
        let t2 = _mm512_loadu_si512(tp.add(64).cast());
        let t3 = _mm512_loadu_si512(tp.add(96).cast());
        let decode = |row: *const u8| {
            let w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(row.cast()));
            let low = _mm512_permutex2var_epi16(t0, w, t1);
            let high = _mm512_permutex2var_epi16(t2, w, t3);
            let upper = _mm512_test_epi16_mask(w, _mm512_set1_epi16(0x40));
            let v = _mm512_mask_blend_epi16(upper, low, high);
            let sign = _mm512_slli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x80)), 8);
            _mm512_or_si512(v, sign)
        };
        let (r0, r1) = (decode(lo), decode(hi));
        // unpack interleaves within 128-bit lanes: lane L of `ul` holds columns 8L..8L+3,
        // of `uh` columns 8L+4..8L+7; the qword permutes restore column order.
        let ul = _mm512_unpacklo_epi16(r0, r1);
        let uh = _mm512_unpackhi_epi16(r0, r1);
        let first = _mm512_permutex2var_epi64(ul, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), uh);
        let second =
            _mm512_permutex2var_epi64(ul, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), uh);
        _mm512_storeu_si512(out.cast(), first);
        _mm512_storeu_si512(out.add(32).cast(), second);
    }
}

/// Pack FP8 codes whose panel dimension is contiguous (`B` stored `[in, out]`: row `p` of a
/// panel is `width` consecutive bytes at `rows + p * ks`) into float32 panels of width 32,
/// 16 codes per decode in registers (exact, NaN and subnormals included; see
/// [`crate::arch::x86_64::avx512::gemv`]): measured at 128 x 4096 x 4096 `[in, out]`
/// float32 x E4M3, packing took a third of the time with the table lookups.
/// Columns past `width` are zero.
///
/// # Safety
/// AVX-512 F + BW + VL available; `rows + p * ks + w` readable for `p < kc`, `w < width`;
/// `out` holds `ceil(width / 32) * kc * 32` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn pack_fp8_rows_f32x32(
    rows: *const u8,
    ks: isize,
    kc: usize,
    width: usize,
    fmt: Format,
    out: *mut f32,
) {
    const PANEL: usize = 32;
    // SAFETY: loads are masked to the `width` columns of each of the kc rows, stores stay
    // inside the panels.
    unsafe {
        for (q, w0) in (0..width).step_by(PANEL).enumerate() {
            let wn = PANEL.min(width - w0);
            let mask = |half: usize| {
                let n = wn.saturating_sub(16 * half).min(16);
                if n == 16 {
                    u16::MAX
                } else {
                    (1u16 << n) - 1
                }
            };
            let (m0, m1) = (mask(0), mask(1));
            let panel = out.add(q * kc * PANEL);
            for p in 0..kc {
                let row = rows.offset(p as isize * ks).add(w0);
                let b0 = _mm_maskz_loadu_epi8(m0, row.cast());
                // May point past the row when m1 is empty (no byte is read): wrapping.
                let b1 = _mm_maskz_loadu_epi8(m1, row.wrapping_add(16).cast());
                let (d0, d1) = match fmt {
                    Format::E5M2 => (decode16_e5m2(b0), decode16_e5m2(b1)),
                    Format::E4M3 => {
                        let s = _mm512_set1_ps(256.0);
                        (
                            _mm512_mul_ps(decode16_e4m3(b0), s),
                            _mm512_mul_ps(decode16_e4m3(b1), s),
                        )
                    }
                };
                _mm512_storeu_ps(panel.add(p * PANEL), d0);
                _mm512_storeu_ps(panel.add(p * PANEL + 16), d1);
            }
        }
    }
}

/// The `vpermb` index of [`pack_klines_e4m3_table`]: it takes a 32-bit-transposed block
/// (byte `4 e + s`: line `e`, K step `s` of 4) to the order in which
/// [`decode64_e4m3_table`] leaves K step `s` of lines 0..16 as its vector `s`: the code it puts
/// at element `4 L + d` of vector `v` is byte `16 L + 8 (v / 2) + 2 d + v % 2`
/// ([`table_position`]).
const E4M3_STEP_MAJOR: [u8; 64] = {
    let mut idx = [0u8; 64];
    let mut v = 0;
    while v < 4 {
        let mut e = 0;
        while e < 16 {
            let (lane, d) = (e / 4, e % 4);
            idx[16 * lane + 8 * (v / 2) + 2 * d + v % 2] = (4 * e + v) as u8;
            e += 1;
        }
        v += 1;
    }
    idx
};

/// [`pack_klines_f32`] for E4M3 lines on CPUs with AVX-512 VBMI: blocks of 16 lines x 64 K
/// steps are transposed as 32-bit groups of 4 codes (the same 64 shuffles as a 16 x 16 float
/// transpose, for 4x the elements), one `vpermb` per 4 K steps puts each step's 16 codes where
/// [`decode64_e4m3_table`] leaves them as one vector, and the table decode gives the exact
/// float32 values (NaN codes to NaN). Measured on the Intel Xeon (one thread, 32 x 4096 x 4096
/// float32 x E4M3 `[out, in]`): the float path transposing decoded floats took a third of the
/// product's time.
///
/// # Safety
/// AVX-512 F + BW + VL + VBMI available; `panel` is 14 or 32; `line(w)[p]` (at
/// `p + w * ws`) readable for `w < width`, `p < kc`; `out` holds
/// `ceil(width / panel) * kc * panel` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c")]
pub(crate) unsafe fn pack_klines_e4m3_table(
    p: *const u8,
    ws: isize,
    kc: usize,
    width: usize,
    panel: usize,
    tables: &E4m3Bf16Tables,
    out: *mut f32,
) {
    debug_assert!(panel == 14 || panel == 32);
    let store_mask: u16 = if panel == 14 { 0x3FFF } else { u16::MAX };
    // SAFETY: loads are masked to the lines below `width` and steps below `kc`; stores stay
    // inside panel q's kc x panel floats (masked to `panel` columns for 14).
    unsafe {
        let t = TableRegs::load(tables);
        let idx = _mm512_loadu_si512(E4M3_STEP_MAJOR.as_ptr().cast());
        for (q, w0) in (0..width).step_by(panel).enumerate() {
            let wn = panel.min(width - w0);
            let dst = out.add(q * kc * panel);
            for g0 in (0..panel).step_by(16) {
                // Lines g0..g0 + lines of this panel are real, the rest zero.
                let lines = wn.saturating_sub(g0).min(16);
                for p0 in (0..kc).step_by(64) {
                    let np = 64.min(kc - p0);
                    let mask = if np == 64 { u64::MAX } else { (1u64 << np) - 1 };
                    let mut r = [_mm512_setzero_ps(); 16];
                    for (l, v) in r.iter_mut().enumerate().take(lines) {
                        let line = p.wrapping_offset((w0 + g0 + l) as isize * ws);
                        let bytes = _mm512_maskz_loadu_epi8(mask, line.wrapping_add(p0).cast());
                        *v = _mm512_castsi512_ps(bytes);
                    }
                    // r[u]: K steps p0 + 4u.. of the 16 lines, 4 bytes per line.
                    transpose16(&mut r);
                    for (u, group) in r.iter().enumerate().take(np.div_ceil(4)) {
                        let codes = _mm512_permutexvar_epi8(idx, _mm512_castps_si512(*group));
                        let steps = decode64_e4m3_table(&t, codes);
                        for (s, v) in steps.iter().enumerate().take(np - 4 * u) {
                            let row = dst.add((p0 + 4 * u + s) * panel + g0);
                            _mm512_mask_storeu_ps(row, store_mask, *v);
                        }
                    }
                }
            }
        }
    }
}

/// Lines of a source that are contiguous along K (A row-major, or B stored `[out, in]` as
/// `w.T`): line `w` starts `w * ws` elements after `ptr`, and holds K steps `0..kc`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KLines {
    F32(*const f32),
    Fp8(*const u8, Format),
    Bf16(*const half::bf16),
    F16(*const half::f16),
}

/// 16 K steps `p0..p0 + 16` of line `line` as float32, steps past `mask` zero (masked loads
/// never touch them).
///
/// # Safety
/// AVX-512 F + BW + VL + F16C available; the steps in `mask` are readable.
#[inline(always)]
unsafe fn load16(src: KLines, line: isize, p0: usize, mask: u16) -> __m512 {
    // SAFETY: only the masked-in elements are read (the caller's guarantee); the address of
    // masked-off ones is formed with wrapping arithmetic.
    unsafe {
        match src {
            KLines::F32(p) => _mm512_maskz_loadu_ps(mask, p.wrapping_offset(line).wrapping_add(p0)),
            KLines::Fp8(p, fmt) => {
                let bytes =
                    _mm_maskz_loadu_epi8(mask, p.wrapping_offset(line).wrapping_add(p0).cast());
                match fmt {
                    Format::E5M2 => decode16_e5m2(bytes),
                    Format::E4M3 => _mm512_mul_ps(decode16_e4m3(bytes), _mm512_set1_ps(256.0)),
                }
            }
            KLines::Bf16(p) => {
                let h =
                    _mm256_maskz_loadu_epi16(mask, p.wrapping_offset(line).wrapping_add(p0).cast());
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            }
            KLines::F16(p) => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                mask,
                p.wrapping_offset(line).wrapping_add(p0).cast(),
            )),
        }
    }
}

/// Transpose a 16 x 16 float32 block in registers: `r[i][c]` becomes `r[c][i]`.
///
/// # Safety
/// AVX-512 F available.
#[inline(always)]
unsafe fn transpose16(r: &mut [__m512; 16]) {
    // SAFETY: register-only intrinsics; the caller enables AVX-512 F.
    unsafe {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in (0..16).step_by(2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        // u[4g + j], 128-bit lane L: step 4L + j of lines 4g..4g + 3.
        let pd = _mm512_castps_pd;
        let ps = _mm512_castpd_ps;
        for g in (0..16).step_by(4) {
            r[g] = ps(_mm512_unpacklo_pd(pd(t[g]), pd(t[g + 2])));
            r[g + 1] = ps(_mm512_unpackhi_pd(pd(t[g]), pd(t[g + 2])));
            r[g + 2] = ps(_mm512_unpacklo_pd(pd(t[g + 1]), pd(t[g + 3])));
            r[g + 3] = ps(_mm512_unpackhi_pd(pd(t[g + 1]), pd(t[g + 3])));
        }
        for j in 0..4 {
            let x_lo = _mm512_shuffle_f32x4::<0x44>(r[j], r[4 + j]);
            let x_hi = _mm512_shuffle_f32x4::<0xEE>(r[j], r[4 + j]);
            let y_lo = _mm512_shuffle_f32x4::<0x44>(r[8 + j], r[12 + j]);
            let y_hi = _mm512_shuffle_f32x4::<0xEE>(r[8 + j], r[12 + j]);
            t[j] = _mm512_shuffle_f32x4::<0x88>(x_lo, y_lo);
            t[4 + j] = _mm512_shuffle_f32x4::<0xDD>(x_lo, y_lo);
            t[8 + j] = _mm512_shuffle_f32x4::<0x88>(x_hi, y_hi);
            t[12 + j] = _mm512_shuffle_f32x4::<0xDD>(x_hi, y_hi);
        }
        *r = t;
    }
}

/// Pack `width` lines that are contiguous along K into float32 panels of width `panel`
/// (14: the A panels of the 14 x 32 kernel, or 32: its B panels), the layout of
/// [`crate::gemm::pack`]: `out[q][p][w] = line(q * panel + w)[p]`, columns past `width` zero.
/// Blocks of 16 lines x 16 K steps are loaded (and decoded) along the lines and transposed in
/// registers, where the portable packer moves one element at a time: at 128 x 4096 x 4096
/// float32 x E4M3 `[out, in]` it spent a third of the product packing B.
/// Conversions are exact (the FP8 decode as in [`pack_fp8_rows_f32x32`]).
///
/// # Safety
/// AVX-512 F + BW + VL + F16C available; `panel` is 14 or 32; `line(w)[p]` readable for
/// `w < width`, `p < kc`; `out` holds `ceil(width / panel) * kc * panel` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn pack_klines_f32(
    src: KLines,
    ws: isize,
    kc: usize,
    width: usize,
    panel: usize,
    out: *mut f32,
) {
    debug_assert!(panel == 14 || panel == 32);
    let store_mask: u16 = if panel == 14 { 0x3FFF } else { u16::MAX };
    // SAFETY: loads are masked to the lines below `width` and steps below `kc`; stores stay
    // inside panel q's kc x panel floats (masked to `panel` columns for 14).
    unsafe {
        for (q, w0) in (0..width).step_by(panel).enumerate() {
            let wn = panel.min(width - w0);
            let dst = out.add(q * kc * panel);
            for g0 in (0..panel).step_by(16) {
                // Lines g0..g0 + lines of this panel are real, the rest zero.
                let lines = wn.saturating_sub(g0).min(16);
                for p0 in (0..kc).step_by(16) {
                    let np = 16.min(kc - p0);
                    let mask = if np == 16 { u16::MAX } else { (1u16 << np) - 1 };
                    let mut r = [_mm512_setzero_ps(); 16];
                    for (l, v) in r.iter_mut().enumerate().take(lines) {
                        let line = (w0 + g0 + l) as isize * ws;
                        *v = load16(src, line, p0, mask);
                    }
                    transpose16(&mut r);
                    for (p, v) in r.iter().enumerate().take(np) {
                        _mm512_mask_storeu_ps(dst.add((p0 + p) * panel + g0), store_mask, *v);
                    }
                }
            }
        }
    }
}
