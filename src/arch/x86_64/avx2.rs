//! PLACEHOLDER: avx2 codec kernels are being written; until then this level uses the portable ones.

use crate::arch::{CodecKernels, Isa, SCALAR_CODEC};

static CODEC: CodecKernels = CodecKernels {
    isa: Isa::Avx2,
    ..SCALAR_CODEC
};

/// The codec kernels of this level. Only call when the CPU has it.
pub fn codec_kernels() -> &'static CodecKernels {
    &CODEC
}
