//! `seamless-reboot daemon`: serves `org.seamlessreboot.Reboot1` on the
//! system bus (see the `seamless-reboot-dbus` crate for the interface).
//!
//! Started by systemd as `seamless-reboot.service` (`Type=dbus`: systemd
//! counts it as started once it owns the bus name, so no sd_notify), usually
//! through D-Bus activation. Logs go to stderr, hence the journal.
//!
//! # Stopping
//!
//! SIGTERM or SIGINT while idle: release the name and exit at once.
//!
//! SIGTERM or SIGINT while an update runs: the daemon refuses new `Start`s,
//! logs that it is finishing, and waits for the transaction to end by
//! itself, either at the kexec hand-over (systemd is then taking the machine
//! down anyway) or after rolling back. It does not cut the transaction
//! short: between the first checkpoint and the hand-over, the checkpointed
//! services exist only as images on disk, and the transaction's own undo
//! (restoring them in place on this kernel) is the only thing that brings
//! them back. Exiting there would leave them down. Further signals are
//! logged and ignored; the unit's `TimeoutStopSec=` (then SIGKILL) is the
//! bound, and its `KillMode=mixed` keeps systemd's SIGTERM away from the
//! CRIU worker the daemon is waiting for.
//!
//! # After a crash
//!
//! A daemon that died mid-update (a crash, the OOM killer, a SIGKILL) left
//! its undo journal in the transaction directory; systemd restarts it
//! (`Restart=on-failure`), and before it takes its bus name it replays every
//! journal of this boot (`seamless_reboot_core::transaction::recover`), so
//! the units it had checkpointed run again and nothing it changed stays
//! behind. `seamless-reboot recover` does the same by hand.
//!
//! # Idle exit
//!
//! With nothing running, no failure waiting to be read from `LastError`,
//! and no caller for [`IDLE_EXIT`] (override with
//! `SEAMLESS_REBOOT_IDLE_EXIT_S`, 0 = never), the daemon releases its name
//! and exits; the bus starts it again for the next caller. Nothing is lost:
//! `LastReport` comes from the restore records on disk when the daemon has
//! run no transaction of its own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use seamless_reboot_config::Config;
use seamless_reboot_core::platform::LinuxPlatform;
use seamless_reboot_core::transaction;
use seamless_reboot_dbus::auth::PolkitAuthorizer;
use seamless_reboot_dbus::interface::serve;
use seamless_reboot_dbus::service::Phase;
use seamless_reboot_dbus::{BUS_NAME, LinuxEngine, OBJECT_PATH, Service};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long the daemon stays without callers before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(300);

/// Environment variable overriding [`IDLE_EXIT`], in seconds (0 = never).
pub const IDLE_EXIT_ENV: &str = "SEAMLESS_REBOOT_IDLE_EXIT_S";

/// How often the main thread looks at signals and idleness.
const TICK: Duration = Duration::from_millis(250);

