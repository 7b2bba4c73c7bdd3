//! The AVX2 level (AVX2 + FMA + F16C, [`super::has_avx2`]): one file per algorithm.

pub(crate) mod axpy;
pub mod codec;
pub(crate) mod gemm;
pub(crate) mod gemv;
pub mod quant;
