//! Driver tests: whole files through quantize_file / dequantize_file / tensor_report.

use std::path::PathBuf;

use super::*;
use crate::scalar;

fn tmpdir(tag: &str) -> PathBuf {
    let base = crate::checkpoint::fskind::test_dir_base().0;
    let d = base.join(format!("fp8fast-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0
                - 0.5)
                * 0.2
        })
        .collect()
}

/// A tiny model: two Linear weights (bf16), an embedding, a norm and a bias.
fn write_model(path: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let specs: Vec<(&str, Vec<usize>)> = vec![
        ("model.embed_tokens.weight", vec![16, 8]),
        ("model.layers.0.self_attn.q_proj.weight", vec![130, 200]),
        ("model.layers.0.self_attn.q_proj.bias", vec![130]),
        ("model.layers.0.mlp.down_proj.weight", vec![8, 130]),
        ("model.norm.weight", vec![8]),
    ];
    let mut out = Vec::new();
    let plan: Vec<OutTensor> = specs
        .iter()
        .map(|(n, s)| OutTensor::new(*n, Dtype::BF16, s.clone()))
        .collect();
    let mut w = SafetensorsWriter::create(path, plan, None, false).unwrap();
    for (k, (n, s)) in specs.iter().enumerate() {
        let v: Vec<bf16> = values(s.iter().product(), k as u32)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        w.write(bytemuck::cast_slice(&v)).unwrap();
        out.push((
            n.to_string(),
            s.clone(),
            v.iter().map(|x| x.to_f32()).collect(),
        ));
    }
    w.finish().unwrap();
    out
}

fn noop(_: Progress) -> Result<()> {
    Ok(())
}

