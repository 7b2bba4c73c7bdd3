//! Every SIMD level's codec kernels against the scalar reference, bit for bit.
//!
//! Each test runs every level in [`Isa::ALL`] that this CPU has (through
//! [`codec_kernels_for`], the only way to reach the kernels) and prints a line naming each
//! level it skips and why. All kernels write canonical NaNs, as does the reference, so outputs
//! are compared as raw bits.

use std::fmt::Debug;

use half::{bf16, f16};

use super::{codec_kernels_for, CodecKernels, Isa};
use crate::format::Format;
use crate::scalar;

/// The levels this CPU has (the portable one included: its kernels are not the reference),
/// announcing the ones it lacks.
fn simd_levels(test: &str) -> Vec<&'static CodecKernels> {
    let mut levels = Vec::new();
    for isa in Isa::ALL {
        match codec_kernels_for(isa) {
            Some(k) => levels.push(k),
            None => eprintln!("{test}: SKIPPED level {isa}: this CPU lacks its features"),
        }
    }
    if levels.is_empty() {
        eprintln!("{test}: no SIMD level available on this CPU; only the scalar path exists");
    }
    levels
}

/// Whether a level's entry is `isa`'s own code (AVX512BF16 reuses the AVX-512 codec table).
fn level_name(isa: Isa, k: &CodecKernels) -> String {
    if isa == k.isa {
        isa.name().to_owned()
    } else {
        format!("{} (as {})", isa.name(), k.isa.name())
    }
}

trait Bits: Copy + Debug {
    fn bits(self) -> u64;
}
impl Bits for u8 {
    fn bits(self) -> u64 {
        u64::from(self)
    }
}
impl Bits for f32 {
    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
}
impl Bits for f64 {
    fn bits(self) -> u64 {
        self.to_bits()
    }
}
impl Bits for f16 {
    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
}
impl Bits for bf16 {
    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
}

fn assert_same<S: Debug, D: Bits>(what: &str, src: &[S], got: &[D], want: &[D]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.bits() == w.bits(),
            "{what}: element {i} of {} (input {:?}): got {g:?} ({:#x}), want {w:?} ({:#x})",
            got.len(),
            src[i],
            g.bits(),
            w.bits()
        );
    }
}

const MODES: [(Format, bool); 4] = [
    (Format::E4M3, false),
    (Format::E4M3, true),
    (Format::E5M2, false),
    (Format::E5M2, true),
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// f32 inputs that exercise every branch: values around each FP8 grid point and midpoint in
/// both formats, specials, f32 subnormals, and random bit patterns.
fn interesting_f32() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0xFFFF_FFFF),
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        448.0,
        464.0,
        -464.0,
        465.0,
        480.0,
        57344.0,
        61439.996,
        61440.0,
        -61440.0,
        65536.0,
    ];
    for fmt in Format::ALL {
        for code in 0..=fmt.max_code() {
            let a = scalar::decode_f64(code, fmt);
            let b = if code == fmt.max_code() {
                a + 2f64.powi(fmt.max_exp() - fmt.mantissa_bits() as i32)
            } else {
                scalar::decode_f64(code + 1, fmt)
            };
            for p in [a, (a + b) / 2.0] {
                let bits = (p as f32).to_bits();
                for x in bits.saturating_sub(2)..=bits + 2 {
                    v.push(f32::from_bits(x));
                    v.push(-f32::from_bits(x));
                }
            }
        }
    }
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _ in 0..4096 {
        v.push(f32::from_bits(rng.next() as u32));
    }
    v
}

fn all_f16() -> Vec<f16> {
    (0..=u16::MAX).map(f16::from_bits).collect()
}

fn all_bf16() -> Vec<bf16> {
    (0..=u16::MAX).map(bf16::from_bits).collect()
}

