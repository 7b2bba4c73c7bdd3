//! The AVX-512 BF16 level ([`super::has_avx512bf16`]): the `vdpbf16ps` GEMM microkernel. Its
//! codec, quantization and GEMV kernels are the AVX-512 level's.

pub(crate) mod gemm;