#[test]
fn quantize_then_dequantize_round_trips_in_both_layouts() {
    let d = tmpdir("rt");
    let src = d.join("model.safetensors");
    let model = write_model(&src);
    let targets = vec![
        "model.layers.0.self_attn.q_proj.weight".to_string(),
        "model.layers.0.mlp.down_proj.weight".to_string(),
    ];
    // (layout, granularity, scale name suffix, --scale-dtype, the scale's dtype in the file):
    // automatic scale dtypes are the bf16 weights' own in compressed-tensors, float32 in
    // fp8-block; MX exponents are U8 as in compressed-tensors' mxfp8-quantized format.
    for (layout, g, scale_suffix, scale_dtype, stored) in [
        (
            Layout::CompressedTensors,
            Granularity::Channel,
            "_scale",
            None,
            Dtype::BF16,
        ),
        (
            Layout::CompressedTensors,
            Granularity::Channel,
            "_scale",
            Some(ScaleDtype::F32),
            Dtype::F32,
        ),
        (
            Layout::CompressedTensors,
            Granularity::Tensor,
            "_scale",
            Some(ScaleDtype::F16),
            Dtype::F16,
        ),
        (
            Layout::CompressedTensors,
            Granularity::Block(128, 128),
            "_scale",
            None,
            Dtype::BF16,
        ),
        (
            Layout::CompressedTensors,
            Granularity::Mx,
            "_scale",
            None,
            Dtype::U8,
        ),
        (
            Layout::Fp8Block,
            Granularity::Block(128, 128),
            "_scale_inv",
            None,
            Dtype::F32,
        ),
    ] {
        let q = d.join("q.safetensors");
        let opts = QuantizeOptions {
            format: Format::E4M3,
            granularity: g,
            layout,
            rounding: Rounding::Nearest,
            scale_dtype,
        };
        let s = quantize_file(&src, &q, &targets, opts, None, false, &mut noop).unwrap();
        assert_eq!(s.converted.len(), 2);
        let f = SafetensorsFile::open(&q).unwrap();
        assert_eq!(f.tensors().len(), model.len() + 2);
        // Unquantized tensors are byte-identical; weights are FP8 with scales beside them.
        let fsrc = SafetensorsFile::open(&src).unwrap();
        for (name, shape, _) in &model {
            let t = f.get(name).unwrap();
            if targets.contains(name) {
                assert_eq!(t.dtype, Dtype::F8_E4M3);
                let st = f.get(&format!("{name}{scale_suffix}")).unwrap();
                assert_eq!(st.dtype, stored);
                assert_eq!(st.shape, g.scale_shape(shape[0], shape[1]));
            } else {
                let a = read_as::<u8>(&f, t).unwrap();
                let b = read_as::<u8>(&fsrc, fsrc.get(name).unwrap()).unwrap();
                assert_eq!(a, b, "{name}");
            }
        }
        let back = d.join("back.safetensors");
        dequantize_file(&q, &back, OutDtype::F32, &[], None, None, false, &mut noop).unwrap();
        let fb = SafetensorsFile::open(&back).unwrap();
        assert_eq!(fb.tensors().len(), model.len(), "scales dropped");
        for (name, shape, x) in &model {
            let t = fb.get(name).unwrap();
            if !targets.contains(name) {
                assert_eq!(t.dtype, Dtype::BF16);
                continue;
            }
            assert_eq!(t.dtype, Dtype::F32);
            let y = read_as::<f32>(&fb, t).unwrap();
            // Each element is within half an E4M3 step of its group: |x - y| <= 2^-4 |x| for
            // normals, plus half the subnormal step 2^-10 * scale, with scale <= amax / 448.
            // MX scales are powers of two: a group's largest magnitudes land in [256, 512) and
            // those above 448 saturate, up to 1/8 off.
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let rel = if g == Granularity::Mx { 8.0 } else { 16.0 };
            for (a, b) in x.iter().zip(&y) {
                let bound = a.abs() / rel + amax / 256.0 * 2f32.powi(-10) + 1e-12;
                assert!((a - b).abs() <= bound, "{name} {a} {b} {shape:?}");
            }
        }
        // Reports: the quantized checkpoint against its source.
        let files = vec![SafetensorsFile::open(&q).unwrap()];
        let r = tensor_report(&files, &targets[0], None, None, Some(&fsrc)).unwrap();
        assert!(r.sqnr_db.unwrap() > 25.0, "{r:?}");
        std::fs::remove_file(&q).unwrap();
        std::fs::remove_file(&back).unwrap();
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// Weights larger than one pipelined piece, quantized part by part on 1-3 threads, give the
/// codes and scales of quantizing each weight whole: for bf16, f16 and f32 sources, every
/// granularity that is quantized in parts, partial blocks and MX groups, nearest and
/// stochastic rounding.
#[test]
fn weights_quantized_in_parts_equal_weights_quantized_whole() {
    let d = tmpdir("parts");
    let src = d.join("big.safetensors");
    // bf16 2300 x 600: 1.3 MiB of codes (two pieces, sub-parts per thread); f16 1500 x 700;
    // f32 1200 x 1000 (its 128-row blocks hold 125 KiB of codes: 8 per piece).
    let specs = [
        ("a.weight", Dtype::BF16, 2300usize, 600usize),
        ("b.weight", Dtype::F16, 1500, 700),
        ("c.weight", Dtype::F32, 1200, 1000),
    ];
    let plan = specs
        .iter()
        .map(|&(n, dt, r, c)| OutTensor::new(n, dt, vec![r, c]))
        .collect();
    let mut w = SafetensorsWriter::create(&src, plan, None, false).unwrap();
    let mut inputs = Vec::new();
    for (k, &(_, dt, r, c)) in specs.iter().enumerate() {
        let mut v = values(r * c, 40 + k as u32);
        // Rows of very different magnitudes, an all-zero row, NaN and Inf.
        for (i, x) in v.iter_mut().enumerate() {
            *x *= [1.0, 1e-3, 300.0, 0.0][(i / c) % 4];
        }
        v[7] = f32::NAN;
        v[c + 3] = f32::INFINITY;
        let bytes: Vec<u8> = match dt {
            Dtype::BF16 => {
                bytemuck::cast_slice(&v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
                    .to_vec()
            }
            Dtype::F16 => {
                bytemuck::cast_slice(&v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>())
                    .to_vec()
            }
            _ => bytemuck::cast_slice(&v).to_vec(),
        };
        w.write(&bytes).unwrap();
        inputs.push(bytes);
    }
    w.finish().unwrap();
    let targets: Vec<String> = specs.iter().map(|s| s.0.to_string()).collect();
    let q = d.join("q.safetensors");
    let before = PARTS_QUANTIZED.load(std::sync::atomic::Ordering::Relaxed);
    for g in [
        Granularity::Channel,
        Granularity::Block(128, 128),
        Granularity::Block(100, 64),
        Granularity::Mx,
    ] {
        for rounding in [Rounding::Nearest, Rounding::Stochastic { seed: 9 }] {
            for threads in [1, 2, 3] {
                crate::threads::set_num_threads(threads).unwrap();
                let opts = QuantizeOptions {
                    format: Format::E4M3,
                    granularity: g,
                    layout: Layout::CompressedTensors,
                    rounding,
                    scale_dtype: None,
                };
                quantize_file(&src, &q, &targets, opts, None, true, &mut noop).unwrap();
                let f = SafetensorsFile::open(&q).unwrap();
                for (&(name, dt, rows, cols), bytes) in specs.iter().zip(&inputs) {
                    let rounding = match rounding {
                        Rounding::Stochastic { seed } => Rounding::Stochastic {
                            seed: tensor_seed(seed, name),
                        },
                        nearest => nearest,
                    };
                    let store = opts.scale_store(dt);
                    let mut codes = vec![0u8; rows * cols];
                    let whole = match dt {
                        Dtype::BF16 => scaled::quantize_weight_into(
                            bytemuck::cast_slice::<u8, bf16>(bytes),
                            rows,
                            cols,
                            Format::E4M3,
                            g,
                            rounding,
                            store,
                            &mut codes,
                        ),
                        Dtype::F16 => scaled::quantize_weight_into(
                            bytemuck::cast_slice::<u8, f16>(bytes),
                            rows,
                            cols,
                            Format::E4M3,
                            g,
                            rounding,
                            store,
                            &mut codes,
                        ),
                        _ => scaled::quantize_weight_into(
                            bytemuck::cast_slice::<u8, f32>(bytes),
                            rows,
                            cols,
                            Format::E4M3,
                            g,
                            rounding,
                            store,
                            &mut codes,
                        ),
                    }
                    .unwrap();
                    let what = format!("{name} {g:?} {rounding:?} threads {threads}");
                    let got = read_as::<u8>(&f, f.get(name).unwrap()).unwrap();
                    assert!(got == codes, "codes of {what}");
                    let scale = f.get(&format!("{name}_scale")).unwrap();
                    assert_eq!(
                        read_as::<u8>(&f, scale).unwrap(),
                        scale_bytes(whole, store),
                        "scales of {what}"
                    );
                }
            }
        }
    }
    crate::threads::set_num_threads(1).unwrap();
    let parts = PARTS_QUANTIZED.load(std::sync::atomic::Ordering::Relaxed) - before;
    // 4 granularities x 2 roundings x 3 thread counts x (2 + 1 + 1 pieces at least).
    assert!(
        parts >= 4 * 2 * 3 * 4,
        "the weights went through the pipelined path: {parts}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Parts are whole scale groups of rows of about 1 MiB of codes; a weight is quantized whole
/// for one scale per tensor, or when its parts in flight would pass PARTS_IN_FLIGHT_MAX (block
/// rows of a very wide weight, or very many threads). Such a weight quantizes, whole, to the
/// codes and scales of the reference.
#[test]
fn part_lengths_and_weights_too_wide_for_parts() {
    assert_eq!(part_len(Granularity::Channel, 4096, 2), Some(256 * 4096));
    assert_eq!(
        part_len(Granularity::Mx, 4000, 2),
        Some((1 << 20) / 4000 * 4000)
    );
    assert_eq!(
        part_len(Granularity::Block(128, 128), 4096, 2),
        Some(2 * 128 * 4096)
    );
    assert_eq!(
        part_len(Granularity::Block(128, 128), 14336, 2),
        Some(128 * 14336)
    );
    assert_eq!(part_len(Granularity::Tensor, 4096, 2), None);
    assert_eq!(part_len(Granularity::Channel, 0, 2), None);
    // 6 buffers of one 128-row block row each: over the limit from 180,225 columns.
    assert_eq!(
        part_len(Granularity::Block(128, 128), 180_224, 2),
        Some(128 * 180_224)
    );
    assert_eq!(part_len(Granularity::Block(128, 128), 180_225, 2), None);
    assert_eq!(part_len(Granularity::Channel, 4096, 65), Some(256 * 4096));
    assert_eq!(part_len(Granularity::Channel, 4096, 66), None);

    let d = tmpdir("wide");
    let src = d.join("wide.safetensors");
    let (rows, cols) = (130usize, 180_225usize);
    let x: Vec<bf16> = values(rows * cols, 3)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let plan = vec![OutTensor::new("w.weight", Dtype::BF16, vec![rows, cols])];
    let mut w = SafetensorsWriter::create(&src, plan, None, false).unwrap();
    w.write(bytemuck::cast_slice(&x)).unwrap();
    w.finish().unwrap();
    crate::threads::set_num_threads(2).unwrap();
    let q = d.join("q.safetensors");
    let g = Granularity::Block(128, 128);
    let opts = QuantizeOptions {
        format: Format::E4M3,
        granularity: g,
        layout: Layout::Fp8Block,
        rounding: Rounding::Nearest,
        scale_dtype: None,
    };
    quantize_file(
        &src,
        &q,
        &["w.weight".to_string()],
        opts,
        None,
        false,
        &mut noop,
    )
    .unwrap();
    let f = SafetensorsFile::open(&q).unwrap();
    let store = opts.scale_store(Dtype::BF16);
    let mut codes = vec![0u8; rows * cols];
    let whole = scaled::quantize_weight_into(
        &x,
        rows,
        cols,
        Format::E4M3,
        g,
        Rounding::Nearest,
        store,
        &mut codes,
    )
    .unwrap();
    assert!(read_as::<u8>(&f, f.get("w.weight").unwrap()).unwrap() == codes);
    let scale = f.get("w.weight_scale_inv").unwrap();
    assert_eq!(read_as::<u8>(&f, scale).unwrap(), scale_bytes(whole, store));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn deepseek_style_block_checkpoint_dequantizes_to_the_f64_reference() {
    let d = tmpdir("ds");
    let p = d.join("ds.safetensors");
    let (rows, cols) = (200, 300);
    let codes: Vec<u8> = (0..rows * cols)
        .map(|k| ((k * 131 + 7) % 256) as u8)
        .filter(|_| true)
        .collect();
    let codes: Vec<u8> = codes
        .into_iter()
        .map(|c| if c & 0x7F == 0x7F { 0x3C } else { c })
        .collect();
    let sshape = [2usize, 3];
    let scales: Vec<f32> = (0..6).map(|i| 0.001 * (i as f32 + 1.5)).collect();
    let plan = vec![
        OutTensor::new("l.weight", Dtype::F8_E4M3, vec![rows, cols]),
        OutTensor::new("l.weight_scale_inv", Dtype::F32, sshape.to_vec()),
    ];
    let mut w = SafetensorsWriter::create(&p, plan, None, false).unwrap();
    w.write(&codes).unwrap();
    w.write(bytemuck::cast_slice(&scales)).unwrap();
    w.finish().unwrap();
    let out = d.join("o.safetensors");
    dequantize_file(
        &p,
        &out,
        OutDtype::F32,
        &[],
        Some((128, 128)),
        None,
        false,
        &mut noop,
    )
    .unwrap();
    let f = SafetensorsFile::open(&out).unwrap();
    let y = read_as::<f32>(&f, f.get("l.weight").unwrap()).unwrap();
    for r in 0..rows {
        for c in 0..cols {
            let want = scalar::decode_f64(codes[r * cols + c], Format::E4M3)
                * f64::from(scales[(r / 128) * 3 + c / 128]);
            assert_eq!(y[r * cols + c], want as f32);
        }
    }
    // A scale of the wrong shape is an error naming it, and nothing is left behind.
    let bad = d.join("bad.safetensors");
    let plan = vec![
        OutTensor::new("l.weight", Dtype::F8_E4M3, vec![rows, cols]),
        OutTensor::new("l.weight_scale_inv", Dtype::F32, vec![3, 3]),
    ];
    let mut w = SafetensorsWriter::create(&bad, plan, None, false).unwrap();
    w.write(&codes).unwrap();
    w.write(&[0u8; 36]).unwrap();
    w.finish().unwrap();
    let dst = d.join("never.safetensors");
    let e = dequantize_file(
        &bad,
        &dst,
        OutDtype::BF16,
        &[],
        None,
        None,
        false,
        &mut noop,
    )
    .unwrap_err();
    assert!(e.to_string().contains("l.weight_scale_inv"), "{e}");
    assert!(!dst.exists());
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 3);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn refuses_to_overwrite_the_source_or_quantize_odd_tensors() {
    let d = tmpdir("refuse");
    let src = d.join("m.safetensors");
    write_model(&src);
    let opts = QuantizeOptions {
        format: Format::E4M3,
        granularity: Granularity::Channel,
        layout: Layout::CompressedTensors,
        rounding: Rounding::Nearest,
        scale_dtype: None,
    };
    let e = quantize_file(&src, &src, &[], opts, None, true, &mut noop).unwrap_err();
    assert!(e.to_string().contains("is the source"), "{e}");
    let q = d.join("q.safetensors");
    let e = quantize_file(
        &src,
        &q,
        &["model.norm.weight".into()],
        opts,
        None,
        false,
        &mut noop,
    )
    .unwrap_err();
    assert!(e.to_string().contains("only 2-D"), "{e}");
    let e = quantize_file(&src, &q, &["nope".into()], opts, None, false, &mut noop).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    // A failing progress callback (Ctrl-C) aborts and leaves nothing.
    let mut calls = 0;
    let mut cb = |_: Progress| {
        calls += 1;
        if calls > 2 {
            Err(Error::value("interrupted"))
        } else {
            Ok(())
        }
    };
    assert!(quantize_file(&src, &q, &[], opts, None, false, &mut cb).is_err());
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn codes_are_computed_against_the_scale_as_stored() {
    // Channel scales rounded to bf16 / f16 first (nearest-even, from float32(amax / 448)), then
    // every code is the saturating encode of x * float32(1 / stored scale).
    let (rows, cols) = (37, 300);
    let x: Vec<f32> = values(rows * cols, 7)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / cols) as f32 * 0.37))
        .collect();
    for store in [ScaleDtype::BF16, ScaleDtype::F16, ScaleDtype::F32] {
        let mut codes = vec![0u8; x.len()];
        let scales = scaled::quantize_weight_into(
            &x,
            rows,
            cols,
            Format::E4M3,
            Granularity::Channel,
            Rounding::Nearest,
            store,
            &mut codes,
        )
        .unwrap();
        let quant::Scales::F32(scales) = scales else {
            panic!("float scales expected")
        };
        let mut differ = 0;
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
            let exact = (amax / 448.0) as f32;
            let want = match store {
                ScaleDtype::BF16 => bf16::from_f32(exact).to_f32(),
                ScaleDtype::F16 => f16::from_f32(exact).to_f32(),
                ScaleDtype::F32 => exact,
            };
            assert_eq!(scales[r], want, "{store:?} row {r}");
            differ += usize::from(want != exact);
            let inv = 1.0 / want;
            for c in 0..cols {
                let q = scalar::encode_f32(row[c] * inv, Format::E4M3, true);
                assert_eq!(codes[r * cols + c], q, "{store:?} ({r}, {c})");
            }
        }
        // The rounding is real for the 16-bit stores (else the test checks nothing).
        assert_eq!(differ > rows / 2, store != ScaleDtype::F32, "{store:?}");
    }
}
