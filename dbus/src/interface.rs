//! The zbus object: `org.seamlessreboot.Reboot1` at `/org/seamlessreboot/Reboot1`.
//!
//! A thin adapter: it takes the caller's unique name from the message
//! header (the only thing authorization trusts) and hands everything to
//! [`Service`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use zbus::message::Header;
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, Variant, interface};

use crate::auth::Authorizer;
use crate::engine::{CallArgs, Engine};
use crate::error::ServiceError;
use crate::service::{Events, PropertyValue, Service};
use crate::{BUS_NAME, INTERFACE, OBJECT_PATH};

/// The served object.
#[derive(Debug, Clone)]
pub struct Reboot1 {
    service: Service,
}

impl Reboot1 {
    pub fn new(service: Service) -> Self {
        Reboot1 { service }
    }

    /// The service behind the object.
    pub fn service(&self) -> &Service {
        &self.service
    }
}

fn sender(header: &Header<'_>) -> Option<String> {
    header.sender().map(|s| s.to_string())
}

/// Whether the caller of a property read is root, asked of the bus. A read
/// without a sender, or whose user cannot be told, is not root's.
async fn caller_is_root(connection: &Connection, header: Option<&Header<'_>>) -> bool {
    let Some(sender) = header.and_then(|h| h.sender()) else {
        return false;
    };
    let Ok(bus) = zbus::fdo::DBusProxy::new(connection).await else {
        return false;
    };
    bus.get_connection_unix_user(sender.clone().into())
        .await
        .is_ok_and(|uid| uid == 0)
}

/// Replace the running kernel by kexec while keeping selected services
/// and their TCP connections (checkpointed with CRIU, restored in the next
/// boot). Check requires root or the polkit action org.seamlessreboot.check,
/// Start root or org.seamlessreboot.start (authenticated for each update).
#[interface(name = "org.seamlessreboot.Reboot1")]
impl Reboot1 {
    /// Dry run: plans the update and reports every problem found, changing
    /// nothing. kernel and initrd are absolute paths (initrd "" = the one
    /// next to the kernel); append are extra kernel arguments; units the
    /// units to keep ([] = those in the configuration); flags options by
    /// name ("allow-downgrade": accept a kernel older than the running one).
    /// plan is the plan as JSON when there are no problems, "" otherwise.
    #[zbus(out_args("plan", "problems"))]
    async fn check(
        &self,
        #[zbus(header)] header: Header<'_>,
        kernel: String,
        initrd: String,
        append: Vec<String>,
        units: Vec<String>,
        flags: Vec<String>,
    ) -> Result<(String, Vec<String>), ServiceError> {
        let sender = sender(&header);
        let args = CallArgs {
            kernel,
            initrd,
            append,
            units,
            flags,
        };
        self.service.check(sender.as_deref(), args).await
    }

    /// Starts the update with the same arguments as Check and returns at
    /// once; follow Operation and Progress, and wait for Completed. Fails
    /// with org.seamlessreboot.Reboot1.Error.Busy while an update runs.
    async fn start(
        &self,
        #[zbus(header)] header: Header<'_>,
        kernel: String,
        initrd: String,
        append: Vec<String>,
        units: Vec<String>,
        flags: Vec<String>,
    ) -> Result<(), ServiceError> {
        let sender = sender(&header);
        let args = CallArgs {
            kernel,
            initrd,
            append,
            units,
            flags,
        };
        self.service.start(sender.as_deref(), args).await
    }

    /// What runs now: "idle", "planning", "loading kernel",
    /// "checkpointing UNIT", ..., "undoing", "rebooting".
    #[zbus(property)]
    fn operation(&self) -> String {
        self.service.note_activity();
        self.service.operation()
    }

    /// A coarse estimate of the running update's progress, 0 to 100.
    #[zbus(property)]
    fn progress(&self) -> i32 {
        self.service.progress()
    }

    /// Why the last update failed; "" when it did not. Callers other than
    /// root read only that it failed.
    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn last_error(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] connection: &Connection,
    ) -> String {
        if caller_is_root(connection, header.as_ref()).await {
            self.service.last_error()
        } else {
            self.service.last_error_unprivileged()
        }
    }

    /// JSON: the last update's per-unit checkpoint figures ("kind":
    /// "checkpoint"), its failure ("failed"), or after a reboot the
    /// per-unit restore outcomes ("restore"); "" when there is none.
    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn last_report(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] connection: &Connection,
    ) -> String {
        self.service.note_activity();
        if caller_is_root(connection, header.as_ref()).await {
            self.service.last_report()
        } else {
            self.service.last_report_unprivileged()
        }
    }

    /// The update ended: success means the machine was handed over to
    /// systemd's kexec; otherwise message says why it failed and what was
    /// undone.
    #[zbus(signal)]
    async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
}