fn all_codes() -> Vec<u8> {
    (0..=255).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Exhaustive small domains
// ---------------------------------------------------------------------------------------------

#[test]
fn decode_every_code_to_every_type() {
    // Forwards, backwards and shifted by 7 so each code visits several lane positions and both
    // the main loops and the tails.
    let mut codes = all_codes();
    codes.extend((0..=255u8).rev());
    codes.extend((0..=255u8).map(|c| c.wrapping_add(7)));
    codes.extend(0..=22u8);
    for k in simd_levels("decode_every_code_to_every_type") {
        for fmt in Format::ALL {
            let what = |t: &str| format!("{} decode {fmt} -> {t}", k.isa);
            let n = codes.len();

            let (mut got, want): (Vec<f32>, Vec<f32>) = (
                vec![0.0; n],
                codes.iter().map(|&c| scalar::decode_f32(c, fmt)).collect(),
            );
            (k.decode_f32)(&codes, &mut got, fmt);
            assert_same(&what("f32"), &codes, &got, &want);

            // f64: the reference value with the canonical f64 NaN (0x7FF8.. | sign).
            let want: Vec<f64> = codes
                .iter()
                .map(|&c| {
                    if fmt.is_nan(c) {
                        f64::from_bits(0x7FF8_0000_0000_0000 | (u64::from(c & 0x80) << 56))
                    } else {
                        scalar::decode_f64(c, fmt)
                    }
                })
                .collect();
            let mut got = vec![0.0f64; n];
            (k.decode_f64)(&codes, &mut got, fmt);
            assert_same(&what("f64"), &codes, &got, &want);

            let want: Vec<f16> = codes.iter().map(|&c| scalar::decode_f16(c, fmt)).collect();
            let mut got = vec![f16::ZERO; n];
            (k.decode_f16)(&codes, &mut got, fmt);
            assert_same(&what("f16"), &codes, &got, &want);

            let want: Vec<bf16> = codes.iter().map(|&c| scalar::decode_bf16(c, fmt)).collect();
            let mut got = vec![bf16::ZERO; n];
            (k.decode_bf16)(&codes, &mut got, fmt);
            assert_same(&what("bf16"), &codes, &got, &want);
        }
    }
}

#[test]
fn encode_every_f16_and_bf16() {
    let (h, b) = (all_f16(), all_bf16());
    for k in simd_levels("encode_every_f16_and_bf16") {
        for (fmt, sat) in MODES {
            let mut got = vec![0u8; h.len()];
            let want: Vec<u8> = h.iter().map(|&x| scalar::encode_f16(x, fmt, sat)).collect();
            (k.encode_f16)(&h, &mut got, fmt, sat);
            assert_same(
                &format!("{} f16 -> {fmt} sat={sat}", k.isa),
                &h,
                &got,
                &want,
            );

            let want: Vec<u8> = b
                .iter()
                .map(|&x| scalar::encode_bf16(x, fmt, sat))
                .collect();
            (k.encode_bf16)(&b, &mut got, fmt, sat);
            assert_same(
                &format!("{} bf16 -> {fmt} sat={sat}", k.isa),
                &b,
                &got,
                &want,
            );

            // Every f16 and bf16 value widened exactly is also an f32 and an f64 input.
            let wide: Vec<f32> = h
                .iter()
                .map(|x| x.to_f32())
                .chain(b.iter().map(|x| x.to_f32()))
                .collect();
            let want: Vec<u8> = wide
                .iter()
                .map(|&x| scalar::encode_f32(x, fmt, sat))
                .collect();
            let mut got = vec![0u8; wide.len()];
            (k.encode_f32)(&wide, &mut got, fmt, sat);
            assert_same(
                &format!("{} f32 -> {fmt} sat={sat}", k.isa),
                &wide,
                &got,
                &want,
            );
            let wide64: Vec<f64> = wide.iter().map(|&x| f64::from(x)).collect();
            (k.encode_f64)(&wide64, &mut got, fmt, sat);
            assert_same(
                &format!("{} f64 -> {fmt} sat={sat}", k.isa),
                &wide64,
                &got,
                &want,
            );
        }
    }
}

#[test]
fn encode_interesting_f32() {
    let x = interesting_f32();
    for k in simd_levels("encode_interesting_f32") {
        for (fmt, sat) in MODES {
            let want: Vec<u8> = x.iter().map(|&v| scalar::encode_f32(v, fmt, sat)).collect();
            let mut got = vec![0u8; x.len()];
            (k.encode_f32)(&x, &mut got, fmt, sat);
            assert_same(
                &format!("{} f32 -> {fmt} sat={sat}", k.isa),
                &x,
                &got,
                &want,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Lengths, misaligned starts, nothing written outside the destination
// ---------------------------------------------------------------------------------------------

/// Longest length tried: 4 blocks of the widest main loop (64 elements) plus 3, which covers
/// 4 * lanes + 3 for every lane count (8, 16, 32).
const MAX_LEN: usize = 4 * 64 + 3;

/// Run `kernel` on `src[off..off + len]` -> `dst[off..off + len]` for every length up to
/// [`MAX_LEN`] and offsets 0..=3 (misaligned starts), with sentinels around the destination.
fn check_lengths<S: Copy + Debug, D: Bits + PartialEq>(
    what: &str,
    pool: &[S],
    sentinel: D,
    kernel: impl Fn(&[S], &mut [D]),
    reference: impl Fn(S) -> D,
) {
    assert!(pool.len() >= MAX_LEN + 8);
    for len in 0..=MAX_LEN {
        for off in 0..=3 {
            // Vary which inputs land at which lane.
            let shift = (len * 7 + off) % 5;
            let src = &pool[shift..shift + off + len + 4];
            let mut dst = vec![sentinel; off + len + 4];
            kernel(&src[off..off + len], &mut dst[off..off + len]);
            for (i, d) in dst.iter().enumerate() {
                if i < off || i >= off + len {
                    assert!(
                        d.bits() == sentinel.bits(),
                        "{what}: len {len} offset {off}: wrote {d:?} at index {i} outside the destination"
                    );
                } else {
                    let want = reference(src[i]);
                    assert!(
                        d.bits() == want.bits(),
                        "{what}: len {len} offset {off}: element {} (input {:?}) is {d:?}, want {want:?}",
                        i - off,
                        src[i]
                    );
                }
            }
        }
    }
}

#[test]
fn every_length_and_misaligned_start() {
    let f32s = interesting_f32();
    let f64s: Vec<f64> = f32s
        .iter()
        .map(|&x| f64::from(x) * (1.0 + 2f64.powi(-30)))
        .collect();
    // Interleave special and ordinary f16/bf16 patterns so NaN/Inf/subnormals hit every lane.
    let f16s: Vec<f16> = (0..2048u32)
        .map(|i| f16::from_bits((i.wrapping_mul(0x9E37) >> 1) as u16 ^ (i as u16 & 0x8000)))
        .chain(all_f16().into_iter().step_by(97))
        .collect();
    let bf16s: Vec<bf16> = f16s
        .iter()
        .map(|h| bf16::from_bits(h.to_bits().rotate_left(3)))
        .collect();
    let codes: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(37) ^ (i >> 3)) as u8)
        .collect();
    for k in simd_levels("every_length_and_misaligned_start") {
        for (fmt, sat) in MODES {
            let w = |t: &str| format!("{} {t} -> {fmt} sat={sat}", k.isa);
            check_lengths(
                &w("f32"),
                &f32s,
                0xA5u8,
                |s, d| (k.encode_f32)(s, d, fmt, sat),
                |x| scalar::encode_f32(x, fmt, sat),
            );
            check_lengths(
                &w("f64"),
                &f64s,
                0xA5u8,
                |s, d| (k.encode_f64)(s, d, fmt, sat),
                |x| scalar::encode_f64(x, fmt, sat),
            );
            check_lengths(
                &w("f16"),
                &f16s,
                0xA5u8,
                |s, d| (k.encode_f16)(s, d, fmt, sat),
                |x| scalar::encode_f16(x, fmt, sat),
            );
            check_lengths(
                &w("bf16"),
                &bf16s,
                0xA5u8,
                |s, d| (k.encode_bf16)(s, d, fmt, sat),
                |x| scalar::encode_bf16(x, fmt, sat),
            );
        }
        for fmt in Format::ALL {
            let w = |t: &str| format!("{} {fmt} -> {t}", k.isa);
            check_lengths(
                &w("f32"),
                &codes,
                f32::from_bits(0xDEAD_BEEF),
                |s, d| (k.decode_f32)(s, d, fmt),
                |c| scalar::tables::f32_table(fmt)[usize::from(c)],
            );
            check_lengths(
                &w("f64"),
                &codes,
                f64::from_bits(0xDEAD_BEEF_DEAD_BEEF),
                |s, d| (k.decode_f64)(s, d, fmt),
                |c| scalar::tables::f64_table(fmt)[usize::from(c)],
            );
            check_lengths(
                &w("f16"),
                &codes,
                f16::from_bits(0xDEAD),
                |s, d| (k.decode_f16)(s, d, fmt),
                |c| scalar::decode_f16(c, fmt),
            );
            check_lengths(
                &w("bf16"),
                &codes,
                bf16::from_bits(0xDEAD),
                |s, d| (k.decode_bf16)(s, d, fmt),
                |c| scalar::decode_bf16(c, fmt),
            );
        }
    }
}

#[test]
fn unequal_lengths_touch_only_the_common_prefix() {
    let src: Vec<f32> = (0..100).map(|i| i as f32 * 0.37).collect();
    for k in simd_levels("unequal_lengths_touch_only_the_common_prefix") {
        // Longer destination: only the first src.len() bytes are written.
        let mut dst = vec![0xA5u8; 150];
        (k.encode_f32)(&src, &mut dst, Format::E4M3, false);
        assert!(dst[100..].iter().all(|&b| b == 0xA5), "{}", k.isa);
        // Shorter destination: no out-of-bounds write, prefix converted.
        let mut short = vec![0u8; 70];
        (k.encode_f32)(&src, &mut short, Format::E4M3, false);
        assert_eq!(short[..], dst[..70], "{}", k.isa);
        let mut out = vec![0f32; 40];
        (k.decode_f32)(&dst, &mut out, Format::E4M3);
        let want: Vec<f32> = dst[..40]
            .iter()
            .map(|&c| scalar::decode_f32(c, Format::E4M3))
            .collect();
        assert_same(&format!("{} short decode", k.isa), &dst, &out, &want);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. f64 is rounded once
// ---------------------------------------------------------------------------------------------

/// f64 inputs where rounding through f32 (or an f32 kernel fed a badly rounded f32) goes wrong.
fn hard_f64() -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        f64::from_bits(0x7FF0_0000_0000_0001), // signalling NaN
        f64::from_bits(0xFFF4_0000_0000_0000),
        f64::MAX,
        f64::MIN,
        1e300,
        -1e300,
        f64::from(f32::MAX),
        f64::from(f32::MAX) * (1.0 + 2f64.powi(-40)),
        f64::from(f32::MAX) * 1.5, // above f32 range: RN gives Inf, RZ gives MAX
        3.5e38,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        f64::from_bits(1), // smallest f64 subnormal
        f64::from_bits(0x8000_0000_0000_0001),
        f64::from_bits(0x000F_FFFF_FFFF_FFFF),
        1e-300,
        2f64.powi(-126),
        2f64.powi(-126) * (1.0 - 2f64.powi(-40)),
        2f64.powi(-149),
        2f64.powi(-150),
        2f64.powi(-149) * 1.5,
        2f64.powi(-160),
        -2f64.powi(-160),
        // The E4M3/E5M2 overflow thresholds, just below and above by less than an f32 ulp.
        464.0,
        464.0 * (1.0 + 2f64.powi(-40)),
        464.0 * (1.0 - 2f64.powi(-40)),
        61440.0,
        61440.0 * (1.0 - 2f64.powi(-40)),
        61440.0 * (1.0 + 2f64.powi(-40)),
        // Half the smallest subnormals: ties to zero; slightly above: the smallest subnormal.
        2f64.powi(-10),
        2f64.powi(-10) * (1.0 + 2f64.powi(-40)),
        2f64.powi(-17),
        2f64.powi(-17) * (1.0 + 2f64.powi(-40)),
        2f64.powi(-17) * (1.0 - 2f64.powi(-40)),
        // The DESIGN example: above the midpoint 1.0625 by less than an f32 ulp.
        1.0625 + 2f64.powi(-40),
    ];
    for fmt in Format::ALL {
        for code in 0..=fmt.max_code() {
            let a = scalar::decode_f64(code, fmt);
            let b = if code == fmt.max_code() {
                a + 2f64.powi(fmt.max_exp() - fmt.mantissa_bits() as i32)
            } else {
                scalar::decode_f64(code + 1, fmt)
            };
            for p in [a, (a + b) / 2.0] {
                // f32 neighbours widened, and f64 values within an f32 ulp of the point.
                let bits = (p as f32).to_bits();
                for x in bits.saturating_sub(2)..=bits + 2 {
                    v.push(f64::from(f32::from_bits(x)));
                }
                for k in [1u64, 2, 3, 1 << 20, (1 << 28) - 1, 1 << 28, (1 << 28) + 1] {
                    v.push(f64::from_bits(p.to_bits() + k));
                    v.push(f64::from_bits(p.to_bits().saturating_sub(k)));
                }
            }
        }
    }
    let with_neg: Vec<f64> = v.iter().map(|x| -x).collect();
    v.extend(with_neg);
    let mut rng = Rng(0xF00D_F00D_1234_5678);
    for _ in 0..20_000 {
        v.push(f64::from_bits(rng.next()));
        // Magnitudes where FP8 lives: exponent in [-30, 20], random mantissa and sign.
        let e = (rng.next() % 51) as i64 - 30;
        let m = rng.next() & ((1 << 52) - 1);
        let s = rng.next() & (1 << 63);
        v.push(f64::from_bits(s | (((1023 + e) as u64) << 52) | m));
    }
    v
}

#[test]
fn f64_is_rounded_once() {
    let x = hard_f64();
    for k in simd_levels("f64_is_rounded_once") {
        for (fmt, sat) in MODES {
            let want: Vec<u8> = x.iter().map(|&v| scalar::encode_f64(v, fmt, sat)).collect();
            let mut got = vec![0u8; x.len()];
            (k.encode_f64)(&x, &mut got, fmt, sat);
            assert_same(
                &format!("{} f64 -> {fmt} sat={sat}", k.isa),
                &x,
                &got,
                &want,
            );
        }
    }
    // The reference really differs from going through f32 on these inputs (the test has teeth).
    let e4 = |v: f64| scalar::encode_f64(v, Format::E4M3, false);
    let via_f32 = |v: f64| scalar::encode_f32(v as f32, Format::E4M3, false);
    let differ = x
        .iter()
        .filter(|&&v| !v.is_nan() && e4(v) != via_f32(v))
        .count();
    assert!(differ > 100, "only {differ} double-rounding cases");
}

// ---------------------------------------------------------------------------------------------
// 4. MXCSR state (FTZ, DAZ, rounding mode) set by someone else does not change any result
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod mxcsr {
    use std::arch::asm;

    pub const DAZ: u32 = 1 << 6;
    pub const FTZ: u32 = 1 << 15;
    pub const RC_DOWN: u32 = 1 << 13;
    pub const RC_UP: u32 = 2 << 13;
    pub const RC_ZERO: u32 = 3 << 13;
    const RC_MASK: u32 = 3 << 13;

    pub fn read() -> u32 {
        let mut v = 0u32;
        // SAFETY: stmxcsr stores the 4-byte MXCSR into `v`, a valid, writable u32.
        unsafe { asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack, preserves_flags)) };
        v
    }

    fn write(v: u32) {
        // SAFETY: ldmxcsr loads MXCSR from `v`; the values written only differ from the saved
        // state in the FTZ, DAZ and rounding-control bits (valid, no reserved bit set).
        unsafe { asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, preserves_flags)) };
    }

    /// Sets `bits` (and the rounding mode in them) while alive; restores the old MXCSR on drop,
    /// panics included.
    pub struct Guard(u32);
    impl Guard {
        pub fn set(bits: u32) -> Guard {
            let old = read();
            write((old & !(RC_MASK | DAZ | FTZ)) | bits);
            Guard(old)
        }
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            write(self.0);
        }
    }
}

