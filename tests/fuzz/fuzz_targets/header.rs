//! Fuzz target: arbitrary bytes as a whole safetensors file image.
//!
//! Properties checked on every input: validation never panics; an accepted file's tensors
//! lie inside the image, follow each other with no overlap or hole up to its end, and have
//! `shape x dtype size == byte span`; re-serializing the accepted header with the writer gives
//! an image that validates to the same tensors.
#![no_main]

use fp8fast::checkpoint::file::validate_image;
use fp8fast::checkpoint::writer::{header_bytes, OutTensor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((tensors, meta)) = validate_image(data) else {
        return;
    };
    let len = data.len() as u64;
    let data_start = 8 + u64::from_le_bytes(data[..8].try_into().unwrap());
    let mut expected = data_start;
    for t in &tensors {
        assert_eq!(t.start, expected, "hole or overlap before {:?}", t.name);
        assert!(t.start <= t.end && t.end <= len);
        let bits = t.shape.iter().map(|&d| d as u128).product::<u128>() * t.dtype.bitsize() as u128;
        assert_eq!(bits, u128::from(t.end - t.start) * 8, "{:?}", t.name);
        expected = t.end;
    }
    assert_eq!(expected, len);
    let plan: Vec<OutTensor> = tensors
        .iter()
        .map(|t| OutTensor::new(t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let (header, _) = header_bytes(&plan, meta.clone()).expect("an accepted header re-serializes");
    let mut image = (header.len() as u64).to_le_bytes().to_vec();
    image.extend_from_slice(&header);
    image.extend_from_slice(&data[data_start as usize..]);
    let (again, meta2) = validate_image(&image).expect("the writer's header validates");
    assert_eq!(meta, meta2);
    let names = |v: &[fp8fast::checkpoint::TensorEntry]| {
        v.iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.end - t.start))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&tensors), names(&again));
});
