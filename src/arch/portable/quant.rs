//! The portable quantization kernels: the generic bodies of [`crate::quant::kernels`] compiled
//! for the baseline target (which the compiler vectorises with SSE2 / NEON), and the portable
//! stochastic-rounding encoder.

use half::{bf16, f16};

use crate::arch::Isa;
use crate::quant::kernels::{self as k, AbsMaxKeys, QuantKernels};
use crate::quant::stochastic;

fn absmax_f32_portable(x: &[f32]) -> AbsMaxKeys {
    k::absmax_f32_body(x)
}
fn absmax_f64_portable(x: &[f64]) -> AbsMaxKeys {
    k::absmax_f64_body(x)
}
fn absmax_f16_portable(x: &[f16]) -> AbsMaxKeys {
    k::absmax_f16_body(x)
}
fn absmax_bf16_portable(x: &[bf16]) -> AbsMaxKeys {
    k::absmax_bf16_body(x)
}
fn group_max_f32_portable(row: &[f32], group: usize, out: &mut [u64]) {
    k::group_max_f32_body(row, group, out)
}
fn group_max_f64_portable(row: &[f64], group: usize, out: &mut [u64]) {
    k::group_max_f64_body(row, group, out)
}
fn group_max_f16_portable(row: &[f16], group: usize, out: &mut [u64]) {
    k::group_max_f16_body(row, group, out)
}
fn group_max_bf16_portable(row: &[bf16], group: usize, out: &mut [u64]) {
    k::group_max_bf16_body(row, group, out)
}
fn scale_groups_f32_portable(src: &[f32], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    k::scale_groups_f32_body(src, col0, group, s, dst)
}
fn scale_groups_inplace_f32_portable(buf: &mut [f32], col0: usize, group: usize, s: &[f32]) {
    k::scale_groups_inplace_f32_body(buf, col0, group, s)
}
fn scale_groups_bf16_portable(src: &[bf16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    k::scale_groups_bf16_body(src, col0, group, s, dst)
}
fn scale_groups_f16_portable(src: &[f16], col0: usize, group: usize, s: &[f32], dst: &mut [f32]) {
    k::scale_groups_f16_body(src, col0, group, s, dst)
}
/// The table lookup has no AVX2 form worth having (no 16-bit permute across 256 entries;
/// gathers are slower than the scalar loads), so the AVX2 table shares this one.
pub(crate) fn lookup_u16_portable(codes: &[u8], table: &[u16; 256], out: &mut [u16]) {
    k::lookup_u16_body(codes, table, out)
}

/// The portable kernels.
pub static QUANT: QuantKernels = QuantKernels {
    isa: Isa::Scalar,
    absmax_f32: absmax_f32_portable,
    absmax_f64: absmax_f64_portable,
    absmax_f16: absmax_f16_portable,
    absmax_bf16: absmax_bf16_portable,
    group_max_f32: group_max_f32_portable,
    group_max_f64: group_max_f64_portable,
    group_max_f16: group_max_f16_portable,
    group_max_bf16: group_max_bf16_portable,
    scale_groups_f32: scale_groups_f32_portable,
    scale_groups_inplace_f32: scale_groups_inplace_f32_portable,
    scale_groups_bf16: scale_groups_bf16_portable,
    scale_groups_f16: scale_groups_f16_portable,
    scale_encode_bf16: None,
    stochastic_f32: stochastic::encode_f32,
    lookup_u16: lookup_u16_portable,
};