/// Runs every level's kernels with each of `settings` (name, control bits) in force through
/// `enter` (which returns a guard restoring the old state on drop) and compares them with the
/// references computed in the default state. `controls` reads the control bits back.
fn check_under_fp_controls<G>(
    test: &str,
    settings: &[(&str, u32)],
    enter: impl Fn(u32) -> G,
    controls: impl Fn() -> u32,
) {
    let f32s: Vec<f32> = interesting_f32()
        .into_iter()
        .chain((1..4096u32).map(|i| f32::from_bits(i * 0x1F3)))
        .collect();
    let f64s = hard_f64();
    let (h, b, codes) = (all_f16(), all_bf16(), all_codes());
    let before = controls();
    for k in simd_levels(test) {
        for (fmt, sat) in MODES {
            // References first, in the default environment.
            let r32: Vec<u8> = f32s
                .iter()
                .map(|&x| scalar::encode_f32(x, fmt, sat))
                .collect();
            let r64: Vec<u8> = f64s
                .iter()
                .map(|&x| scalar::encode_f64(x, fmt, sat))
                .collect();
            let r16: Vec<u8> = h.iter().map(|&x| scalar::encode_f16(x, fmt, sat)).collect();
            let rb: Vec<u8> = b
                .iter()
                .map(|&x| scalar::encode_bf16(x, fmt, sat))
                .collect();
            let d32: Vec<f32> = codes.iter().map(|&c| scalar::decode_f32(c, fmt)).collect();
            let d64: Vec<f64> = codes
                .iter()
                .map(|&c| scalar::tables::f64_table(fmt)[usize::from(c)])
                .collect();
            let d16: Vec<f16> = codes.iter().map(|&c| scalar::decode_f16(c, fmt)).collect();
            let db: Vec<bf16> = codes.iter().map(|&c| scalar::decode_bf16(c, fmt)).collect();
            for &(name, bits) in settings {
                let w = |t: &str| format!("{} {t} {fmt} sat={sat} under {name}", k.isa);
                let (mut e32, mut e64, mut e16, mut eb) = (
                    vec![0u8; r32.len()],
                    vec![0u8; r64.len()],
                    vec![0u8; r16.len()],
                    vec![0u8; rb.len()],
                );
                let n = codes.len();
                let (mut o32, mut o64, mut o16, mut ob) = (
                    vec![0f32; n],
                    vec![0f64; n],
                    vec![f16::ZERO; n],
                    vec![bf16::ZERO; n],
                );
                {
                    let _guard = enter(bits);
                    assert_eq!(controls(), bits);
                    (k.encode_f32)(&f32s, &mut e32, fmt, sat);
                    (k.encode_f64)(&f64s, &mut e64, fmt, sat);
                    (k.encode_f16)(&h, &mut e16, fmt, sat);
                    (k.encode_bf16)(&b, &mut eb, fmt, sat);
                    (k.decode_f32)(&codes, &mut o32, fmt);
                    (k.decode_f64)(&codes, &mut o64, fmt);
                    (k.decode_f16)(&codes, &mut o16, fmt);
                    (k.decode_bf16)(&codes, &mut ob, fmt);
                }
                assert_eq!(controls(), before, "floating-point controls not restored");
                assert_same(&w("encode f32"), &f32s, &e32, &r32);
                assert_same(&w("encode f64"), &f64s, &e64, &r64);
                assert_same(&w("encode f16"), &h, &e16, &r16);
                assert_same(&w("encode bf16"), &b, &eb, &rb);
                assert_same(&w("decode f32"), &codes, &o32, &d32);
                assert_same(&w("decode f64"), &codes, &o64, &d64);
                assert_same(&w("decode f16"), &codes, &o16, &d16);
                assert_same(&w("decode bf16"), &codes, &ob, &db);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn mxcsr_state_does_not_change_results() {
    use mxcsr::*;
    check_under_fp_controls(
        "mxcsr_state_does_not_change_results",
        &[
            ("FTZ|DAZ", FTZ | DAZ),
            ("round-down", RC_DOWN),
            ("round-up", RC_UP),
            ("round-toward-zero", RC_ZERO),
            ("FTZ|DAZ|round-up", FTZ | DAZ | RC_UP),
            ("FTZ|DAZ|round-toward-zero", FTZ | DAZ | RC_ZERO),
        ],
        Guard::set,
        // Status flags (bits 0..=5) are sticky and may be raised: compare the controls only.
        || read() & (FTZ | DAZ | RC_ZERO),
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn daz_really_flushes_f32_subnormals() {
    // Guards the previous test against a no-op MXCSR write: with DAZ on, an f32 subnormal
    // operand reads as zero in ordinary arithmetic.
    let tiny = std::hint::black_box(f32::from_bits(1));
    let _guard = mxcsr::Guard::set(mxcsr::DAZ | mxcsr::FTZ);
    assert_eq!(
        std::hint::black_box(tiny) * std::hint::black_box(2.0f32),
        0.0
    );
}

/// The aarch64 floating-point control register (Arm ARM, FPCR): FZ flushes single and double
/// precision denormals to zero, DN replaces every NaN result by the positive default NaN,
/// RMode (bits 22-23) selects the rounding of arithmetic and of conversions that do not encode
/// their own rounding.
#[cfg(target_arch = "aarch64")]
mod fpcr {
    use std::arch::asm;

    pub const FZ: u32 = 1 << 24;
    pub const DN: u32 = 1 << 25;
    pub const RM_UP: u32 = 1 << 22;
    pub const RM_DOWN: u32 = 2 << 22;
    pub const RM_ZERO: u32 = 3 << 22;
    pub const CONTROLS: u32 = FZ | DN | RM_ZERO;

    pub fn read() -> u32 {
        let v: u64;
        // SAFETY: reading FPCR has no side effects.
        unsafe { asm!("mrs {}, fpcr", out(reg) v, options(nomem, nostack, preserves_flags)) };
        v as u32
    }

    fn write(v: u32) {
        // SAFETY: writes FPCR; the values written only differ from the saved state in the FZ,
        // DN and RMode bits (no trap-enable or reserved bit is set).
        unsafe {
            asm!("msr fpcr, {}", in(reg) u64::from(v), options(nomem, nostack, preserves_flags))
        };
    }

    /// Sets `bits` while alive; restores the old FPCR on drop, panics included.
    pub struct Guard(u32);
    impl Guard {
        pub fn set(bits: u32) -> Guard {
            let old = read();
            write((old & !CONTROLS) | bits);
            Guard(old)
        }
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            write(self.0);
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[test]
fn fpcr_state_does_not_change_results() {
    use fpcr::*;
    check_under_fp_controls(
        "fpcr_state_does_not_change_results",
        &[
            ("FZ", FZ),
            ("DN", DN),
            ("round-down", RM_DOWN),
            ("round-up", RM_UP),
            ("round-toward-zero", RM_ZERO),
            ("FZ|DN|round-up", FZ | DN | RM_UP),
            ("FZ|DN|round-toward-zero", FZ | DN | RM_ZERO),
        ],
        Guard::set,
        || read() & CONTROLS,
    );
}

#[cfg(target_arch = "aarch64")]
#[test]
fn fz_and_dn_really_take_effect() {
    // Guards the previous test against a no-op FPCR write (an emulator ignoring it, say).
    let tiny = std::hint::black_box(f32::from_bits(1));
    let _guard = fpcr::Guard::set(fpcr::FZ | fpcr::DN);
    assert_eq!(
        std::hint::black_box(tiny) * std::hint::black_box(2.0f32),
        0.0
    );
    let nan = std::hint::black_box(f32::from_bits(0xFFC0_0001));
    let sum = std::hint::black_box(nan) + std::hint::black_box(1.0f32);
    assert_eq!(
        sum.to_bits(),
        0x7FC0_0000,
        "DN gives the positive default NaN"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. All 2^32 f32 bit patterns
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "exhaustive: run with cargo test --release -- --ignored"]
fn exhaustive_every_f32_every_level() {
    use rayon::prelude::*;
    use std::time::Instant;

    let mut levels: Vec<(Isa, &CodecKernels)> = Vec::new();
    for isa in Isa::ALL {
        match codec_kernels_for(isa) {
            // A level sharing an earlier level's table (AVX512BF16 uses the AVX-512 codecs)
            // would repeat the same sweep; it is checked once, under the first name.
            Some(k) if levels.iter().any(|&(_, seen)| std::ptr::eq(seen, k)) => {
                eprintln!(
                    "exhaustive: {isa} uses the {} codec table, already in the sweep",
                    k.isa
                );
            }
            Some(k) => levels.push((isa, k)),
            None => eprintln!("exhaustive: SKIPPED level {isa}: this CPU lacks its features"),
        }
    }
    let names: Vec<String> = levels.iter().map(|&(i, k)| level_name(i, k)).collect();
    fn check_chunk(
        isa: Isa,
        what: &str,
        src: &[f32],
        got: &[u8],
        want: &[u8],
        fmt: Format,
        sat: bool,
    ) {
        if got != want {
            let i = got.iter().zip(want).position(|(g, w)| g != w).unwrap();
            panic!(
                "{isa}: {what} {:#010x} -> {fmt} sat={sat}: got {:#04x}, want {:#04x}",
                src[i].to_bits(),
                got[i],
                want[i]
            );
        }
    }
    eprintln!("exhaustive: 2^32 f32 (as f32 and widened to f64) x 4 modes against the scalar reference on {names:?}");
    let start = Instant::now();
    (0..1u32 << 16).into_par_iter().for_each_init(
        || {
            let n = 1 << 16;
            (vec![0f32; n], vec![0f64; n], vec![0u8; n], vec![0u8; n])
        },
        |(src, src64, want, got), hi| {
            for (lo, (x, x64)) in src.iter_mut().zip(src64.iter_mut()).enumerate() {
                *x = f32::from_bits(hi << 16 | lo as u32);
                *x64 = f64::from(*x);
            }
            for (fmt, sat) in MODES {
                scalar::slices::encode_f32(src, want, fmt, sat);
                for &(isa, k) in &levels {
                    (k.encode_f32)(src, got, fmt, sat);
                    check_chunk(isa, "f32", src, got, want, fmt, sat);
                    // Every f32 is also an f64 input with the same exact value and result.
                    (k.encode_f64)(src64, got, fmt, sat);
                    check_chunk(isa, "f64 (widened f32)", src, got, want, fmt, sat);
                }
            }
        },
    );
    eprintln!("exhaustive: done in {:.1} s", start.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// 6. The documented sample of the f32 domain, for runs where the 2^32 sweep is too slow
//    (aarch64 under emulation)
// ---------------------------------------------------------------------------------------------

/// Every f32 within 3 ulps of every point of a 4-bit significand grid in every binade (the
/// binade boundaries, every FP8 value of both formats, every midpoint between neighbouring
/// FP8 values, FP8 subnormals included: all of them have at most 4 significant bits), both
/// signs, plus 2^24 random bit patterns; as f32 and widened to f64, every mode, every level.
/// With `encode_every_f16_and_bf16` (all 2^16 inputs of each) this is the sample the
/// aarch64 CI runs under emulation; the x86 CI runs the full 2^32 sweep above.
#[test]
#[ignore = "sample sweep (2^24 random patterns): run with --ignored"]
fn sample_sweep_boundaries_and_random_f32() {
    use rayon::prelude::*;

    let mut levels: Vec<&CodecKernels> = Vec::new();
    for isa in Isa::ALL {
        match codec_kernels_for(isa) {
            Some(k) if levels.iter().any(|&seen| std::ptr::eq(seen, k)) => {}
            Some(k) => levels.push(k),
            None => eprintln!("sample sweep: SKIPPED level {isa}: this CPU lacks its features"),
        }
    }
    let mut grid: Vec<u32> = Vec::new();
    for exp in 0..256u32 {
        for mant in 0..16u32 {
            let p = (exp << 23) | (mant << 19);
            for d in -3i32..=3 {
                let b = p.wrapping_add_signed(d) & 0x7FFF_FFFF;
                grid.extend([b, b | 0x8000_0000]);
            }
        }
    }
    let n_grid = grid.len();
    let mut rng = Rng(0x005E_ED0F_A4C8_2024);
    grid.extend((0..1u32 << 24).map(|_| (rng.next() >> 32) as u32));
    let names: Vec<&str> = levels.iter().map(|k| k.isa.name()).collect();
    eprintln!(
        "sample sweep: {n_grid} boundary patterns + 2^24 random, as f32 and f64, 4 modes, on {names:?}"
    );
    grid.par_chunks(1 << 16).for_each(|chunk| {
        let src: Vec<f32> = chunk.iter().map(|&b| f32::from_bits(b)).collect();
        let src64: Vec<f64> = src.iter().map(|&x| f64::from(x)).collect();
        let (mut want, mut got) = (vec![0u8; src.len()], vec![0u8; src.len()]);
        for (fmt, sat) in MODES {
            scalar::slices::encode_f32(&src, &mut want, fmt, sat);
            for k in &levels {
                (k.encode_f32)(&src, &mut got, fmt, sat);
                assert_same(&format!("{} f32 {fmt} sat={sat}", k.isa), &src, &got, &want);
                (k.encode_f64)(&src64, &mut got, fmt, sat);
                assert_same(&format!("{} f64 {fmt} sat={sat}", k.isa), &src, &got, &want);
            }
        }
    });
}

/// The levels detected are exactly the ones the CPU has: `FP8FAST_EXPECT_ISAS` (set by the
/// aarch64 CI for each emulated CPU, e.g. `scalar,neon` for a Cortex-A72 without BF16) names
/// them. A level the CPU lacks can be neither chosen nor forced, and its kernels are not
/// handed out.
#[test]
fn detection_matches_the_expected_levels() {
    let names: Vec<&str> = super::available().iter().map(|i| i.name()).collect();
    match std::env::var("FP8FAST_EXPECT_ISAS") {
        Ok(want) => assert_eq!(names.join(","), want, "detected levels"),
        Err(_) => eprintln!("FP8FAST_EXPECT_ISAS unset: detected {names:?}, not compared"),
    }
    // The best level is the most capable one, except on x86 CPUs whose `vdpbf16ps` is slower
    // than float32 FMA (`x86_64::bf16_dot_is_fast`), where it is the AVX-512 level.
    let most_capable = *names.last().unwrap();
    #[cfg(target_arch = "x86_64")]
    let most_capable = if most_capable == "avx512bf16" && !super::x86_64::bf16_dot_is_fast() {
        "avx512"
    } else {
        most_capable
    };
    assert_eq!(super::best().name(), most_capable);
    for isa in Isa::ALL {
        if !isa.is_available() {
            assert!(super::set_active(isa).is_err(), "{isa} could be forced");
            assert!(codec_kernels_for(isa).is_none(), "{isa} kernels handed out");
            assert!(crate::quant::kernels::quant_kernels_for(isa).is_none());
        }
    }
}
