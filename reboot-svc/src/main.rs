//! `seamless-reboot`: the operator's command, and, by the name it is called
//! under, the next boot's systemd generator.
//!
//! A thin layer over the libraries: the update itself runs in the daemon
//! (`seamless-reboot daemon`, started by D-Bus activation) and the command
//! asks it over D-Bus, showing each step; the transaction and the next-boot
//! logic live in `seamless-reboot-core`.
//!
//! Internal commands: `daemon` (run by `seamless-reboot.service`), and, run
//! by the units the generator writes, `hold TRANSACTION_DIR`,
//! `restore-unit SNAPSHOT_DIR UNIT`, `release-unit SNAPSHOT_DIR UNIT` and
//! `finish-restore TRANSACTION_DIR`; and, run by the unit the transaction
//! starts at the hand-over, `watch-kexec TRANSACTION_DIR`.

mod daemon;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use seamless_reboot_config::{Config, HoldMode};
use seamless_reboot_core::kexec::cmdline::{MARKER_KEY, param_key, split_cmdline};
use seamless_reboot_core::manifest::{Manifest, read_boot_id, read_kernel_release, read_outcomes};
use seamless_reboot_core::nextboot::hold::{self, HoldSettings, PacketHold};
use seamless_reboot_core::nextboot::{self, LinuxNextBoot, RestoreSettings};
use seamless_reboot_core::platform::LinuxPlatform;
use seamless_reboot_core::transaction::{self, KexecWatch, UpdateRequest};
use seamless_reboot_dbus::proxy::Client;

