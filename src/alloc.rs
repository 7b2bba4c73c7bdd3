//! Fallible allocation of buffers sized by the input. A request the allocator refuses (or one
//! larger than the address space) is an error naming its size and purpose, never an abort of
//! the process: a memory limit, a huge broadcast view or a huge tensor in a checkpoint must end
//! in `MemoryError` in Python and in one error line on the command line.

use std::path::Path;

use crate::error::{Error, Result};

/// An allocation of `bytes` bytes the allocator refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The size asked for (it may exceed `usize`).
    pub bytes: u128,
}

impl Refused {
    /// `count` elements of `T`, the size computed without overflow.
    pub(crate) fn of<T>(count: usize) -> Refused {
        Refused {
            bytes: count as u128 * std::mem::size_of::<T>() as u128,
        }
    }

    /// An [`Error::Memory`] saying what the memory was for.
    pub fn for_what(self, what: &str) -> Error {
        Error::memory(format!("cannot allocate {} bytes for {what}", self.bytes))
    }

    /// An [`Error::Memory`] naming the checkpoint `file` and tensor `name` being converted.
    pub fn in_tensor(self, file: &Path, name: &str, what: &str) -> Error {
        Error::memory(format!(
            "{}: tensor {name:?}: cannot allocate {} bytes for {what} (out of memory, or over \
             the process's address-space limit)",
            file.display(),
            self.bytes
        ))
    }
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Error {
        r.for_what("a buffer")
    }
}

/// Resize `v` to at least `len` elements (new ones `value`); a `v` already that long is left
/// alone.
pub fn grow<T: Clone>(v: &mut Vec<T>, len: usize, value: T) -> Result<(), Refused> {
    if v.len() >= len {
        return Ok(());
    }
    v.try_reserve_exact(len - v.len())
        .map_err(|_| Refused::of::<T>(len))?;
    v.resize(len, value);
    Ok(())
}

/// A vector of `count` copies of `value`.
pub fn filled<T: Clone>(count: usize, value: T) -> Result<Vec<T>, Refused> {
    let mut v = Vec::new();
    grow(&mut v, count, value)?;
    Ok(v)
}

/// A vector of `count` copies of `value`, or an [`Error::Memory`] naming `what`.
pub fn filled_for<T: Clone>(count: usize, value: T, what: &str) -> Result<Vec<T>> {
    filled(count, value).map_err(|r| r.for_what(what))
}

/// `items` (at most `count` of them) collected into a vector allocated fallibly.
pub fn collect<T>(count: usize, items: impl IntoIterator<Item = T>) -> Result<Vec<T>, Refused> {
    let mut v = Vec::new();
    v.try_reserve_exact(count)
        .map_err(|_| Refused::of::<T>(count))?;
    v.extend(items.into_iter().take(count));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_memory_errors() {
        let e = filled_for(usize::MAX / 2, 0u8, "a test buffer").unwrap_err();
        assert!(matches!(e, Error::Memory(_)), "{e:?}");
        assert!(e.to_string().contains("a test buffer"), "{e}");
        let r = filled(usize::MAX / 4, 0u64).unwrap_err();
        assert_eq!(r.bytes, (usize::MAX / 4) as u128 * 8);
        let e = r.in_tensor(Path::new("m.safetensors"), "w", "its codes");
        assert_eq!(
            e.to_string().split(" (").next().unwrap(),
            format!(
                "m.safetensors: tensor \"w\": cannot allocate {} bytes for its codes",
                r.bytes
            )
        );
        // black_box: an allocation whose vector is never used may be elided by the optimiser
        // (release builds), which would make an impossible request "succeed".
        assert!(std::hint::black_box(collect(usize::MAX / 8, std::iter::empty::<u32>())).is_err());
    }

    #[test]
    fn grow_keeps_contents_and_never_shrinks() {
        let mut v = vec![7u8; 3];
        grow(&mut v, 5, 0).unwrap();
        assert_eq!(v, [7, 7, 7, 0, 0]);
        grow(&mut v, 2, 9).unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(filled(4, 1.5f32).unwrap(), [1.5; 4]);
        assert_eq!(collect(2, [1, 2, 3]).unwrap(), [1, 2]);
    }
}
