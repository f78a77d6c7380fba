//! Who may use the interface.
//!
//! `Check` and `Start` both need the caller to be authorized: `Start`
//! replaces the running kernel, and even the dry run reads other users'
//! processes and connections. The rule, in [`PolkitAuthorizer`]: a caller
//! whose connection belongs to uid 0 may; anybody else may if polkit says so
//! for the action [`POLKIT_ACTION`] (by default an active local
//! administrator after authenticating, kept for a few minutes, see
//! `units/polkit-1/actions/org.seamlessreboot.policy`). Nothing else is
//! trusted: not the bus policy (which lets everybody send), not anything in
//! the message.
//!
//! The decision sits behind [`Authorizer`] so the interface can be tested
//! with [`ListAuthorizer`] and no polkit.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use zbus::names::BusName;
use zbus::{Connection, Type, Variant, proxy};

use crate::POLKIT_ACTION;

/// polkit's `CheckAuthorizationFlags.AllowUserInteraction`.
pub const ALLOW_USER_INTERACTION: u32 = 1;

/// A caller that may go ahead, described for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// E.g. `uid 0` or `uid 1000 (polkit)`.
    pub who: String,
}

/// The future an [`Authorizer`] answers with: who, or why not (a sentence
/// for the caller).
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Authorized, String>> + Send + 'a>>;

/// Decides whether the connection with the unique bus name `sender` may
/// use the interface.
pub trait Authorizer: Send + Sync {
    fn authorize<'a>(&'a self, sender: &'a str) -> AuthFuture<'a>;
}

/// polkit's authority, reduced to the one method used.
#[proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
pub trait Authority {
    /// `CheckAuthorization(subject (sa{sv}), action_id s, details a{ss},
    /// flags u, cancellation_id s) -> result (bba{ss})`.
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Variant<'_>>),
        action_id: &str,
        details: &HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<AuthorizationResult>;
}

/// polkit's `AuthorizationResult`: one struct `(bba{ss})`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Type)]
pub struct AuthorizationResult {
    pub is_authorized: bool,
    pub is_challenge: bool,
    pub details: HashMap<String, String>,
}

/// The real rule: uid 0, or polkit's yes.
#[derive(Debug, Clone)]
pub struct PolkitAuthorizer {
    connection: Connection,
}

impl PolkitAuthorizer {
    /// Asks the bus and polkit over `connection` (the daemon's own).
    pub fn new(connection: Connection) -> Self {
        PolkitAuthorizer { connection }
    }

    async fn decide(&self, sender: &str) -> Result<Authorized, String> {
        let name = BusName::try_from(sender)
            .map_err(|e| format!("the caller's bus name {sender:?} is not valid: {e}"))?;
        let bus = zbus::fdo::DBusProxy::new(&self.connection)
            .await
            .map_err(|e| format!("cannot ask the bus who {sender} is: {e}"))?;
        let uid = bus
            .get_connection_unix_user(name)
            .await
            .map_err(|e| format!("cannot tell which user {sender} is: {e}"))?;
        if uid == 0 {
            return Ok(Authorized {
                who: "uid 0".into(),
            });
        }
        let denied = |why: &str| {
            format!(
                "uid {uid} is not allowed to use seamless-reboot: {why} \
                 (polkit action {POLKIT_ACTION}); run it as root, or as an \
                 administrator who can authenticate"
            )
        };
        let authority = AuthorityProxy::new(&self.connection)
            .await
            .map_err(|e| denied(&format!("polkit could not be asked ({e})")))?;
        let subject = (
            "system-bus-name",
            HashMap::from([("name", Variant::from(sender))]),
        );
        let AuthorizationResult {
            is_authorized: authorized,
            is_challenge: challenge,
            ..
        } = authority
            .check_authorization(
                &subject,
                POLKIT_ACTION,
                &HashMap::new(),
                ALLOW_USER_INTERACTION,
                "",
            )
            .await
            .map_err(|e| denied(&format!("polkit could not be asked ({e})")))?;
        if authorized {
            Ok(Authorized {
                who: format!("uid {uid} (polkit)"),
            })
        } else if challenge {
            Err(denied(
                "authentication is required and no polkit authentication agent \
                 answered (start one, e.g. pkttyagent, or use a desktop session)",
            ))
        } else {
            Err(denied("polkit said no"))
        }
    }
}

impl Authorizer for PolkitAuthorizer {
    fn authorize<'a>(&'a self, sender: &'a str) -> AuthFuture<'a> {
        Box::pin(self.decide(sender))
    }
}

/// For tests: allows the listed senders (or everybody), and records who
/// asked.
#[derive(Debug, Default)]
pub struct ListAuthorizer {
    allow_all: bool,
    allowed: HashSet<String>,
    asked: Mutex<Vec<String>>,
}

impl ListAuthorizer {
    /// Allows nobody.
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Allows everybody.
    pub fn allow_all() -> Self {
        ListAuthorizer {
            allow_all: true,
            ..Self::default()
        }
    }

    /// Allows exactly these senders.
    pub fn allowing<I: IntoIterator<Item = S>, S: Into<String>>(senders: I) -> Self {
        ListAuthorizer {
            allowed: senders.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Every sender asked about, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Authorizer for ListAuthorizer {
    fn authorize<'a>(&'a self, sender: &'a str) -> AuthFuture<'a> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sender.to_string());
        let result = if self.allow_all || self.allowed.contains(sender) {
            Ok(Authorized {
                who: format!("{sender} (listed)"),
            })
        } else {
            Err(format!("{sender} is not allowed (test authorizer)"))
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_has_polkits_signature() {
        type Subject<'a> = (&'a str, HashMap<&'a str, Variant<'a>>);
        assert_eq!(Subject::SIGNATURE.to_string(), "(sa{sv})");
        assert_eq!(HashMap::<&str, &str>::SIGNATURE.to_string(), "a{ss}");
        assert_eq!(AuthorizationResult::SIGNATURE.to_string(), "(bba{ss})");
    }

    #[test]
    fn list_authorizer_allows_the_listed() {
        let a = ListAuthorizer::allowing([":1.7"]);
        assert!(zbus::block_on(a.authorize(":1.7")).is_ok());
        assert!(zbus::block_on(a.authorize(":1.8")).is_err());
        assert_eq!(a.asked(), vec![":1.7", ":1.8"]);
        assert!(zbus::block_on(ListAuthorizer::allow_all().authorize(":1.9")).is_ok());
        assert!(zbus::block_on(ListAuthorizer::deny_all().authorize(":1.9")).is_err());
    }
}
