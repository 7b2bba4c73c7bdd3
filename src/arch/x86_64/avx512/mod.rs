//! The AVX-512 level (F + BW + VL, [`super::has_avx512`]): one file per algorithm.

pub(crate) mod axpy;
pub mod codec;
pub(crate) mod gemm;
pub(crate) mod gemv;
pub mod quant;
