//! The `org.seamlessreboot.Reboot1` D-Bus interface of seamless-reboot.
//!
//! The daemon (`seamless-reboot daemon`, started by systemd as
//! `seamless-reboot.service`, activated on demand by the system bus) owns
//! the name [`BUS_NAME`] and serves one object at [`OBJECT_PATH`] with the
//! interface [`INTERFACE`]:
//!
//! ```text
//! Check(s kernel, s initrd, as append, as units) -> (s plan, as problems)   dry run
//! Start(s kernel, s initrd, as append, as units)                            returns at once
//! property s Operation   "idle", "planning", "loading kernel", "checkpointing demo.service", ...
//! property i Progress    0..100, a coarse estimate from the steps
//! property s LastError   "" when the last operation did not fail
//! property s LastReport  JSON (see report::Report), "" when there is nothing to report
//! signal Completed(b success, s message)
//! ```
//!
//! Modelled on RAUC's `de.pengutronix.rauc.Installer`: the method that
//! starts the long operation only validates and returns; progress is
//! observed through properties (with `PropertiesChanged`) and the end
//! through the `Completed` signal.
//!
//! # Layers
//!
//! * [`service::Service`] holds the state and the rules (one operation at a
//!   time, authorization before anything, the worker thread); it knows
//!   nothing of zbus, so tests drive it directly.
//! * [`interface::Reboot1`] is the zbus object: it reads the caller's bus
//!   name from the message header and delegates to the service.
//! * [`engine::Engine`] does the work: [`engine::LinuxEngine`] wraps
//!   `seamless_reboot_core::transaction` with the real platform, and
//!   [`simulated::SimulatedEngine`] records requests and plays steps for
//!   tests (the stratisd pattern: the D-Bus layer is tested without root).
//! * [`auth::Authorizer`] decides who may: [`auth::PolkitAuthorizer`]
//!   allows uid 0 and asks polkit for everybody else.
//! * [`proxy::Reboot1Proxy`] is the client side, for the command line.

pub mod auth;
pub mod engine;
pub mod error;
pub mod interface;
pub mod proxy;
pub mod report;
pub mod service;
pub mod simulated;
mod unblock;

/// The well-known bus name the daemon owns on the system bus.
pub const BUS_NAME: &str = "org.seamlessreboot.Reboot1";
/// The object path of the one object the daemon serves.
pub const OBJECT_PATH: &str = "/org/seamlessreboot/Reboot1";
/// The interface name (versioned: an incompatible change is `Reboot2`).
pub const INTERFACE: &str = "org.seamlessreboot.Reboot1";
/// The polkit action `Check` requires (read-only: active local
/// administrators without authenticating, by the shipped rule).
pub const POLKIT_ACTION_CHECK: &str = "org.seamlessreboot.check";
/// The polkit action `Start` requires (an administrator authenticates for
/// each update; the kernel, initrd, arguments and units are in its details).
pub const POLKIT_ACTION_START: &str = "org.seamlessreboot.start";
/// The `Check`/`Start` flag that accepts a kernel older than the running one.
pub const FLAG_ALLOW_DOWNGRADE: &str = "allow-downgrade";
/// The systemd unit that runs the daemon (named by the D-Bus activation file).
pub const SYSTEMD_UNIT: &str = "seamless-reboot.service";

pub use engine::{Engine, LinuxEngine, PlanSummary, Summary};
pub use error::ServiceError;
pub use interface::Reboot1;
pub use proxy::Reboot1Proxy;
pub use service::Service;
