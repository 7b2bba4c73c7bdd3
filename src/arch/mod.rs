//! Instruction-set detection and dispatch.
//!
//! The CPU is inspected once; each operation then looks up the kernel table of the active ISA
//! once per call (never per element). `FP8FAST_ISA=scalar|avx2|avx512|avx512bf16` (x86-64) or
//! `FP8FAST_ISA=scalar|neon|neon-bf16` (aarch64) forces a
//! path, and [`set_active`] changes it at run time (tests use it to run every path the machine
//! has). A path the CPU lacks is never chosen: asking for one is an error.
//!
//! # Where kernels live
//!
//! One rule for every architecture and algorithm: `arch/<architecture>/<level>/<algorithm>.rs`,
//! and `arch/portable/<algorithm>.rs` for the level every CPU runs. The algorithms are `codec`
//! (FP8 encode / decode), `quant` (amax, scale-and-encode, stochastic rounding, table lookup),
//! `gemm` (the blocked GEMM's microkernel and packing helpers), `gemv` (the streaming
//! few-row kernels for weights stored along K) and `axpy` (the streaming few-row kernels for
//! weights stored `[in, out]`). A level without a kernel of its own for an algorithm uses the level
//! below it (the `avx512bf16` level has only `gemm.rs`). Generic bodies that several levels
//! compile with their own features stay with their algorithm (`quant::kernels`,
//! `gemm::driver`), marked `#[inline(always)]`; helpers shared by two levels live in the lower
//! one. Dispatch tables (`CodecKernels`, `QuantKernels`, the GEMM `Micro` families) are chosen
//! once per call from the active level.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::format::Format;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod portable;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// An instruction-set level with its own kernels. Ordered from least to most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar = 0,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2 = 1,
    /// x86-64 AVX-512 F + BW + VL.
    Avx512 = 2,
    /// [`Isa::Avx512`] plus AVX512_BF16 (`vdpbf16ps` GEMM microkernel); codecs as `Avx512`.
    Avx512Bf16 = 3,
    /// aarch64 Advanced SIMD (NEON, part of every ARMv8-A CPU).
    Neon = 4,
    /// [`Isa::Neon`] plus FEAT_BF16 (`bfdot` GEMM microkernel); codecs as `Neon`.
    NeonBf16 = 5,
}

impl Isa {
    /// Every level, least capable first.
    /// Each architecture's levels are a chain (every level needs the one before it), and a
    /// CPU has levels of only one architecture.
    pub const ALL: [Isa; 6] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Bf16,
        Isa::Neon,
        Isa::NeonBf16,
    ];

    /// The name used by `FP8FAST_ISA` and `show_config()`.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Neon => "neon",
            Isa::NeonBf16 => "neon-bf16",
        }
    }

    /// Parse a name as accepted by `FP8FAST_ISA` (case-insensitive).
    pub fn from_name(name: &str) -> Result<Isa> {
        let lower = name.trim().to_ascii_lowercase();
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == lower)
            .ok_or_else(|| {
                Error::value(format!(
                    "unknown ISA {name:?}: expected one of scalar, avx2, avx512, avx512bf16, neon, \
                     neon-bf16"
                ))
            })
    }

    /// Whether this CPU can run the level's kernels (every feature they use is detected).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86_64::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86_64::has_avx512(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => x86_64::has_avx512bf16(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => aarch64::has_neon(),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonBf16 => aarch64::has_neon_bf16(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    fn from_u8(v: u8) -> Isa {
        Isa::ALL[usize::from(v).min(Isa::ALL.len() - 1)]
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The levels this CPU can run, least capable first.
pub fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
}

/// The fastest level this CPU can run: the most capable one, except that `avx512bf16` (which
/// differs from `avx512` only by the `vdpbf16ps` GEMM kernel) is skipped where that kernel
/// is the slower one ([`x86_64::bf16_dot_is_fast`]).
pub fn best() -> Isa {
    let levels = available();
    #[cfg(target_arch = "x86_64")]
    if levels.last() == Some(&Isa::Avx512Bf16) && !x86_64::bf16_dot_is_fast() {
        return Isa::Avx512;
    }
    *levels.last().unwrap_or(&Isa::Scalar)
}

const UNSET: u8 = u8::MAX;
static ACTIVE: AtomicU8 = AtomicU8::new(UNSET);
static ENV_ERROR: OnceLock<Option<String>> = OnceLock::new();