const USAGE: &str = "usage:
  seamless-reboot --kernel PATH [--initrd PATH] [--append ARG]... [--unit UNIT]... [--check] [--yes]
                  [--allow-downgrade]
      checkpoint the units (default: those in the configuration) with their TCP
      connections, kexec into the kernel, restore them in the next boot.
      --check only plans and prints the problems; --yes skips the confirmation;
      --allow-downgrade accepts a kernel older than the running one.
  seamless-reboot status [--json]
      what the last update did to each unit.
  seamless-reboot prune [--keep N]
      remove old snapshots (the services' memory), keeping the newest N
      (default 1) and any that an update under way or a recovery still needs.
  seamless-reboot recover
      undo what an update of this boot left half done because its daemon died
      or systemd did not kexec (the daemon does this itself when it starts).";

fn main() -> ExitCode {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    let result = if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with("-generator"))
    {
        generator(&rest)
    } else {
        dispatch(&rest)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("seamless-reboot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<ExitCode> {
    match args.first().map(String::as_str) {
        Some("status") => status(&args[1..]),
        Some("prune") => prune(&args[1..]),
        Some("recover") => {
            let [] = &args[1..] else {
                bail!("usage: seamless-reboot recover")
            };
            recover()
        }
        Some("daemon") => {
            let [] = &args[1..] else {
                bail!("usage: seamless-reboot daemon")
            };
            daemon::run_daemon()?;
            Ok(ExitCode::SUCCESS)
        }
        Some("hold") => {
            let [dir] = &args[1..] else {
                bail!("usage: seamless-reboot hold TRANSACTION_DIR")
            };
            // Holding with the defaults beats not holding (every peer would
            // get a reset) when the configuration cannot be read.
            let config = config_or_defaults(Path::new("/"), "seamless-reboot hold");
            let settings = HoldSettings {
                packets: match config.network.hold {
                    HoldMode::Drop => PacketHold::Drop,
                    HoldMode::Queue => PacketHold::Queue,
                },
                restore_timeout: config.timeouts.restore(),
            };
            let root = Path::new("/");
            hold::run(
                Path::new(dir),
                &read_boot_id(root)?,
                &read_kernel_release(root)?,
                &settings,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Some("restore-unit") => {
            let (in_place, dir, unit) = match &args[1..] {
                [flag, dir, unit] if flag == "--in-place" => (true, dir, unit),
                [dir, unit] => (false, dir, unit),
                _ => bail!("usage: seamless-reboot restore-unit [--in-place] SNAPSHOT_DIR UNIT"),
            };
            // A restore with the default timeouts beats a cold start when
            // the configuration cannot be read.
            let config = config_or_defaults(Path::new("/"), "seamless-reboot restore-unit");
            let settings = RestoreSettings {
                disable_window_scaling: config.network.disable_window_scaling_during_restore,
                criu_timeout: config.timeouts.restore(),
                in_place,
            };
            nextboot::restore_unit(&LinuxNextBoot, Path::new(dir), unit, &settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("watch-kexec") => {
            let [dir] = &args[1..] else {
                bail!("usage: seamless-reboot watch-kexec TRANSACTION_DIR")
            };
            watch_kexec(Path::new(dir))
        }
        Some("finish-restore") => {
            let [dir] = &args[1..] else {
                bail!("usage: seamless-reboot finish-restore TRANSACTION_DIR")
            };
            nextboot::finish_restore(&LinuxNextBoot, Path::new(dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Some("release-unit") => {
            let [dir, unit] = &args[1..] else {
                bail!("usage: seamless-reboot release-unit SNAPSHOT_DIR UNIT")
            };
            nextboot::release_unit(&LinuxNextBoot, Path::new(dir), unit)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(_) => update(args),
        None => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Parsed `--kernel ...` arguments.
#[derive(Debug, Default)]
struct UpdateArgs {
    request: UpdateRequest,
    check: bool,
    yes: bool,
}

fn parse_update_args(args: &[String]) -> Result<UpdateArgs> {
    let mut parsed = UpdateArgs::default();
    let mut kernel = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value("--kernel")?)),
            "--initrd" => parsed.request.initrd = Some(PathBuf::from(value("--initrd")?)),
            "--append" => parsed.request.append.push(value("--append")?),
            "--unit" => parsed.request.units.push(value("--unit")?),
            "--check" => parsed.check = true,
            "--allow-downgrade" => parsed.request.allow_downgrade = true,
            "--yes" | "-y" => parsed.yes = true,
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    parsed.request.kernel = kernel.context("--kernel PATH is required")?;
    Ok(parsed)
}

fn update(args: &[String]) -> Result<ExitCode> {
    let parsed = parse_update_args(args)?;
    // The daemon applies the configuration (default units, kernel
    // arguments): send only what was given here.
    let client = Client::system()?;
    let checked = client.check(&parsed.request)?;
    let Some(plan) = checked.plan else {
        eprintln!("seamless-reboot: cannot update:");
        for problem in &checked.problems {
            eprintln!("  - {problem}");
        }
        return Ok(ExitCode::FAILURE);
    };
    println!("kernel   {} -> {}", plan.source_kernel, plan.target_kernel);
    // The marker's transaction id is chosen again when the update starts;
    // show the command line the next kernel gets, marker by name only.
    let cmdline: Vec<&str> = split_cmdline(&plan.cmdline)
        .into_iter()
        .filter(|word| param_key(word) != MARKER_KEY)
        .collect();
    println!("cmdline  {} {MARKER_KEY}=<id>", cmdline.join(" "));
    for unit in &plan.units {
        let sandbox = if unit.sandbox.is_empty() {
            String::new()
        } else {
            format!("; in {}, built again at the restore", unit.sandbox)
        };
        println!(
            "unit     {}: pid {}, {}, {}{sandbox}",
            unit.unit,
            unit.main_pid,
            counted(unit.processes, "process", "processes"),
            counted(
                unit.connections,
                "established TCP connection",
                "established TCP connections"
            ),
        );
    }
    for left in &plan.left_out {
        let next_boot = if left.policy == "restart" {
            "the next boot starts it with its own configuration"
        } else {
            "it stops with the kexec and starts again only if enabled"
        };
        println!(
            "left out {} (policy {}): {}; {next_boot}",
            left.unit, left.policy, left.reason
        );
    }
    if parsed.check {
        println!("check: no problems found");
        return Ok(ExitCode::SUCCESS);
    }
    if !parsed.yes {
        bail!("this replaces the running kernel; repeat with --yes to go ahead");
    }
    let done = client.start_and_wait(&parsed.request, |step, percent| {
        println!("... {step} ({percent}%)");
    })?;
    if done.success {
        println!("{}", done.message);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("seamless-reboot: {}", done.message);
        Ok(ExitCode::FAILURE)
    }
}

fn status(args: &[String]) -> Result<ExitCode> {
    let json = match args {
        [] => false,
        [flag] if flag == "--json" => true,
        _ => bail!("usage: seamless-reboot status [--json]"),
    };
    let config = Config::load()?.config;
    let Some(dir) = latest_transaction(&config.image_dir)? else {
        println!("no update has run");
        return Ok(ExitCode::SUCCESS);
    };
    let outcomes = read_outcomes(&dir)?;
    // The manifest holds what the old boot measured (frozen time, kernels);
    // it is absent when a transaction was undone before writing it.
    let manifest = Manifest::read_from(&dir).ok();
    // With nothing restored from it yet: why (a cold boot, the kexec still
    // to come, a snapshot refused), unless this boot is restoring it now.
    let not_restored = match &manifest {
        Some(m) if outcomes.is_empty() => {
            let root = Path::new("/");
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            nextboot::not_restored_reason(
                &dir,
                m,
                &cmdline,
                &read_boot_id(root)?,
                &read_kernel_release(root)?,
            )
        }
        _ => None,
    };
    let frozen_ms = |unit: &str| {
        manifest
            .as_ref()
            .and_then(|m| m.units.iter().find(|u| u.unit == unit))
            .map(|u| u.frozen_ms)
    };
    if json {
        let units: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|o| {
                serde_json::json!({
                    "unit": o.unit,
                    "outcome": o.outcome.as_str(),
                    "detail": o.detail,
                    "frozen_ms": frozen_ms(&o.unit),
                    "duration_ms": o.duration_ms,
                    "downtime_ms": o.downtime_ms,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "transaction_dir": dir.display().to_string(),
                "transaction_id": manifest.as_ref().map(|m| m.transaction_id.clone()),
                "source_kernel": manifest.as_ref().map(|m| m.source_kernel.clone()),
                "target_kernel": manifest.as_ref().map(|m| m.target_kernel.clone()),
                "not_restored": not_restored,
                "units": units,
            })
        );
    } else {
        println!("last update: {}", dir.display());
        if let Some(m) = &manifest {
            println!("  kernel {} -> {}", m.source_kernel, m.target_kernel);
        }
        if let Some(why) = &not_restored {
            println!("  not restored: {why}");
        } else if outcomes.is_empty() {
            println!("  no unit has been restored from it yet");
        }
        let ms = |v: Option<u64>| v.map_or_else(|| "unknown".to_string(), |d| format!("{d} ms"));
        for o in &outcomes {
            println!(
                "  {}: {} (frozen {}, {} ms in this boot, blackout {}) {}",
                o.unit,
                o.outcome.as_str(),
                ms(frozen_ms(&o.unit)),
                o.duration_ms,
                ms(o.downtime_ms),
                o.detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `watch-kexec`, run in the unit the transaction starts right before the
/// hand-over: undoes the update if systemd does not kexec.
fn watch_kexec(transaction_dir: &Path) -> Result<ExitCode> {
    // Watching with the defaults beats not watching.
    let config = config_or_defaults(Path::new("/"), "seamless-reboot watch-kexec");
    let platform = LinuxPlatform::new(config.timeouts.checkpoint());
    let watch = KexecWatch {
        poll: Duration::from_millis(500),
        settle: Duration::from_secs(5),
        appear: config.timeouts.kexec(),
    };
    match transaction::watch_kexec(&platform, transaction_dir, watch)? {
        None => {
            println!("the update was undone by its daemon; nothing to watch");
            Ok(ExitCode::SUCCESS)
        }
        Some(recovery) => {
            eprintln!("seamless-reboot: {recovery}");
            Ok(if recovery.is_failure() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// `recover`: replays the undo journals of this boot's unfinished updates.
fn recover() -> Result<ExitCode> {
    let config = Config::load()?.config;
    let platform = LinuxPlatform::new(config.timeouts.checkpoint());
    let recovered = transaction::recover(&platform, &config.image_dir)?;
    if recovered.is_empty() {
        println!("nothing to recover: no update of this boot was left half done");
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    for recovery in &recovered {
        failed |= recovery.is_failure();
        println!("{recovery}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The most recent transaction directory (ids start with the time in ms).
fn latest_transaction(image_dir: &Path) -> Result<Option<PathBuf>> {
    match seamless_reboot_core::prune::transactions(image_dir) {
        Ok(mut all) => Ok(all.pop()),
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied) =>
        {
            bail!(
                "{e:#}; the snapshots (the services' memory) are root's: run it as root, or read \
                 the outcomes without details from the daemon (busctl get-property \
                 org.seamlessreboot.Reboot1 /org/seamlessreboot/Reboot1 \
                 org.seamlessreboot.Reboot1 LastReport)"
            )
        }
        Err(e) => Err(e),
    }
}

/// systemd generator: `seamless-reboot-generator NORMAL_DIR [EARLY_DIR LATE_DIR]`.
fn generator(args: &[String]) -> Result<ExitCode> {
    let out = args
        .first()
        .context("a generator is called with its output directories")?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let root = Path::new("/");
    // The marker on the command line decides whether this boot restores;
    // an unreadable configuration must not turn it into a silent cold
    // start: the default image store is tried, and the reason is logged.
    let config = config_or_defaults(Path::new("/"), "seamless-reboot-generator");
    let decision = nextboot::generator_decision(
        &cmdline,
        &config.image_dir,
        &read_boot_id(root)?,
        &read_kernel_release(root)?,
        Path::new(nextboot::system::RUN_DIR),
    );
    match &decision {
        nextboot::Decision::Refused(why) => {
            eprintln!("seamless-reboot-generator: not restoring: {why}");
        }
        nextboot::Decision::Restore {
            transaction_dir,
            units,
            unverified: true,
            ..
        } => eprintln!(
            "seamless-reboot-generator: {} is not mounted yet: restoring {} as the command line \
             says; the hold checks the snapshot once it is mounted",
            transaction_dir.display(),
            units.join(", ")
        ),
        _ => {}
    }
    let binary = PathBuf::from("/usr/bin/seamless-reboot");
    nextboot::write_generated(Path::new(out), &decision, &binary)?;
    Ok(ExitCode::SUCCESS)
}

/// `prune [--keep N]`.
fn prune(args: &[String]) -> Result<ExitCode> {
    let keep = match args {
        [] => 1,
        [flag, n] if flag == "--keep" => n
            .parse()
            .with_context(|| format!("--keep needs a number, got {n:?}"))?,
        _ => bail!("usage: seamless-reboot prune [--keep N]"),
    };
    let config = Config::load()?.config;
    let boot_id = read_boot_id(Path::new("/"))?;
    for done in seamless_reboot_core::prune::prune(&config.image_dir, keep, &boot_id)? {
        use seamless_reboot_core::prune::Pruned;
        match done {
            Pruned::Removed(dir) => println!("removed {}", dir.display()),
            Pruned::Kept(dir) => println!("kept {} (one of the newest {keep})", dir.display()),
            Pruned::Needed(dir, why) => println!("kept {}: {why}", dir.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration under `root`, or the defaults when it cannot be
/// read, saying why on stderr (the journal). For the next boot's steps and
/// the kexec watcher, which run unattended: each does better with the
/// defaults (hold, restore, watch) than not at all, where a failure would
/// cold-start every unit or leave them down.
fn config_or_defaults(root: &Path, who: &str) -> Config {
    Config::load_from_root(root)
        .map(|l| l.config)
        .unwrap_or_else(|e| {
            eprintln!("{who}: {e:#}; using the default configuration");
            Config::default()
        })
}

/// `1 process`, `2 processes`.
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn parses_update_arguments() {
        let parsed = parse_update_args(&strings(&[
            "--kernel",
            "/boot/vmlinuz-x",
            "--unit",
            "a.service",
            "--unit",
            "b.service",
            "--append",
            "quiet",
            "--check",
            "--allow-downgrade",
        ]))
        .expect("parses");
        assert_eq!(parsed.request.kernel, PathBuf::from("/boot/vmlinuz-x"));
        assert_eq!(parsed.request.units, strings(&["a.service", "b.service"]));
        assert_eq!(parsed.request.append, strings(&["quiet"]));
        assert!(parsed.check);
        assert!(parsed.request.allow_downgrade);
        assert!(!parsed.yes);
    }

    #[test]
    fn rejects_bad_update_arguments() {
        let err = parse_update_args(&strings(&["--unit", "a.service"])).expect_err("no kernel");
        assert!(format!("{err}").contains("--kernel PATH is required"));
        let err = parse_update_args(&strings(&["--kernel"])).expect_err("no value");
        assert!(format!("{err}").contains("--kernel needs a value"));
        let err =
            parse_update_args(&strings(&["--kernel", "k", "--frobnicate"])).expect_err("unknown");
        assert!(format!("{err}").contains("unknown argument `--frobnicate`"));
    }

    #[test]
    fn an_unreadable_configuration_gives_the_defaults_for_the_next_boot() {
        let root = tempfile::tempdir().expect("root");
        let etc = root.path().join("etc/seamless-reboot");
        std::fs::create_dir_all(&etc).expect("mkdir");
        std::fs::write(etc.join("config.toml"), "image_dir = \"/srv/images\"\n").expect("write");
        assert_eq!(
            config_or_defaults(root.path(), "test").image_dir,
            Path::new("/srv/images")
        );
        std::fs::write(etc.join("config.toml"), "image_dir = [not toml").expect("write");
        Config::load_from_root(root.path()).expect_err("corrupt");
        assert_eq!(
            config_or_defaults(root.path(), "test").image_dir,
            Config::default().image_dir
        );
    }

    #[test]
    fn latest_transaction_is_by_time() {
        let tmp = tempfile::tempdir().expect("tmp");
        for name in ["t1000-5", "t3000-1", "t2000-9", "not-a-transaction"] {
            std::fs::create_dir(tmp.path().join(name)).expect("mkdir");
        }
        let latest = latest_transaction(tmp.path())
            .expect("reads")
            .expect("found");
        assert!(latest.ends_with("t3000-1"));
        assert_eq!(
            latest_transaction(&tmp.path().join("missing")).expect("ok"),
            None
        );
        // Anything but a missing store is said, not taken for "no update".
        std::fs::write(tmp.path().join("file"), "").expect("file");
        latest_transaction(&tmp.path().join("file")).expect_err("not a directory");
    }
}
