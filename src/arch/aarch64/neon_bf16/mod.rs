//! The NEON BF16 level ([`super::has_neon_bf16`]): only the GEMM microkernel; every other
//! algorithm uses the `neon` level's kernels.

pub(crate) mod gemm;
