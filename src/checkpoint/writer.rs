//! Writing safetensors files: streaming (header first, then each tensor's bytes in order, so
//! only one tensor needs to be in memory) and atomic (a temporary name in the destination's
//! folder, `fsync`, then `rename`; a writer dropped before [`SafetensorsWriter::finish`]
//! removes its temporary file, so a failed or interrupted run leaves nothing at the
//! destination).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

use rayon::prelude::*;

use super::file::{MAX_HEADER_LEN, PREFIX_LEN};
use crate::error::{Error, Result};
use crate::threads;

/// A file created under a temporary name next to its destination and renamed into place by
/// [`AtomicFile::commit`]; dropped uncommitted, the temporary file is deleted.
#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

/// A temporary path in `dest`'s folder, unique within this process and across processes.
pub fn temp_path_for(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dest
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}.fp8fast-tmp-{}-{n}", std::process::id()))
}

impl AtomicFile {
    /// Create the temporary file for `dest`. Refuses an existing `dest` unless `overwrite`.
    pub fn create(dest: &Path, overwrite: bool) -> Result<Self> {
        if !overwrite && dest.exists() {
            return Err(Error::value(format!(
                "{} already exists (use --force to overwrite)",
                dest.display()
            )));
        }
        let temp = temp_path_for(dest);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| Error::io(format!("cannot create {}", temp.display()), e))?;
        Ok(AtomicFile {
            dest: dest.to_owned(),
            temp,
            file: Some(file),
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flush to disk and rename into place.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("file present until commit");
        file.sync_all()
            .map_err(|e| Error::io(format!("cannot sync {}", self.temp.display()), e))?;
        drop(file);
        std::fs::rename(&self.temp, &self.dest).map_err(|e| {
            Error::io(
                format!(
                    "cannot rename {} to {}",
                    self.temp.display(),
                    self.dest.display()
                ),
                e,
            )
        })?;
        // Make the rename itself durable; not every platform can open a directory, and a
        // failure here does not make the file wrong, so it is not an error.
        if let Some(dir) = self.dest.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            self.file = None;
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A tensor to be written: its header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutTensor {
    /// Name in the header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl OutTensor {
    /// A header entry.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        OutTensor {
            name: name.into(),
            dtype,
            shape,
        }
    }

    fn nbytes(&self) -> Result<u64> {
        let bits = self
            .shape
            .iter()
            .try_fold(self.dtype.bitsize() as u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| {
                Error::value(format!(
                    "tensor {:?}: shape {:?} overflows",
                    self.name, self.shape
                ))
            })?;
        if bits % 8 != 0 {
            return Err(Error::value(format!(
                "tensor {:?}: {} elements of {} are not a whole number of bytes",
                self.name,
                bits / self.dtype.bitsize() as u64,
                self.dtype
            )));
        }
        Ok(bits / 8)
    }
}

/// The serialized header for `tensors` laid out in the given order, padded with spaces to a
/// multiple of 8 bytes (as the `safetensors` crate does, so the data section is aligned).
pub fn header_bytes(
    tensors: &[OutTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<(Vec<u8>, Vec<u64>)> {
    let mut offset = 0u64;
    let mut infos = Vec::with_capacity(tensors.len());
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(Error::value(format!("tensor {:?} appears twice", t.name)));
        }
        if t.name == "__metadata__" {
            return Err(Error::value("\"__metadata__\" cannot be a tensor name"));
        }
        let n = t.nbytes()?;
        let end = offset
            .checked_add(n)
            .ok_or_else(|| Error::value("total tensor size overflows"))?;
        let to_usize =
            |v: u64| usize::try_from(v).map_err(|_| Error::value("total tensor size overflows"));
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (to_usize(offset)?, to_usize(end)?),
            },
        ));
        sizes.push(n);
        offset = end;
    }
    // The JSON is built here rather than with the crate's `Metadata` serializer: that one
    // passes a length hint of 0 to serde_json for zero tensors with an empty `__metadata__`,
    // and serde_json then writes `{}` before the entry, an invalid header (found by the
    // header fuzzer, tests/fuzz). The crate still checks the offsets.
    let mut map = serde_json::Map::new();
    if let Some(m) = &metadata {
        map.insert("__metadata__".into(), serde_json::json!(m));
    }
    for (name, info) in &infos {
        map.insert(
            name.clone(),
            serde_json::json!({
                "dtype": info.dtype.to_string(),
                "shape": info.shape,
                "data_offsets": [info.data_offsets.0, info.data_offsets.1],
            }),
        );
    }
    Metadata::new(metadata, infos)
        .map_err(|e| Error::value(format!("invalid tensor list: {e}")))?;
    let mut json = serde_json::to_vec(&serde_json::Value::Object(map))
        .map_err(|e| Error::value(format!("cannot serialize the header: {e}")))?;
    let padded = json.len().div_ceil(8) * 8;
    json.resize(padded, b' ');
    if json.len() as u64 > MAX_HEADER_LEN {
        return Err(Error::value(format!(
            "header of {} bytes exceeds the 100 MB safetensors limit",
            json.len()
        )));
    }
    Ok((json, sizes))
}

