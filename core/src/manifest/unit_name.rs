//! Unit names, and the file names of per-unit records derived from them.
//!
//! Unit names come from systemd and end up in file names (`unit-<name>.result`).
//! systemd allows `\` in names (its escaping, e.g. `a\x2db.service` for a path
//! `/a-b`), which shells and humans mangle, and a name must never be able to
//! produce `/` or `..` in a path. So names are first checked against
//! systemd's own rules (`src/basic/unit-name.c`: at most 255 bytes, only
//! `[A-Za-z0-9:_.\-@\\]`, a known type suffix after the last `.` with
//! something before it, at most one `@` and not in front), and then every byte outside
//! `[A-Za-z0-9:_.@-]` is written as `%XX`. `%` itself is never valid in a
//! unit name, so the mapping is unambiguous and reversible.

use std::fmt::Write as _;

/// Longest unit name systemd accepts (`UNIT_NAME_MAX` minus the NUL).
pub const MAX_UNIT_NAME_LEN: usize = 255;

/// Longest file name on Linux file systems.
const MAX_FILE_NAME_LEN: usize = 255;

const RESULT_PREFIX: &str = "unit-";
const RESULT_SUFFIX: &str = ".result";

/// The unit types systemd knows.
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// Why a string is not an acceptable unit name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitNameError {
    /// Empty name.
    #[error("the unit name is empty")]
    Empty,
    /// Longer than systemd allows.
    #[error("the unit name is {0} bytes long, over the limit of 255")]
    TooLong(usize),
    /// A character systemd does not allow in unit names.
    #[error("the unit name contains {0:?}, which systemd does not allow")]
    BadCharacter(char),
    /// Starts with `@` (a template or instance name needs a prefix).
    #[error("the unit name starts with '@'")]
    LeadingAt,
    /// More than one `@`.
    #[error("the unit name contains more than one '@'")]
    SeveralAt,
    /// No `.type` suffix, or an unknown type.
    #[error("the unit name has no known type suffix such as .service")]
    BadSuffix,
    /// Escaped, the name does not fit in a file name.
    #[error("the unit name is too long to derive a file name from")]
    TooLongForFileName,
}

/// Checks `name` against systemd's rules for unit names.
pub fn validate_unit_name(name: &str) -> Result<(), UnitNameError> {
    if name.is_empty() {
        return Err(UnitNameError::Empty);
    }
    if name.len() > MAX_UNIT_NAME_LEN {
        return Err(UnitNameError::TooLong(name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(c)))
    {
        return Err(UnitNameError::BadCharacter(c));
    }
    if name.starts_with('@') {
        return Err(UnitNameError::LeadingAt);
    }
    if name.matches('@').count() > 1 {
        return Err(UnitNameError::SeveralAt);
    }
    match name.rsplit_once('.') {
        Some((prefix, suffix)) if !prefix.is_empty() && UNIT_TYPES.contains(&suffix) => Ok(()),
        _ => Err(UnitNameError::BadSuffix),
    }
}

fn is_safe_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'@' | b'-')
}

/// `unit-<escaped name>.result`, the file that records `unit`'s outcome.
pub fn result_file_name(unit: &str) -> Result<String, UnitNameError> {
    validate_unit_name(unit)?;
    let mut out = String::with_capacity(RESULT_PREFIX.len() + unit.len() + RESULT_SUFFIX.len());
    out.push_str(RESULT_PREFIX);
    for b in unit.bytes() {
        if is_safe_byte(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out.push_str(RESULT_SUFFIX);
    if out.len() > MAX_FILE_NAME_LEN {
        return Err(UnitNameError::TooLongForFileName);
    }
    Ok(out)
}

/// The unit whose record `file_name` is, or `None` if it is not a result file
/// name produced by [`result_file_name`].
pub fn unit_from_result_file_name(file_name: &str) -> Option<String> {
    let escaped = file_name
        .strip_prefix(RESULT_PREFIX)?
        .strip_suffix(RESULT_SUFFIX)?;
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = escaped.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if is_safe_byte(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    let unit = String::from_utf8(out).ok()?;
    // Only names this module would have produced: canonical and valid.
    (result_file_name(&unit).ok()?.as_str() == file_name).then_some(unit)
}
