//! Errors of loading the configuration.
//!
//! Every error that concerns the content of a file carries a [`Location`]
//! (file and 1-based line) and, where one applies, the dotted key path, so the
//! message alone tells the operator what to edit.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A position in a configuration file: the file's path and a 1-based line.
///
/// Displays as `path:line`, the form editors and `grep -n` use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as it was opened (the root directory joined with the search path).
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// Why the configuration could not be loaded.
///
/// The doc comment of each variant is its message. The underlying I/O error of
/// [`ConfigError::Read`] and [`ConfigError::ReadDir`] is part of the message and
/// deliberately not exposed as [`std::error::Error::source`], so that error
/// chain printers do not show it twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `{path}: cannot read: {error}`
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        /// The file that exists but could not be read.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },

    /// `{path}: cannot list drop-in directory: {error}`
    #[error("{}: cannot list drop-in directory: {error}", path.display())]
    ReadDir {
        /// The drop-in directory.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },

    /// `{at}: file is not valid UTF-8`
    #[error("{at}: file is not valid UTF-8")]
    NotUtf8 {
        /// File and line of the first invalid byte.
        at: Location,
    },

    /// `{at}: TOML syntax error: {message}`
    #[error("{at}: TOML syntax error: {message}")]
    Syntax {
        /// File and line the parser stopped at.
        at: Location,
        /// The parser's description of the problem.
        message: String,
    },

    /// `{at}: unknown key `{key}``
    #[error("{at}: unknown key `{key}`")]
    UnknownKey {
        /// File and line of the key.
        at: Location,
        /// Full dotted key path, e.g. `timeouts.chekpoint_s`.
        key: String,
    },

    /// `{at}: {key}: expected {expected}, got {found}`
    #[error("{at}: {key}: expected {expected}, got {found}")]
    WrongType {
        /// File and line of the value.
        at: Location,
        /// Full dotted key path; array elements as `units[1]`.
        key: String,
        /// The TOML type the key takes, e.g. `integer`, `array of strings`.
        expected: &'static str,
        /// The TOML type found, e.g. `string`.
        found: &'static str,
    },

    /// `{at}: {key}: must be between {min} and {max}, got {value}`
    #[error("{at}: {key}: must be between {min} and {max}, got {value}")]
    OutOfRange {
        /// File and line of the value.
        at: Location,
        /// Full dotted key path.
        key: String,
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
        /// The value as written.
        value: String,
    },

    /// `{at}: {key}: invalid unit name `{name}`: {reason}`
    #[error("{at}: {key}: invalid unit name `{name}`: {reason}")]
    InvalidUnitName {
        /// File and line of the array element.
        at: Location,
        /// Key path of the element, e.g. `units[0]`.
        key: String,
        /// The name as written.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// `{at}: {key}: duplicate unit `{name}` (already listed at line {first_line})`
    #[error("{at}: {key}: duplicate unit `{name}` (already listed at line {first_line})")]
    DuplicateUnit {
        /// File and line of the second occurrence.
        at: Location,
        /// Key path of the second occurrence, e.g. `units[2]`.
        key: String,
        /// The unit name.
        name: String,
        /// Line of the first occurrence in the same file.
        first_line: usize,
    },

    /// `{at}: {key}: must be an absolute path, got `{value}``
    #[error("{at}: {key}: must be an absolute path, got `{value}`")]
    RelativePath {
        /// File and line of the value.
        at: Location,
        /// Full dotted key path.
        key: String,
        /// The path as written.
        value: String,
    },

    /// `{at}: {key}: {message}` — a value outside an enumeration; the message
    /// comes from serde and lists the accepted values, e.g.
    /// ``unknown variant `fifo`, expected `drop` or `queue` ``.
    #[error("{at}: {key}: {message}")]
    UnknownVariant {
        /// File and line of the value.
        at: Location,
        /// Full dotted key path.
        key: String,
        /// What is wrong and which values are accepted.
        message: String,
    },

    /// `{at}: {key}: invalid kernel command line argument `{value}`: {reason}`
    #[error("{at}: {key}: invalid kernel command line argument `{value}`: {reason}")]
    InvalidKernelArg {
        /// File and line of the array element.
        at: Location,
        /// Key path of the element, e.g. `kernel.append[0]`.
        key: String,
        /// The argument as written (control characters escaped).
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

impl ConfigError {
    /// File and line the error points at; `None` for [`ConfigError::Read`] and
    /// [`ConfigError::ReadDir`], which concern a whole file or directory.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Read { .. } | Self::ReadDir { .. } => None,
            Self::NotUtf8 { at }
            | Self::Syntax { at, .. }
            | Self::UnknownKey { at, .. }
            | Self::WrongType { at, .. }
            | Self::OutOfRange { at, .. }
            | Self::InvalidUnitName { at, .. }
            | Self::DuplicateUnit { at, .. }
            | Self::RelativePath { at, .. }
            | Self::UnknownVariant { at, .. }
            | Self::InvalidKernelArg { at, .. } => Some(at),
        }
    }

    /// The file the error concerns (for `ReadDir`, the directory).
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::Read { path, .. } | Self::ReadDir { path, .. } => path,
            Self::NotUtf8 { at }
            | Self::Syntax { at, .. }
            | Self::UnknownKey { at, .. }
            | Self::WrongType { at, .. }
            | Self::OutOfRange { at, .. }
            | Self::InvalidUnitName { at, .. }
            | Self::DuplicateUnit { at, .. }
            | Self::RelativePath { at, .. }
            | Self::UnknownVariant { at, .. }
            | Self::InvalidKernelArg { at, .. } => &at.path,
        }
    }
}
