//! The crate's error type. The Python layer maps each kind to one exception class.

use thiserror::Error as ThisError;

/// Every failure fp8fast reports. Nothing in the crate panics on bad input.
#[derive(Debug, ThisError)]
pub enum Error {
    /// An argument has the wrong value or shape (Python `ValueError`).
    #[error("{0}")]
    Value(String),
    /// An argument has an unsupported type or dtype (Python `TypeError`).
    #[error("{0}")]
    Type(String),
    /// Memory for a buffer sized by the input could not be allocated (Python `MemoryError`).
    #[error("{0}")]
    Memory(String),
    /// Reading or writing a file failed (Python `OSError`).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A `ValueError`-kind error.
    pub fn value(msg: impl Into<String>) -> Self {
        Error::Value(msg.into())
    }

    /// A `TypeError`-kind error.
    pub fn type_error(msg: impl Into<String>) -> Self {
        Error::Type(msg.into())
    }

    /// A `MemoryError`-kind error.
    pub fn memory(msg: impl Into<String>) -> Self {
        Error::Memory(msg.into())
    }

    /// An I/O error with context naming the file.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
