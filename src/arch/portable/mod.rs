//! The portable level (`scalar`): integer-only encoders, table decoders and plain-Rust GEMM
//! and quantization kernels for any CPU, one file per algorithm as for every ISA.

pub(crate) mod axpy;
pub mod codec;
pub(crate) mod gemm;
pub(crate) mod gemv;
pub mod quant;