/// [`Events`] on the bus: `PropertiesChanged` and `Completed` from the
/// object path. Called on the worker thread, which is not one of zbus's,
/// so it may block on the emission. Events before [`BusEvents::attach`]
/// (before the connection exists) are not emitted.
#[derive(Debug, Default)]
pub struct BusEvents {
    emitter: OnceLock<SignalEmitter<'static>>,
}

impl BusEvents {
    /// Emits from now on over `connection`.
    pub fn attach(&self, connection: &Connection) -> zbus::Result<()> {
        let emitter = SignalEmitter::new(connection, OBJECT_PATH)?.into_owned();
        // Attached once; a second call changes nothing.
        let _ = self.emitter.set(emitter);
        Ok(())
    }
}

impl Events for BusEvents {
    fn properties_changed(
        &self,
        changed: &[(&'static str, PropertyValue)],
        invalidated: &[&'static str],
    ) {
        let map: HashMap<&str, Variant<'_>> = changed
            .iter()
            .map(|(name, value)| {
                let v = match value {
                    PropertyValue::Str(s) => Variant::from(s.as_str()),
                    PropertyValue::Int(i) => Variant::from(*i),
                };
                (*name, v)
            })
            .collect();
        let Some(emitter) = self.emitter.get() else {
            return;
        };
        let result = zbus::block_on(zbus::fdo::Properties::properties_changed(
            emitter,
            InterfaceName::from_static_str_unchecked(INTERFACE),
            map,
            invalidated.into(),
        ));
        if let Err(e) = result {
            tracing::warn!("cannot emit PropertiesChanged: {e}");
        }
    }

    fn completed(&self, success: bool, message: &str) {
        let Some(emitter) = self.emitter.get() else {
            return;
        };
        let result = zbus::block_on(Reboot1::completed(emitter, success, message));
        if let Err(e) = result {
            tracing::warn!("cannot emit Completed: {e}");
        }
    }
}

/// Connects with `builder` (a bus address or the system bus), serving the
/// interface with `engine` and `authorizer` and owning [`BUS_NAME`]: when
/// this returns, callers can reach the object. Returns the connection and
/// the service, for the daemon's shutdown and idle logic.
///
/// The object and the name go through the builder, not onto a connection
/// already running: zbus starts the dispatcher of a running connection's
/// object server in the background, and a call that arrives between taking
/// the name and the dispatcher's subscription is dropped (the caller waits
/// for its timeout). A D-Bus activation delivers the activating call right
/// when the name is taken, so that window is hit in practice. The builder
/// waits for the dispatcher before it asks for the name.
pub async fn serve(
    builder: zbus::connection::Builder<'static>,
    engine: Arc<dyn Engine>,
    authorizer: Arc<dyn Authorizer>,
) -> zbus::Result<(Connection, Service)> {
    let events = Arc::new(BusEvents::default());
    let service = Service::new(engine, authorizer, events.clone());
    let connection = builder
        .serve_at(OBJECT_PATH, Reboot1::new(service.clone()))
        .name(BUS_NAME)
        .build()
        .await?;
    events.attach(&connection)?;
    Ok((connection, service))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{PROP_LAST_ERROR, PROP_LAST_REPORT, PROP_OPERATION, PROP_PROGRESS};
    use zbus::object_server::Interface;

    fn introspection() -> String {
        let service = Service::new(
            Arc::new(crate::simulated::SimulatedEngine::new()),
            Arc::new(crate::auth::ListAuthorizer::deny_all()),
            Arc::new(crate::service::tests::Recorder::default()),
        );
        let mut xml = String::new();
        Reboot1::new(service).introspect_to_writer(&mut xml, 0);
        xml
    }

    #[test]
    fn interface_name_is_the_constant() {
        assert_eq!(Reboot1::name().as_str(), INTERFACE);
    }

    #[test]
    fn introspection_matches_the_documented_interface() {
        let xml = introspection();
        for needle in [
            r#"<method name="Check">"#,
            r#"<arg name="kernel" type="s" direction="in"/>"#,
            r#"<arg name="initrd" type="s" direction="in"/>"#,
            r#"<arg name="append" type="as" direction="in"/>"#,
            r#"<arg name="units" type="as" direction="in"/>"#,
            r#"<arg name="plan" type="s" direction="out"/>"#,
            r#"<arg name="problems" type="as" direction="out"/>"#,
            r#"<method name="Start">"#,
            r#"<signal name="Completed">"#,
            r#"<arg name="success" type="b"/>"#,
            r#"<arg name="message" type="s"/>"#,
            &format!(r#"<property name="{PROP_OPERATION}" type="s" access="read""#),
            &format!(r#"<property name="{PROP_PROGRESS}" type="i" access="read""#),
            &format!(r#"<property name="{PROP_LAST_ERROR}" type="s" access="read""#),
            &format!(r#"<property name="{PROP_LAST_REPORT}" type="s" access="read""#),
            r#"<annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="invalidates"/>"#,
        ] {
            assert!(xml.contains(needle), "missing {needle} in\n{xml}");
        }
    }
}
