//! The NEON level (Advanced SIMD, [`super::has_neon`]): one file per algorithm.

pub mod codec;
pub(crate) mod gemm;
pub(crate) mod gemv;
pub mod quant;
