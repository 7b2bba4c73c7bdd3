//! x86-64 kernels and the feature detection that guards them: one folder per level
//! (`avx2/`, `avx512/`, `avx512bf16/`), one file per algorithm in each (`codec.rs`,
//! `quant.rs`, `gemm.rs`, `gemv.rs`, `axpy.rs`), as for every architecture under `arch/`.
//!
//! Each level detects exactly the features its kernels are compiled with
//! (`#[target_feature(enable = ...)]`), so a kernel never runs on a CPU that lacks one.

pub mod avx2;
pub mod avx512;
pub mod avx512bf16;
mod common;

/// AVX2 + FMA + F16C: the features of every `avx2` kernel.
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// AVX-512 F + BW + VL (plus the AVX2 level's features, which every AVX-512 CPU has).
pub fn has_avx512() -> bool {
    has_avx2()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// [`has_avx512`] plus AVX512_BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`).
pub fn has_avx512bf16() -> bool {
    has_avx512() && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// Whether the `vdpbf16ps` GEMM kernel beats the float32 FMA one on this CPU, so that the
/// `avx512bf16` level is worth choosing by default. AMD Zen 4 runs `vdpbf16ps` (32
/// multiply-adds) at the FMA rate (16): 208-211 against 107 GFLOP/s at 2048^3 E4M3 x E4M3,
/// one thread. On Intel (a Sapphire-Rapids-class Xeon, measured 2026-12-06) it runs at half
/// that: 78-79 against 135-140 GFLOP/s, and 75 against 114 at 512 x 4096 x 4096; there the
/// FMA kernel is the default and `avx512bf16` only runs when asked for.
pub fn bf16_dot_is_fast() -> bool {
    let leaf = std::arch::x86_64::__cpuid(0);
    let intel = (leaf.ebx, leaf.edx, leaf.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e);
    !intel
}

/// AVX-512 VBMI (`vpermi2b`), which the table-decoding GEMV kernel
/// (`avx512::gemv::dot_table_f32`) needs besides [`has_avx512`]; not a level of its own.
pub fn has_avx512vbmi() -> bool {
    has_avx512() && std::arch::is_x86_feature_detected!("avx512vbmi")
}
