//! # fp8fast
//!
//! SIMD conversion between high-precision floats and the 8-bit floating point formats of
//! "FP8 Formats for Deep Learning" (Micikevicius et al., 2022), standardised as OCP OFP8:
//! E4M3 (no infinities, max 448) and E5M2 (IEEE-like, max 57344).
//!
//! - [`scalar`]: the reference codec, written from the specification, the oracle for the rest.
//! - [`arch`]: run-time ISA detection and the per-ISA kernels (AVX-512, AVX2, portable).
//! - [`convert`]: the safe API over slices and strided n-d arrays, multi-threaded.
//! - [`quant`]: scaled quantization (per-tensor, per-channel, 2-D block and MX scales), the
//!   fused scale-and-encode / decode-and-scale passes, and stochastic rounding.
//!
//! Conversion follows OFP8 §5.2: round to nearest, ties to even, then saturate (to the max
//! normal) or overflow (to infinity for E5M2, NaN for E4M3). `f64` input is rounded once.
//!
//! ```
//! use fp8fast::{convert, Format};
//! let x = [1.0f32, 464.0, -1e9, 0.3];
//! let mut q = [0u8; 4];
//! convert::encode_slice(&x, &mut q, Format::E4M3, true).unwrap();
//! assert_eq!(q, [0x38, 0x7E, 0xFE, 0x2A]);
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod alloc;
pub mod arch;
pub mod checkpoint;
pub mod convert;
pub mod error;
pub mod format;
pub mod gemm;
pub mod quant;
pub mod scalar;
pub mod threads;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
pub use format::Format;
pub use half::{bf16, f16};