/// The idle period from the environment's value, if set and valid.
fn idle_exit(env: Option<&str>) -> Result<Option<Duration>> {
    match env {
        None => Ok(Some(IDLE_EXIT)),
        Some(text) => {
            let secs: u64 = text
                .trim()
                .parse()
                .with_context(|| format!("{IDLE_EXIT_ENV}={text:?} is not a number of seconds"))?;
            Ok((secs > 0).then(|| Duration::from_secs(secs)))
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}

/// Runs the daemon until a signal or the idle exit.
pub fn run_daemon() -> Result<()> {
    let idle = idle_exit(std::env::var(IDLE_EXIT_ENV).ok().as_deref())?;
    // Handlers first: a SIGTERM from here on is ours to handle, never the
    // default action that would kill a transaction halfway.
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).context("cannot install the SIGTERM/SIGINT handlers")?;
    let restore_binary = std::env::current_exe().context("cannot find this program's own path")?;
    // Before the name is taken: no Start may run beside a replay.
    recover_dead_updates();
    // polkit and the bus are asked over a connection of their own; the
    // served one is made by `serve`, name and object together.
    let asking = zbus::block_on(zbus::connection::Builder::system().build())
        .context("cannot connect to the system bus")?;
    let engine = Arc::new(LinuxEngine::new(restore_binary));
    let authorizer = Arc::new(PolkitAuthorizer::new(asking));
    let (connection, service) = zbus::block_on(serve(
        zbus::connection::Builder::system(),
        engine,
        authorizer,
    ))
    .with_context(|| {
        format!("cannot serve {OBJECT_PATH} as {BUS_NAME} (only root may own the name)")
    })?;
    tracing::info!(
        "serving {BUS_NAME} at {OBJECT_PATH}; idle exit {}",
        idle.map_or_else(|| "off".to_string(), |d| format!("after {} s", d.as_secs()))
    );
    // The connection runs on zbus's helper thread from here on; this thread
    // only watches signals and the clock.
    loop {
        if let Some(signal) = signals.pending().next() {
            stop(&service, signal_name(signal), &mut signals);
            break;
        }
        if let Some(idle) = idle
            && service.idle_for(idle)
        {
            // Refuse Starts from now on; one may have slipped in since.
            if !service.begin_stopping() {
                tracing::info!(
                    "no caller for {} s: exiting (the bus starts the daemon again when needed)",
                    idle.as_secs()
                );
                break;
            }
            stop(&service, "the idle exit", &mut signals);
            break;
        }
        std::thread::sleep(TICK);
    }
    // Callers from now on make the bus start a new daemon. The connection
    // is not shut down gracefully: the served object holds clones of it
    // (its signals go out over it), so it lives until the process ends,
    // which closes the socket.
    if let Err(e) = zbus::block_on(connection.release_name(BUS_NAME)) {
        tracing::warn!("cannot release {BUS_NAME}: {e}");
    }
    Ok(())
}

/// Replays what updates of this boot left undone when their daemon died
/// (see the module documentation), and logs what it did.
fn recover_dead_updates() {
    let config = match Config::load() {
        Ok(loaded) => loaded.config,
        Err(e) => {
            tracing::error!(
                "cannot read the configuration, so no unfinished update is looked for: {e:#}"
            );
            return;
        }
    };
    let platform = LinuxPlatform::new(config.timeouts.checkpoint());
    match transaction::recover(&platform, &config.image_dir) {
        Ok(recovered) => {
            for recovery in recovered {
                if recovery.is_failure() {
                    tracing::error!("{recovery}");
                } else {
                    tracing::warn!("{recovery}");
                }
            }
        }
        Err(e) => tracing::error!(
            "cannot look for unfinished updates in {}: {e:#}",
            config.image_dir.display()
        ),
    }
}

/// Stops: no new `Start`, and the running transaction, if any, ends by
/// itself first (see the module documentation).
fn stop(service: &Service, why: &str, signals: &mut Signals) {
    if !service.begin_stopping() {
        tracing::info!("stopping on {why}");
        return;
    }
    tracing::warn!(
        "{why} during an update ({}): letting it finish or roll back before exiting; \
         cutting it short could leave checkpointed services down",
        service.operation()
    );
    // Waits on a thread of its own, so that signals arriving meanwhile are
    // drained and logged rather than left pending.
    let waiter = {
        let service = service.clone();
        std::thread::spawn(move || service.wait_for_worker())
    };
    while !waiter.is_finished() {
        for signal in signals.pending() {
            tracing::warn!(
                "{} ignored: still finishing the update ({})",
                signal_name(signal),
                service.operation()
            );
        }
        std::thread::sleep(TICK);
    }
    if waiter.join().is_err() {
        tracing::error!("waiting for the update failed");
    }
    tracing::info!(
        "the update ended ({}); exiting",
        match service.phase() {
            Phase::HandedOver => "handed over to kexec".to_string(),
            _ => format!("last error: {}", service.last_error()),
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use seamless_reboot_dbus::auth::ListAuthorizer;
    use seamless_reboot_dbus::engine::CallArgs;
    use seamless_reboot_dbus::service::{Events, PropertyValue};
    use seamless_reboot_dbus::simulated::SimulatedEngine;
    use std::time::Instant;

    struct Quiet;

    impl Events for Quiet {
        fn properties_changed(&self, _: &[(&'static str, PropertyValue)], _: &[&'static str]) {}
        fn completed(&self, _: bool, _: &str) {}
    }

    #[test]
    fn stopping_waits_for_the_running_update() {
        let engine = Arc::new(SimulatedEngine::new());
        let release = engine.hold();
        let service = Service::new(
            engine.clone(),
            Arc::new(ListAuthorizer::allow_all()),
            Arc::new(Quiet),
        );
        zbus::block_on(service.start(
            Some(":1.1"),
            CallArgs {
                kernel: "/boot/vmlinuz-6.12.0".into(),
                units: vec!["a.service".into()],
                ..CallArgs::default()
            },
        ))
        .expect("started");
        let started = Instant::now();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(release);
        });
        // SIGUSR2 stands in for the signals: none arrives here.
        let mut signals = Signals::new([signal_hook::consts::SIGUSR2]).expect("signals");
        stop(&service, "a test", &mut signals);
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(service.phase(), Phase::HandedOver);
        releaser.join().expect("releaser");
        // And no new update can start any more.
        let again = zbus::block_on(service.start(
            Some(":1.1"),
            CallArgs {
                kernel: "/boot/vmlinuz-6.12.0".into(),
                ..CallArgs::default()
            },
        ));
        assert!(again.is_err());
    }

    #[test]
    fn stopping_when_idle_is_immediate() {
        let service = Service::new(
            Arc::new(SimulatedEngine::new()),
            Arc::new(ListAuthorizer::allow_all()),
            Arc::new(Quiet),
        );
        let mut signals = Signals::new([signal_hook::consts::SIGUSR2]).expect("signals");
        let started = Instant::now();
        stop(&service, "a test", &mut signals);
        assert!(started.elapsed() < Duration::from_millis(200));
        assert_eq!(service.phase(), Phase::Idle);
    }

    #[test]
    fn idle_exit_setting() {
        assert_eq!(idle_exit(None).expect("default"), Some(IDLE_EXIT));
        assert_eq!(
            idle_exit(Some("60")).expect("set"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(idle_exit(Some("0")).expect("off"), None);
        assert!(idle_exit(Some("soon")).is_err());
    }
}