/// Streams one safetensors file: the header is written at creation, then the bytes of each
/// tensor in the order given, then [`finish`](Self::finish) renames the file into place.
#[derive(Debug)]
pub struct SafetensorsWriter {
    atomic: AtomicFile,
    out: BufWriter<File>,
    tensors: Vec<OutTensor>,
    sizes: Vec<u64>,
    current: usize,
    written: u64,
    /// Absolute file position of the next byte.
    pos: u64,
}

/// Writes at least this large are split into pieces written concurrently at their offsets:
/// copying into the page cache is CPU work, and a single writer thread would leave the other
/// cores idle between conversions.
const PARALLEL_WRITE_MIN: usize = 4 << 20;
/// Piece size of parallel positional reads and writes.
pub(crate) const IO_PIECE: usize = 2 << 20;

#[cfg(unix)]
fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        match file.seek_write(bytes, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl SafetensorsWriter {
    /// Start writing `dest` (under a temporary name) with this tensor list and metadata.
    pub fn create(
        dest: &Path,
        tensors: Vec<OutTensor>,
        metadata: Option<HashMap<String, String>>,
        overwrite: bool,
    ) -> Result<Self> {
        if cfg!(target_endian = "big") {
            return Err(Error::value(
                "safetensors files are little-endian; this platform is not",
            ));
        }
        let (header, sizes) = header_bytes(&tensors, metadata)?;
        let mut atomic = AtomicFile::create(dest, overwrite)?;
        let file = atomic
            .file()
            .try_clone()
            .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let io = |e| Error::io(format!("cannot write {}", dest.display()), e);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&header).map_err(io)?;
        let mut w = SafetensorsWriter {
            atomic,
            out,
            tensors,
            sizes,
            current: 0,
            written: 0,
            pos: PREFIX_LEN + header.len() as u64,
        };
        w.skip_empty();
        Ok(w)
    }

    fn skip_empty(&mut self) {
        while self.current < self.sizes.len() && self.written == self.sizes[self.current] {
            self.current += 1;
            self.written = 0;
        }
    }

    /// The tensor the next bytes belong to, if any remain.
    pub fn current_tensor(&self) -> Option<&OutTensor> {
        self.tensors.get(self.current)
    }

    /// Append bytes of the current tensor; they may not run past its end.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some(t) = self.tensors.get(self.current) else {
            return Err(Error::value(format!(
                "{}: more bytes than the header declares",
                self.atomic.dest().display()
            )));
        };
        let left = self.sizes[self.current] - self.written;
        if bytes.len() as u64 > left {
            return Err(Error::value(format!(
                "{}: {} bytes for tensor {:?}, which has {left} left",
                self.atomic.dest().display(),
                bytes.len(),
                t.name
            )));
        }
        let context = || {
            format!(
                "cannot write tensor {:?} to {}",
                t.name,
                self.atomic.dest().display()
            )
        };
        if bytes.len() >= PARALLEL_WRITE_MIN && threads::num_threads() > 1 {
            let pos = self.pos;
            self.out.flush().map_err(|e| Error::io(context(), e))?;
            let file = self.out.get_ref();
            threads::run(|| {
                bytes
                    .par_chunks(IO_PIECE)
                    .enumerate()
                    .try_for_each(|(i, piece)| {
                        write_all_at(file, piece, pos + (i * IO_PIECE) as u64)
                    })
            })
            .map_err(|e| Error::io(context(), e))?;
            self.out
                .seek(SeekFrom::Start(pos + bytes.len() as u64))
                .map_err(|e| Error::io(context(), e))?;
        } else {
            self.out
                .write_all(bytes)
                .map_err(|e| Error::io(context(), e))?;
        }
        self.pos += bytes.len() as u64;
        self.written += bytes.len() as u64;
        self.skip_empty();
        Ok(())
    }

    /// Check that every tensor was written in full, then sync and rename into place.
    pub fn finish(mut self) -> Result<()> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(Error::value(format!(
                "{}: tensor {:?} was not written in full",
                self.atomic.dest().display(),
                t.name
            )));
        }
        let dest = self.atomic.dest().to_owned();
        self.out
            .flush()
            .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
        drop(self.out);
        self.atomic.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::file::SafetensorsFile;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fp8fast-writer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_and_reads_back() {
        let d = tmpdir("rw");
        let p = d.join("a.safetensors");
        let tensors = vec![
            OutTensor::new("w", Dtype::F8_E4M3, vec![2, 3]),
            OutTensor::new("empty", Dtype::F32, vec![0]),
            OutTensor::new("s", Dtype::F32, vec![]),
        ];
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let mut w = SafetensorsWriter::create(&p, tensors, Some(meta), false).unwrap();
        w.write(&[1, 2, 3]).unwrap();
        w.write(&[4, 5, 6]).unwrap();
        assert_eq!(w.current_tensor().unwrap().name, "s");
        w.write(&1.5f32.to_le_bytes()).unwrap();
        assert!(w.write(&[0]).is_err());
        w.finish().unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!((f.header_len() + 8) % 8, 0);
        let t = f.get("w").unwrap();
        let mut buf = vec![0; 6];
        f.read_tensor(t, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4, 5, 6]);
        assert_eq!(f.metadata().unwrap()["format"], "pt");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        // No overwrite without permission.
        assert!(SafetensorsWriter::create(&p, vec![], None, false).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn large_tensors_go_through_parallel_positional_io_intact() {
        let d = tmpdir("par");
        // Sizes around the piece boundaries, odd lengths, and a small tensor between big ones
        // so the buffered and positional paths interleave.
        let sizes = [
            9 * IO_PIECE / 2 + 3,
            17,
            4 * IO_PIECE,
            PARALLEL_WRITE_MIN - 1,
        ];
        let data: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| (i * 31 + k * 7 + (i >> 13)) as u8).collect())
            .collect();
        for threads in [1, 2] {
            crate::threads::set_num_threads(threads).unwrap();
            let p = d.join(format!("p{threads}.safetensors"));
            let plan = sizes
                .iter()
                .enumerate()
                .map(|(k, &n)| OutTensor::new(format!("t{k}"), Dtype::U8, vec![n]))
                .collect();
            let mut w = SafetensorsWriter::create(&p, plan, None, false).unwrap();
            for v in &data {
                w.write(v).unwrap();
            }
            w.finish().unwrap();
            let f = SafetensorsFile::open(&p).unwrap();
            for (k, v) in data.iter().enumerate() {
                let t = f.get(&format!("t{k}")).unwrap();
                let mut back = vec![0u8; v.len()];
                f.read_tensor(t, &mut back).unwrap();
                assert!(back == *v, "tensor {k} with {threads} threads");
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn headers_with_no_tensors_are_valid_json() {
        // The fuzzer's find: no tensors and an empty (but present) __metadata__.
        for meta in [
            None,
            Some(HashMap::new()),
            Some(HashMap::from([("a".into(), "b".into())])),
        ] {
            let (h, _) = header_bytes(&[], meta.clone()).unwrap();
            let mut image = (h.len() as u64).to_le_bytes().to_vec();
            image.extend_from_slice(&h);
            let (tensors, back) = crate::checkpoint::file::validate_image(&image).unwrap();
            assert!(tensors.is_empty());
            assert_eq!(back, meta);
        }
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing() {
        let d = tmpdir("drop");
        let p = d.join("b.safetensors");
        {
            let mut w = SafetensorsWriter::create(
                &p,
                vec![OutTensor::new("w", Dtype::U8, vec![4])],
                None,
                false,
            )
            .unwrap();
            w.write(&[1, 2]).unwrap();
        }
        let w = SafetensorsWriter::create(
            &p,
            vec![OutTensor::new("w", Dtype::U8, vec![4])],
            None,
            false,
        )
        .unwrap();
        assert!(w.finish().is_err());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        assert!(header_bytes(
            &[
                OutTensor::new("x", Dtype::U8, vec![1]),
                OutTensor::new("x", Dtype::U8, vec![1])
            ],
            None
        )
        .is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