fn check_available(isa: Isa) -> Result<Isa> {
    if isa.is_available() {
        Ok(isa)
    } else {
        let names: Vec<_> = available().iter().map(|i| i.name()).collect();
        Err(Error::value(format!(
            "ISA {isa} is not available on this CPU (available: {})",
            names.join(", ")
        )))
    }
}

/// The level chosen by `FP8FAST_ISA`, or why it cannot be used.
fn from_env() -> Result<Isa> {
    match std::env::var("FP8FAST_ISA") {
        Ok(v) if !v.trim().is_empty() => Isa::from_name(&v)
            .and_then(check_available)
            .map_err(|e| Error::value(format!("FP8FAST_ISA={v}: {e}"))),
        _ => Ok(best()),
    }
}

/// Why `FP8FAST_ISA` was ignored, if it was (unknown name or a path this CPU lacks).
/// The Python module refuses to import in that case, naming the problem.
pub fn env_error() -> Option<String> {
    let _ = active();
    ENV_ERROR.get().cloned().flatten()
}

/// The level every operation uses now.
pub fn active() -> Isa {
    let v = ACTIVE.load(Ordering::Relaxed);
    if v != UNSET {
        return Isa::from_u8(v);
    }
    let chosen = match from_env() {
        Ok(isa) => {
            let _ = ENV_ERROR.set(None);
            isa
        }
        Err(e) => {
            let _ = ENV_ERROR.set(Some(e.to_string()));
            best()
        }
    };
    // Another thread may have raced us (or `set_active` run); keep whichever came first.
    match ACTIVE.compare_exchange(UNSET, chosen as u8, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => chosen,
        Err(v) => Isa::from_u8(v),
    }
}

/// Force a level for every later call. Fails if this CPU lacks it.
pub fn set_active(isa: Isa) -> Result<()> {
    check_available(isa)?;
    ACTIVE.store(isa as u8, Ordering::Relaxed);
    Ok(())
}

/// Slice kernels of one ISA for the codecs. Source and destination have equal lengths.
/// Every entry is a safe function: the table of a level is only handed out when the CPU has it.
#[derive(Clone, Copy)]
pub struct CodecKernels {
    /// The level these kernels belong to.
    pub isa: Isa,
    /// `f32 -> FP8`, round to nearest even.
    pub encode_f32: fn(&[f32], &mut [u8], Format, bool),
    /// `f64 -> FP8`, rounded once.
    pub encode_f64: fn(&[f64], &mut [u8], Format, bool),
    /// `f16 -> FP8`.
    pub encode_f16: fn(&[f16], &mut [u8], Format, bool),
    /// `bf16 -> FP8`.
    pub encode_bf16: fn(&[bf16], &mut [u8], Format, bool),
    /// `FP8 -> f32`.
    pub decode_f32: fn(&[u8], &mut [f32], Format),
    /// `FP8 -> f64`.
    pub decode_f64: fn(&[u8], &mut [f64], Format),
    /// `FP8 -> f16`.
    pub decode_f16: fn(&[u8], &mut [f16], Format),
    /// `FP8 -> bf16`.
    pub decode_bf16: fn(&[u8], &mut [bf16], Format),
}

/// The portable kernels: integer-only encoders and table decoders.
pub static SCALAR_CODEC: CodecKernels = CodecKernels {
    isa: Isa::Scalar,
    encode_f32: portable::codec::encode_f32,
    encode_f64: portable::codec::encode_f64,
    encode_f16: portable::codec::encode_f16,
    encode_bf16: portable::codec::encode_bf16,
    decode_f32: crate::scalar::slices::decode_f32,
    decode_f64: crate::scalar::slices::decode_f64,
    decode_f16: crate::scalar::slices::decode_f16,
    decode_bf16: crate::scalar::slices::decode_bf16,
};

/// The codec kernels of `isa`, or `None` if this CPU lacks it.
pub fn codec_kernels_for(isa: Isa) -> Option<&'static CodecKernels> {
    if !isa.is_available() {
        return None;
    }
    match isa {
        Isa::Scalar => Some(&SCALAR_CODEC),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(x86_64::avx2::codec::codec_kernels()),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => Some(x86_64::avx512::codec::codec_kernels()),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonBf16 => Some(aarch64::neon::codec::codec_kernels()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The codec kernels of the active level.
pub fn codec_kernels() -> &'static CodecKernels {
    codec_kernels_for(active()).unwrap_or(&SCALAR_CODEC)
}

#[cfg(test)]
mod tests;
