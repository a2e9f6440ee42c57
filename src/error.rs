//! The one error type of the library.
//!
//! Every failure a user can cause maps to one [`ErrorKind`]; the message says what was
//! wrong and where (file, field, tensor, token). The C ABI maps each kind to the stable,
//! explicitly numbered status code of the same name (`src/ffi/status.rs`; build.rs
//! generates the mapping, so a kind without a code does not compile), so adding detail to
//! a message never changes what a C caller sees in the status.

use std::fmt;
use std::path::Path;

/// What kind of failure this is. Stable: the C ABI maps each kind to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A file or directory could not be opened or read.
    Io,
    /// A model file is malformed (corrupt safetensors, bad JSON, wrong size).
    InvalidModel,
    /// The model is well-formed but uses something this engine does not support.
    Unsupported,
    /// A parameter passed by the caller is out of range or inconsistent.
    InvalidArgument,
    /// A token id is outside the model's vocabulary.
    InvalidToken,
    /// The sequence would exceed the context length.
    ContextFull,
    /// The memory budget is too small.
    OutOfMemory,
    /// The requested device is not available (e.g. CUDA without a driver).
    DeviceUnavailable,
    /// The tokenizer failed or is missing.
    Tokenizer,
    /// The operation was aborted by the caller.
    Aborted,
    /// A bug: an invariant of the library was violated.
    Internal,
    /// The call is not valid in the sequence's current state (a host-sampled iteration is
    /// open, or none is).
    InvalidState,
}

/// The library's error: a kind and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Result with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("{}: {err}", path.display()))
    }

    /// A malformed model file.
    pub fn invalid_model(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidModel, msg)
    }

    /// An unsupported model feature.
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, msg)
    }

    /// A bad argument from the caller.
    pub fn invalid_argument(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, msg)
    }

    /// A violated internal invariant.
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, msg)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
