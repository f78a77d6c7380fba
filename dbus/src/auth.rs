//! Who may use the interface.
//!
//! `Check` and `Start` both need the caller to be authorized: `Start`
//! replaces the running kernel, and even the dry run reads other users'
//! processes and connections. The rule, in [`PolkitAuthorizer`]: a caller
//! whose connection belongs to uid 0 may; anybody else may if polkit says so
//! for the method's action: [`POLKIT_ACTION_CHECK`](crate::POLKIT_ACTION_CHECK) (an active local
//! administrator, without authenticating, by the shipped rule) or
//! [`POLKIT_ACTION_START`](crate::POLKIT_ACTION_START) (an administrator who authenticates for this
//! update: no authorization is kept, so a process of the same session cannot
//! start another one behind the admin's back; the kernel, initrd, appended
//! arguments and units are in the action's details, which the
//! authentication dialog shows). See `units/polkit-1/`. Nothing else is
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

/// A polkit action and the details shown to the administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub id: &'static str,
    pub details: Vec<(&'static str, String)>,
}

/// Decides whether the connection with the unique bus name `sender` may
/// do `action`.
pub trait Authorizer: Send + Sync {
    fn authorize<'a>(&'a self, sender: &'a str, action: &'a Action) -> AuthFuture<'a>;
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

    async fn decide(&self, sender: &str, action: &Action) -> Result<Authorized, String> {
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
                 (polkit action {}); run it as root, or as an \
                 administrator who can authenticate",
                action.id
            )
        };
        let authority = AuthorityProxy::new(&self.connection)
            .await
            .map_err(|e| denied(&format!("polkit could not be asked ({e})")))?;
        let subject = (
            "system-bus-name",
            HashMap::from([("name", Variant::from(sender))]),
        );
        let details: HashMap<&str, &str> = action
            .details
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect();
        let AuthorizationResult {
            is_authorized: authorized,
            is_challenge: challenge,
            ..
        } = authority
            .check_authorization(&subject, action.id, &details, ALLOW_USER_INTERACTION, "")
            .await
            .map_err(|e| denied(&format!("polkit could not be asked ({e})")))?;
        if authorized {
            Ok(Authorized {
                who: format!("uid {uid} (polkit {})", action.id),
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
    fn authorize<'a>(&'a self, sender: &'a str, action: &'a Action) -> AuthFuture<'a> {
        Box::pin(self.decide(sender, action))
    }
}

/// For tests: allows the listed senders (or everybody), and records who
/// asked, and for which action.
#[derive(Debug, Default)]
pub struct ListAuthorizer {
    allow_all: bool,
    allowed: HashSet<String>,
    asked: Mutex<Vec<String>>,
    actions: Mutex<Vec<Action>>,
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

    /// Every action asked about, in order.
    pub fn actions(&self) -> Vec<Action> {
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Authorizer for ListAuthorizer {
    fn authorize<'a>(&'a self, sender: &'a str, action: &'a Action) -> AuthFuture<'a> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sender.to_string());
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(action.clone());
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
    use crate::POLKIT_ACTION_CHECK;

    #[test]
    fn subject_has_polkits_signature() {
        type Subject<'a> = (&'a str, HashMap<&'a str, Variant<'a>>);
        assert_eq!(Subject::SIGNATURE.to_string(), "(sa{sv})");
        assert_eq!(HashMap::<&str, &str>::SIGNATURE.to_string(), "a{ss}");
        assert_eq!(AuthorizationResult::SIGNATURE.to_string(), "(bba{ss})");
    }

    #[test]
    fn list_authorizer_allows_the_listed() {
        let action = Action {
            id: POLKIT_ACTION_CHECK,
            details: Vec::new(),
        };
        let a = ListAuthorizer::allowing([":1.7"]);
        assert!(zbus::block_on(a.authorize(":1.7", &action)).is_ok());
        assert!(zbus::block_on(a.authorize(":1.8", &action)).is_err());
        assert_eq!(a.asked(), vec![":1.7", ":1.8"]);
        assert_eq!(a.actions().len(), 2);
        assert!(zbus::block_on(ListAuthorizer::allow_all().authorize(":1.9", &action)).is_ok());
        assert!(zbus::block_on(ListAuthorizer::deny_all().authorize(":1.9", &action)).is_err());
    }
}
