//! The errors the interface's methods reply with.

use zbus::DBusError;
use zbus::message::{Header, Message};
use zbus::names::ErrorName;

/// Name of the error `Start` replies with while an operation runs.
pub const ERROR_BUSY: &str = "org.seamlessreboot.Reboot1.Error.Busy";
/// The standard D-Bus error for a caller that is not allowed.
pub const ERROR_ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
/// The standard D-Bus error for arguments that cannot be used.
pub const ERROR_INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
/// The standard D-Bus error for anything else.
pub const ERROR_FAILED: &str = "org.freedesktop.DBus.Error.Failed";

/// A method's failure, as the caller sees it: a D-Bus error name and a
/// sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Another operation runs (or has handed the machine over to kexec).
    #[error("{0}")]
    Busy(String),
    /// The caller may not do this.
    #[error("{0}")]
    AccessDenied(String),
    /// The arguments cannot be used as given.
    #[error("{0}")]
    InvalidArgs(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl ServiceError {
    /// The D-Bus error name.
    pub fn error_name(&self) -> &'static str {
        match self {
            ServiceError::Busy(_) => ERROR_BUSY,
            ServiceError::AccessDenied(_) => ERROR_ACCESS_DENIED,
            ServiceError::InvalidArgs(_) => ERROR_INVALID_ARGS,
            ServiceError::Failed(_) => ERROR_FAILED,
        }
    }

    /// The human-readable description.
    pub fn message(&self) -> &str {
        match self {
            ServiceError::Busy(m)
            | ServiceError::AccessDenied(m)
            | ServiceError::InvalidArgs(m)
            | ServiceError::Failed(m) => m,
        }
    }
}

// Written by hand rather than derived: the derive gives every variant the
// same prefix, and AccessDenied must be the standard freedesktop name.
impl DBusError for ServiceError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        Message::error(call, self.name()).build(&(self.message(),))
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(self.error_name())
    }

    fn description(&self) -> Option<&str> {
        Some(self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_valid_and_distinct() {
        let all = [
            ServiceError::Busy("b".into()),
            ServiceError::AccessDenied("a".into()),
            ServiceError::InvalidArgs("i".into()),
            ServiceError::Failed("f".into()),
        ];
        let mut names: Vec<&str> = all.iter().map(ServiceError::error_name).collect();
        for name in &names {
            assert!(ErrorName::try_from(*name).is_ok(), "{name}");
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(ERROR_BUSY.starts_with(crate::INTERFACE));
        assert_eq!(all[1].description(), Some("a"));
    }
}
