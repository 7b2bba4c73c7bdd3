//! aarch64 kernels and the feature detection that guards them: one folder per level
//! (`neon/`, `neon_bf16/`), one file per algorithm in each, as for every architecture under
//! `arch/`.
//!
//! Advanced SIMD is part of every ARMv8-A application core (Apple M-series, Graviton, Ampere,
//! Cortex-A53 up), but the level is still detected like the others, so a kernel never runs
//! without the features it is compiled with. A level without its own file for an algorithm
//! uses the level below it: `neon-bf16` adds only the `bfdot` GEMM microkernel.
//!
//! # Floating-point control (FPCR)
//!
//! The codecs are exact whatever FPCR says. Decoding is table lookups and byte moves only.
//! Encoding rounds on the bit patterns with integer operations; the two floating-point steps
//! are chosen so that no FPCR control can change a result: the subnormal range is rounded by
//! `fcvtnu` (round to nearest, ties to even, encoded in the instruction, not taken from
//! FPCR.RMode) after an exact multiplication by a power of two, and f64 is narrowed by
//! `fcvtxn` (round to odd, also encoded in the instruction). FPCR.FZ can only flush inputs
//! below 2^-126 to zero, which encode to a signed zero anyway, and FPCR.DN (default NaN) would
//! lose the sign of a NaN in `fcvtxn`, so the f64 kernel copies the sign from the input. The
//! FPCR test in `arch::tests` runs every kernel under FZ, DN and each rounding mode.

pub mod neon;
pub mod neon_bf16;

/// Advanced SIMD (NEON): the features of every `neon` kernel.
pub fn has_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// [`has_neon`] plus FEAT_BF16 (`bfdot`, `bfmmla`, `bfcvt`).
pub fn has_neon_bf16() -> bool {
    has_neon() && std::arch::is_aarch64_feature_detected!("bf16")
}
