//! Building blocks that make a scenario a few lines: a [`Lab`] (the verified
//! base image, the built binaries, the runs directory) and a [`Session`] (one
//! booted guest with its clients and its report).
//!
//! A scenario records what it sees into its report as it goes; when a step
//! fails, the session still writes the report with the error and the checks
//! so far, so a failed CI run leaves evidence, not just a backtrace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::clients::{ClientSpec, RunningClient, probe_state};
use crate::guest::{BootInfo, Guest};
use crate::image::{BaseImage, KernelFiles, default_cache_root, ensure_base_image};
use crate::layer::{Layer, bin_dir, required_binary};
use crate::netns::{GUEST_PEER_ADDR, Netns, reap_stale_netns};
use crate::process::poll;
use crate::recipe::Recipe;
use crate::report::{NamedClient, ScenarioReport};
use crate::traffic::BreakReason;
use crate::traffic::StateReply;
use crate::vm::{Vm, VmConfig, reap_stale};

/// busctl's destination, object and interface of the product's D-Bus API.
const DBUS_DEST: &str =
    "org.seamlessreboot.Reboot1 /org/seamlessreboot/Reboot1 org.seamlessreboot.Reboot1";

/// The port the lab's test service listens on in the guest.
pub const LAB_SERVICE_PORT: u16 = 7777;
/// The port of the lab's second test service (`lab-blocker.service`).
pub const LAB_BLOCKER_PORT: u16 = 7778;
/// The port Debian's nginx serves its default site on.
pub const NGINX_PORT: u16 = 80;
/// How long a kexec may take until the guest answers from its new boot.
pub const KEXEC_TIMEOUT: Duration = Duration::from_secs(300);

/// The lab: a verified base image and the binaries to install into guests.
#[derive(Debug)]
pub struct Lab {
    pub recipe: Recipe,
    pub image: BaseImage,
    pub bin_dir: PathBuf,
    pub runs_root: PathBuf,
}

impl Lab {
    /// Ends QEMUs left by earlier runs, then builds or verifies the image.
    pub fn open(recipe: Recipe) -> Result<Lab> {
        let runs_root = default_runs_root();
        std::fs::create_dir_all(&runs_root)?;
        reap_stale(&runs_root)?;
        reap_stale_netns();
        let bin_dir = bin_dir()?;
        for name in ["lab-service", "lab-client", "seamless-reboot"] {
            required_binary(&bin_dir, name)?;
        }
        let image = ensure_base_image(&default_cache_root(), &recipe)?;
        Ok(Lab {
            recipe,
            image,
            bin_dir,
            runs_root,
        })
    }

    /// Boots a guest on kernel A for scenario `name`.
    pub fn session(&self, name: &str, config: VmConfig) -> Result<Session<'_>> {
        let started_unix = now_unix();
        let run_dir = self
            .runs_root
            .join(format!("{name}-{}", (started_unix * 1000.0) as u64));
        std::fs::create_dir_all(&run_dir)?;
        let mut report = ScenarioReport::new(name, started_unix, &self.recipe.hash(), &run_dir);
        eprintln!(
            "lab: {name}: booting {} in {}",
            self.image.manifest.kernel_a.release,
            run_dir.display()
        );
        let vm = match Vm::boot(
            &self.image,
            &self.image.manifest.kernel_a,
            &run_dir,
            &config,
        ) {
            Ok(vm) => vm,
            Err(e) => {
                report.error = Some(format!("{e:#}"));
                report.settle();
                let _ = report.write(&run_dir.join("report.json"));
                return Err(e);
            }
        };
        report.kernel_before = vm.first_boot.kernel.clone();
        report.boot_id_before = vm.first_boot.boot_id.clone();
        report.timing("boot_s", vm.boot_s);
        Ok(Session {
            lab: self,
            vm,
            report,
            clients: Vec::new(),
        })
    }

    /// Boots a guest for scenario `name`, runs `steps` on it and returns
    /// the settled report (written to the run directory even when a step
    /// failed; an error here means the guest could not even boot).
    pub fn run_scenario(
        &self,
        name: &str,
        config: VmConfig,
        steps: impl FnOnce(&mut Session<'_>) -> Result<()>,
    ) -> Result<ScenarioReport> {
        let mut session = self.session(name, config)?;
        let outcome = steps(&mut session);
        Ok(session.finish(outcome))
    }

    pub fn kernel_a(&self) -> &KernelFiles {
        &self.image.manifest.kernel_a
    }

    pub fn kernel_b(&self) -> &KernelFiles {
        &self.image.manifest.kernel_b
    }
}

/// Where run directories go: `SEAMLESS_LAB_RUNS`, else `target/lab-runs`.
pub fn default_runs_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SEAMLESS_LAB_RUNS") {
        return PathBuf::from(dir);
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .unwrap_or(manifest_dir)
        .join("target/lab-runs")
}

/// One booted guest, its clients and its report.
#[derive(Debug)]
pub struct Session<'lab> {
    pub lab: &'lab Lab,
    pub vm: Vm,
    pub report: ScenarioReport,
    clients: Vec<RunningClient>,
}

impl Session<'_> {
    pub fn guest(&self) -> &Guest {
        &self.vm.guest
    }

    /// Installs the lab's test service and starts it; waits until it answers.
    pub fn start_lab_service(&mut self) -> Result<StateReply> {
        let layer = Layer::new(&self.vm.run_dir.join("layer"))?
            .with_lab_service(&self.lab.bin_dir)?
            .with_product(&self.lab.bin_dir)?;
        layer.install(self.guest())?;
        self.guest().sh(
            "systemctl reload dbus.service && systemd-tmpfiles --create /usr/lib/tmpfiles.d/seamless-reboot.conf \
             && networkctl reload",
        )?;
        if self.vm.netns.is_some() {
            let guest = self.guest().clone();
            poll(
                "the guest's second NIC",
                Duration::from_secs(60),
                Duration::from_millis(500),
                || {
                    Ok(guest
                        .sh("ip -4 -o addr show dev eth1")?
                        .contains(GUEST_PEER_ADDR)
                        .then_some(()))
                },
            )?;
        }
        self.guest()
            .sh("systemctl enable --now lab-service.service")?;
        self.wait_lab_service(Duration::from_secs(60))
    }

    /// Waits until the test service answers a new connection.
    pub fn wait_lab_service(&self, timeout: Duration) -> Result<StateReply> {
        poll(
            "the lab service to answer",
            timeout,
            Duration::from_millis(500),
            || self.probe().map(Some),
        )
    }

    /// Asks the test service for its state over a new connection.
    pub fn probe(&self) -> Result<StateReply> {
        self.probe_at(LAB_SERVICE_PORT)
    }

    /// Asks the test service listening on `guest_port` (forwarded) for its
    /// state over a new connection.
    pub fn probe_at(&self, guest_port: u16) -> Result<StateReply> {
        let target = self.target_at(guest_port)?;
        probe_state(&self.lab.bin_dir, &target, &self.wrapper())
    }

    /// The prefix that runs a host command where the guest's QEMU runs.
    pub fn wrapper(&self) -> Vec<String> {
        self.vm
            .netns
            .as_ref()
            .map(Netns::wrapper)
            .unwrap_or_default()
    }

    /// host:port where the test service is reached from the host.
    pub fn service_target(&self) -> Result<String> {
        self.target_at(LAB_SERVICE_PORT)
    }

    /// host:port where guest port `guest_port` (forwarded) is reached.
    pub fn target_at(&self, guest_port: u16) -> Result<String> {
        Ok(format!("127.0.0.1:{}", self.vm.host_port(guest_port)?))
    }

    /// Starts a host client against the test service through QEMU's user
    /// network (slirp).
    pub fn start_client(&mut self, name: &str, spec: ClientSpec) -> Result<()> {
        self.start_client_at(name, spec, LAB_SERVICE_PORT)
    }

    /// Starts a host client through QEMU's user network against the test
    /// service listening on `guest_port` (forwarded).
    pub fn start_client_at(&mut self, name: &str, spec: ClientSpec, guest_port: u16) -> Result<()> {
        let target = self.target_at(guest_port)?;
        self.start_client_to(name, spec, &target)
    }

    /// Starts a client against the test service on the guest's second NIC,
    /// with the host's own TCP stack as the peer (needs `linux_peer`).
    pub fn start_linux_peer_client(&mut self, name: &str, spec: ClientSpec) -> Result<()> {
        if self.vm.netns.is_none() {
            anyhow::bail!("this guest was booted without a Linux peer");
        }
        self.start_client_to(name, spec, &format!("{GUEST_PEER_ADDR}:{LAB_SERVICE_PORT}"))
    }

    fn start_client_to(&mut self, name: &str, spec: ClientSpec, target: &str) -> Result<()> {
        let client = RunningClient::start(
            &self.lab.bin_dir,
            name,
            &spec,
            target,
            &self.vm.run_dir,
            &self.wrapper(),
        )?;
        self.clients.push(client);
        Ok(())
    }

    /// The scenarios' clients: `lines`, a numbered line every 50 ms, and
    /// `bulk`, a 256 MiB echoed stream at 1 MiB/s (so it spans the update);
    /// returns once the service has counted 20 more lines than `total_before`.
    pub fn start_standard_clients(&mut self, total_before: u64) -> Result<()> {
        self.start_client("lines", ClientSpec::Lines { interval_ms: 50 })?;
        self.start_client(
            "bulk",
            ClientSpec::Bulk {
                bytes: 256 << 20,
                rate: Some(1 << 20),
            },
        )?;
        self.wait_traffic(total_before + 20, Duration::from_secs(60))
    }

    /// Waits until the service has counted at least `lines` lines: traffic flows.
    pub fn wait_traffic(&self, lines: u64, timeout: Duration) -> Result<()> {
        poll(
            "traffic to flow",
            timeout,
            Duration::from_millis(300),
            || Ok((self.probe()?.total >= lines).then_some(())),
        )
    }

    /// Loads `kernel` with kexec_file_load (kexec-tools' `-s`) and asks
    /// systemd to kexec into it, then waits until the guest answers from the
    /// new boot. Records `kexec_to_ssh_s`; returns the new boot and the
    /// instant the kexec was requested.
    pub fn kexec_with_systemd(&mut self, kernel: &KernelFiles) -> Result<(BootInfo, Instant)> {
        let old = self.guest().boot_info()?;
        self.guest().sh(&format!(
            "kexec -s -l /boot/{} --initrd=/boot/{} --reuse-cmdline && test \"$(cat /sys/kernel/kexec_loaded)\" = 1",
            kernel.vmlinuz, kernel.initrd
        ))?;
        let requested = Instant::now();
        // The ssh session may be cut while systemd goes down: its outcome
        // does not matter, the boot id below does.
        let _ = self
            .guest()
            .run("systemctl kexec --no-block", Duration::from_secs(30));
        let back = self
            .guest()
            .wait_up(KEXEC_TIMEOUT, Some(&old.boot_id))
            .with_context(|| format!("after kexec; console tail:\n{}", self.vm.console_tail(30)))?;
        self.report
            .timing("kexec_to_ssh_s", requested.elapsed().as_secs_f64());
        self.report.kernel_after = Some(back.kernel.clone());
        self.report.boot_id_after = Some(back.boot_id.clone());
        Ok((back, requested))
    }

    /// When `unit` last became active, on the host's clock: the guest says
    /// how long ago that was on its own monotonic clock, and the host
    /// subtracts it from the middle of the round trip (error: half of it).
    pub fn unit_active_since_unix(&self, unit: &str) -> Result<f64> {
        let sent = now_unix();
        let out = self.guest().query(&format!(
            "cut -d' ' -f1 /proc/uptime; systemctl show -p ActiveEnterTimestampMonotonic --value {unit}"
        ))?;
        let middle = (sent + now_unix()) / 2.0;
        let mut lines = out.lines();
        let uptime: f64 = lines.next().unwrap_or_default().trim().parse()?;
        let entered_us: f64 = lines.next().unwrap_or_default().trim().parse()?;
        Ok(middle - (uptime - entered_us / 1e6))
    }

    /// Waits for the guest to answer from a boot other than `old_boot_id`
    /// (after a kexec) and records the new kernel and boot id.
    pub fn back_after_kexec(&mut self, old_boot_id: &str) -> Result<BootInfo> {
        let back = self
            .guest()
            .wait_up(KEXEC_TIMEOUT, Some(old_boot_id))
            .with_context(|| format!("after kexec; console tail:\n{}", self.vm.console_tail(30)))?;
        self.report.kernel_after = Some(back.kernel.clone());
        self.report.boot_id_after = Some(back.boot_id.clone());
        Ok(back)
    }

    /// Waits for `unit` to be active with a main pid; returns that pid and
    /// when the unit became active (host clock).
    pub fn wait_unit_active(&self, unit: &str) -> Result<(i32, f64)> {
        let guest = self.guest().clone();
        let pid = poll(
            "the unit to be active again",
            Duration::from_secs(300),
            Duration::from_millis(250),
            || {
                let (active, pid) = unit_main_pid(&guest, unit)?;
                Ok((active == "active" && pid > 0).then_some(pid))
            },
        )?;
        Ok((pid, self.unit_active_since_unix(unit)?))
    }

    /// Whether every client named in `names` has ended by itself (a client
    /// ends when its connection breaks).
    pub fn clients_have_exited(&mut self, names: &[&str]) -> bool {
        self.clients
            .iter_mut()
            .filter(|c| names.contains(&c.name.as_str()))
            .all(RunningClient::has_exited)
    }

    /// Stops every client and adds what each measured to the report.
    pub fn stop_clients(&mut self) -> Result<()> {
        for client in self.clients.drain(..) {
            let name = client.name.clone();
            let report = client.stop(Duration::from_secs(360))?;
            self.report.clients.push(NamedClient { name, report });
        }
        Ok(())
    }

    /// Settles and writes the report, prints its summary, and returns it.
    pub fn finish(mut self, outcome: Result<()>) -> ScenarioReport {
        if let Err(e) = outcome {
            self.report.error = Some(format!("{e:#}"));
        }
        // Clients still running (the scenario failed before stopping them)
        // are stopped here, so the report keeps what they measured.
        for client in std::mem::take(&mut self.clients) {
            let name = client.name.clone();
            match client.stop(Duration::from_secs(30)) {
                Ok(report) => self.report.clients.push(NamedClient { name, report }),
                Err(e) => eprintln!("lab: client {name}: {e:#}"),
            }
        }
        // The guest's whole journal of its current boot, kept beside the
        // report: the services' own logs (a proxy's request log with its
        // termination state, a restore's messages) are what explains a failed
        // check afterwards. A guest that no longer answers leaves none.
        match self.guest().run(
            "journalctl -b --no-pager -o short-unix",
            Duration::from_secs(60),
        ) {
            Ok(done) if done.status.success() => {
                let path = self.vm.run_dir.join("journal.log");
                if let Err(e) = std::fs::write(&path, done.stdout) {
                    eprintln!("lab: cannot write {}: {e}", path.display());
                }
            }
            Ok(_) | Err(_) => eprintln!("lab: the guest's journal could not be read"),
        }
        self.report.settle();
        let path = self.vm.run_dir.join("report.json");
        if let Err(e) = self.report.write(&path) {
            eprintln!("lab: {e:#}");
        }
        eprintln!("{}", self.report.summary());
        self.report
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Today's tools: `systemctl kexec` into kernel B with clients connected.
/// Expected: the guest comes back on B with a new boot id, and every client's
/// connection broke. This is what seamless-reboot must beat.
pub fn baseline_kexec(lab: &Lab) -> Result<ScenarioReport> {
    lab.run_scenario("baseline-kexec", lab_service_config(), baseline_steps)
}

/// A guest whose test service port (and nginx's) is forwarded to the host.
fn lab_service_config() -> VmConfig {
    VmConfig {
        forwards: vec![LAB_SERVICE_PORT, NGINX_PORT],
        ..VmConfig::default()
    }
}

fn baseline_steps(session: &mut Session<'_>) -> Result<()> {
    let kernel_b = session.lab.kernel_b().clone();
    let state = session.start_lab_service()?;
    session.start_standard_clients(state.total)?;

    let (back, requested) = session.kexec_with_systemd(&kernel_b)?;
    session.wait_lab_service(Duration::from_secs(120))?;
    session
        .report
        .timing("kexec_to_service_s", requested.elapsed().as_secs_f64());
    session.stop_clients()?;

    let report = &mut session.report;
    let before = report.kernel_before.clone();
    report.check(
        "guest runs kernel B",
        back.kernel == kernel_b.release,
        format!(
            "{before} -> {} (expected {})",
            back.kernel, kernel_b.release
        ),
    );
    report.check(
        "boot id changed",
        back.boot_id != report.boot_id_before,
        format!("{} -> {}", report.boot_id_before, back.boot_id),
    );
    let broken: Vec<String> = report
        .clients
        .iter()
        .map(|c| match &c.report.broken {
            Some(b) => format!("{}: {:?}", c.name, b.reason),
            None => format!("{}: survived", c.name),
        })
        .collect();
    let all_broken =
        !report.clients.is_empty() && report.clients.iter().all(|c| c.report.broken.is_some());
    report.check(
        "every client's connection broke (today's behaviour)",
        all_broken,
        broken.join(", "),
    );
    let verified_before = report.clients.iter().all(|c| c.report.bytes_verified > 0);
    report.check(
        "clients verified traffic before the kexec",
        verified_before,
        report
            .clients
            .iter()
            .map(|c| format!("{}: {} B", c.name, c.report.bytes_verified))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(())
}

/// The product: `seamless-reboot --kernel B` preserving two units: the lab's
/// test service (its own unprivileged user, no capabilities, a seccomp
/// filter) with line and bulk clients on slirp and on a Linux TCP peer, and
/// Debian's nginx as packaged (root master, www-data workers, forking) with
/// a download in flight. Expected: the guest comes back on kernel B, every
/// connection survives with nothing lost, duplicated or corrupted, the
/// service's in-memory count continues, each unit is active with its
/// restored processes (same main pid, same user, capabilities and seccomp
/// filter), runs by its own unit file again once the restores are over, and
/// its own restart, reload, stop and start work afterwards.
pub fn seamless_update(lab: &Lab) -> Result<ScenarioReport> {
    seamless(
        lab,
        SeamlessVariant {
            linux_peer: true,
            via_dbus: false,
            debian_services: true,
        },
    )
}

/// The update as update tooling drives it, straight through D-Bus, with a
/// Linux TCP stack as a second peer (the host's, in the lab's namespace, on
/// the guest's second NIC) beside the slirp peer. (`seamless-lab
/// seamless-linux-peer`; CI covers the D-Bus path in the pid collision
/// scenario and the Linux peer in [`seamless_update`].)
pub fn seamless_update_linux_peer(lab: &Lab) -> Result<ScenarioReport> {
    seamless(
        lab,
        SeamlessVariant {
            linux_peer: true,
            via_dbus: true,
            debian_services: false,
        },
    )
}

/// What a seamless scenario includes besides the lab service and its slirp
/// clients.
#[derive(Debug, Clone, Copy)]
struct SeamlessVariant {
    /// Clients on a Linux TCP stack too.
    linux_peer: bool,
    /// Start the update with `busctl` rather than the command line.
    via_dbus: bool,
    /// Preserve Debian's nginx (a download in flight) and memcached (a
    /// sandboxed unit, a client's counter) as well, and leave redis (which
    /// cannot be) to a restart.
    debian_services: bool,
}

fn seamless(lab: &Lab, variant: SeamlessVariant) -> Result<ScenarioReport> {
    let config = VmConfig {
        linux_peer: variant.linux_peer,
        ..lab_service_config()
    };
    let name = if variant.via_dbus {
        "seamless-update-dbus"
    } else {
        "seamless-update"
    };
    lab.run_scenario(name, config, |session| seamless_steps(session, variant))
}

/// A unit's `ActiveState` and `MainPID`. (`systemctl show --value` prints
/// values in its own order, not the order asked for, so keys are parsed.)
pub(crate) fn unit_main_pid(guest: &Guest, unit: &str) -> Result<(String, i32)> {
    let out = guest.query(&format!("systemctl show -p ActiveState -p MainPID {unit}"))?;
    Ok(parse_active_and_pid(&out))
}

/// What makes a process's sandbox, in one round trip: from
/// `/proc/PID/status` its user and group ids, no-new-privileges, seccomp
/// mode and filter count, and capability sets, one `Key: value` a line; then
/// a `Namespaces:` line with the kinds of namespace it has that PID 1 has
/// not, and its hostname.
pub(crate) fn process_identity(guest: &Guest, pid: i32) -> Result<String> {
    let out = guest.query(&format!(
        "grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|Seccomp_filters|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/{pid}/status && \
         printf 'Namespaces:\t' && \
         for k in cgroup ipc mnt net pid user uts; do \
           [ \"$(readlink /proc/{pid}/ns/$k)\" = \"$(readlink /proc/1/ns/$k)\" ] || printf '%s ' $k; \
         done && nsenter -t {pid} -u hostname"
    ))?;
    Ok(out)
}

/// How long the checkpoint kept `unit` frozen, in milliseconds, from
/// `seamless-reboot status --json`.
fn frozen_ms(status_json: &str, unit: &str) -> Option<u64> {
    let status: serde_json::Value = serde_json::from_str(status_json.trim()).ok()?;
    status["units"]
        .as_array()?
        .iter()
        .find(|u| u["unit"] == unit)?["frozen_ms"]
        .as_u64()
}

fn parse_active_and_pid(show: &str) -> (String, i32) {
    let mut state = String::new();
    let mut pid = 0;
    for line in show.lines() {
        match line.split_once('=') {
            Some(("ActiveState", v)) => state = v.trim().to_string(),
            Some(("MainPID", v)) => pid = v.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    (state, pid)
}

/// A pid collision in the next boot: a lab unit ordered before the hold
/// takes the test service's pid early in the boot (as an unlucky early
/// process could). Expected: the collision is detected, the unit cold-starts
/// with its own command and is active, `seamless-reboot status` says
/// cold-started and names the pid, and the clients are told promptly (their
/// connections end with a reset or EOF instead of hanging). In the same
/// kexec, a second unit (Debian's memcached) has one of its images
/// corrupted on disk between the hand-over and the kexec: its restore
/// refuses the snapshot (digest mismatch), it cold-starts, and `status`
/// says why. A third unit of the same kexec (the lab's second service,
/// `lab-blocker.service`, no fault injected) is restored with its main pid,
/// its client's connection intact. The guest has `/var` on a filesystem of
/// its own, on a second disk mounted from `/etc/fstab`, for the whole run
/// ([`crate::var_disk`]): the next boot's generator cannot read the snapshot
/// there, and the units must still be held back and restored. Then, from
/// kernel B, an update whose new kernel fails to boot
/// ([`crate::faults::new_kernel_fails_to_boot`]).
pub fn pid_collision(lab: &Lab) -> Result<ScenarioReport> {
    let config = VmConfig {
        forwards: vec![LAB_SERVICE_PORT, NGINX_PORT, LAB_BLOCKER_PORT],
        data_disk_mib: Some(crate::var_disk::VAR_DISK_MIB),
        ..VmConfig::default()
    };
    lab.run_scenario("pid-collision", config, pid_collision_steps)
}

fn pid_collision_steps(session: &mut Session<'_>) -> Result<()> {
    let kernel_b = session.lab.kernel_b().clone();
    let unit = "lab-service.service";
    let restored_unit = "lab-blocker.service";
    crate::var_disk::move_var(session)?;
    let state = session.start_lab_service()?;
    let (_, pid_before) = unit_main_pid(session.guest(), unit)?;
    session.guest().sh(&format!(
        "mkdir -p /var/lib/seamless-lab && echo {pid_before} > /var/lib/seamless-lab/squat-pid \
         && systemctl enable lab-pid-squatter.service"
    ))?;
    session.start_standard_clients(state.total)?;
    // The unit without a fault, with a client of its own.
    session
        .guest()
        .sh(&format!("systemctl start {restored_unit}"))?;
    let restored_total_before = poll(
        "the lab's second service to answer",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || session.probe_at(LAB_BLOCKER_PORT).map(Some),
    )?
    .total;
    session.start_client_at(
        "lines-restored",
        ClientSpec::Lines { interval_ms: 50 },
        LAB_BLOCKER_PORT,
    )?;
    poll(
        "traffic to the lab's second service to flow",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            Ok(
                (session.probe_at(LAB_BLOCKER_PORT)?.total >= restored_total_before + 20)
                    .then_some(()),
            )
        },
    )?;
    let (_, restored_pid_before) = unit_main_pid(session.guest(), restored_unit)?;
    let restored_at_update = session.probe_at(LAB_BLOCKER_PORT)?.total;
    let old = session.guest().boot_info()?;
    let (_, memcached_before) = unit_main_pid(session.guest(), "memcached.service")?;
    // The second fault: once the manifest is written (the hand-over), one
    // byte of one of memcached's images changes on disk before the kexec,
    // from a unit the shutdown leaves alone.
    session.guest().sh(
        "systemd-run --quiet --unit=lab-corrupt-image.service -p DefaultDependencies=no --expand-environment=no /bin/sh -c \
         'until ls /var/lib/seamless-reboot/images/*/manifest >/dev/null 2>&1; do sleep 0.01; done; \
          f=$(ls /var/lib/seamless-reboot/images/*/unit-memcached.service/images/pages-*.img | head -1); \
          printf X | dd of=$f bs=1 seek=100 conv=notrunc 2>/dev/null; sync; \
          echo $f > /var/lib/seamless-lab/corrupted-image; sync'",
    )?;
    // Through D-Bus, as update tooling would start it.
    let update = session.guest().run(
        &format!(
            "busctl --timeout=150 call {DBUS_DEST} Start ssasasas /boot/{} '' 0 3 {unit} memcached.service {restored_unit} 1 allow-downgrade && \
             busctl wait {DBUS_DEST} Completed 2>/dev/null || \
             for i in $(seq 600); do busctl get-property {DBUS_DEST} Operation; sleep 0.5; done",
            kernel_b.vmlinuz
        ),
        Duration::from_secs(300),
    )?;
    std::fs::write(session.vm.run_dir.join("update.log"), update.output())?;
    let back = session.back_after_kexec(&old.boot_id)?;
    crate::var_disk::check_var(session, "after the kexec")?;
    let (started_pid, started_at) = session.wait_unit_active(unit)?;
    // The clients end by themselves once the peer hears a reset.
    let ended = poll(
        "the clients to see their connections end",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            Ok(session
                .clients_have_exited(&["lines", "bulk"])
                .then_some(()))
        },
    );
    // The restored unit's client goes on: traffic resumes on its connection.
    let (restored_pid_after, _) = session.wait_unit_active(restored_unit)?;
    let restored_total_after = session.probe_at(LAB_BLOCKER_PORT)?.total;
    let resumed = poll(
        "traffic to the restored unit to resume",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || {
            Ok(
                (session.probe_at(LAB_BLOCKER_PORT)?.total > restored_total_after + 40)
                    .then_some(()),
            )
        },
    );
    session.stop_clients()?;
    let guest = session.guest().clone();
    let squatter = guest.sh("systemctl show -p MainPID --value lab-pid-squatter.service")?;
    let status = guest.sh("seamless-reboot status")?;
    std::fs::write(session.vm.run_dir.join("status.txt"), &status)?;
    let corrupted = guest.sh("cat /var/lib/seamless-lab/corrupted-image 2>/dev/null || true")?;
    let (memcached_state, memcached_after) = poll(
        "memcached to be active",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || {
            let (state, pid) = unit_main_pid(&guest, "memcached.service")?;
            Ok((state == "active").then_some((state, pid)))
        },
    )
    .unwrap_or_else(|e| (format!("{e:#}"), 0));
    let status_of = |u: &str| {
        status
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{u}:")))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let memcached_status = status_of("memcached.service");
    let restored_status = status_of(restored_unit);
    let hold_log = guest.sh("journalctl -b -u seamless-reboot-hold.service --no-pager -o cat")?;
    std::fs::write(session.vm.run_dir.join("hold.log"), &hold_log)?;

    let report = &mut session.report;
    report.check(
        "guest runs kernel B",
        back.kernel == kernel_b.release && back.boot_id != report.boot_id_before,
        format!("{} -> {}", report.kernel_before, back.kernel),
    );
    report.check(
        "the squatter took the service's pid before the hold",
        squatter.trim() == pid_before.to_string(),
        format!("service pid {pid_before}, squatter pid {}", squatter.trim()),
    );
    report.check(
        "the hold saw the collision",
        hold_log.contains(&format!("pid {pid_before} of {unit} is taken")),
        crate::process::tail(&hold_log, 4).trim().to_string(),
    );
    report.check(
        "the unit cold-started and is active",
        started_pid != pid_before
            && status.contains("cold-started")
            && status.contains("pid collision"),
        format!("MainPID {pid_before} -> {started_pid}; {}", status.trim()),
    );
    report.check(
        "the clients were told instead of left hanging",
        ended.is_ok(),
        format!("{ended:?}"),
    );
    report.check(
        "corrupt image: one of memcached's images was changed after the hand-over",
        corrupted.contains("unit-memcached.service/images/pages-"),
        corrupted.trim().to_string(),
    );
    report.check(
        "corrupt image: memcached was not restored from it but cold-started, and status names the corrupt image",
        memcached_state == "active"
            && memcached_after != memcached_before
            && memcached_status.contains("cold-started")
            && memcached_status.contains("is corrupt"),
        format!("memcached {memcached_state}, MainPID {memcached_before} -> {memcached_after}; {memcached_status}"),
    );
    report.check(
        "the unit without a fault was restored with its main pid, not cold-started",
        restored_pid_after == restored_pid_before
            && restored_status.contains(": restored")
            && restored_status.contains(&format!("restored pid {restored_pid_before}")),
        format!("{restored_unit} MainPID {restored_pid_before} -> {restored_pid_after}; {restored_status}"),
    );
    for client in report.clients.clone() {
        let r = &client.report;
        if client.name == "lines-restored" {
            // Its longest gap is the update's blackout: a client whose
            // traffic never paused proves nothing.
            report.check(
                "lines-restored: the restored unit's connection survived the update with nothing lost and its count continued",
                resumed.is_ok()
                    && r.broken.is_none()
                    && r.lost == 0
                    && r.bytes_verified > 0
                    && r.max_gap_s > 5.0
                    && r.kernels_seen.last() == Some(&kernel_b.release)
                    && r.kernels_seen.len() == 2
                    && r.state_last.is_some_and(|l| l > restored_at_update),
                format!(
                    "sent {} B, verified {} B, lost {}, max gap {:.2} s, kernels {:?}, count {} at the update, {:?} at the end, broken {:?}; {}",
                    r.bytes_sent,
                    r.bytes_verified,
                    r.lost,
                    r.max_gap_s,
                    r.kernels_seen,
                    restored_at_update,
                    r.state_last,
                    r.broken,
                    resumed
                        .as_ref()
                        .map_or_else(|e| format!("{e:#}"), |()| "traffic resumed".into())
                ),
            );
            report.timing("lines-restored_blackout_s", r.max_gap_s);
            continue;
        }
        if let Some(broken) = &r.broken {
            report.timing(
                &format!("{}_end_after_cold_start_s", client.name),
                broken.at_unix - started_at,
            );
        }
        // Ended by a reset or EOF, not by a corrupt or out-of-order reply
        // (that would be a violation) nor by a timeout. What was in flight
        // at the checkpoint is lost with the connection, as with a restart.
        report.check(
            &format!("{}: ended with reset or EOF", client.name),
            r.broken
                .as_ref()
                .is_some_and(|b| matches!(b.reason, BreakReason::Eof | BreakReason::Reset)),
            format!("{:?}", r.broken),
        );
    }
    // The same guest then serves the next fault: an update whose kernel
    // does not boot; the cold boot after it mounts /var from fstab again.
    crate::faults::new_kernel_fails_to_boot(session)?;
    crate::var_disk::check_var(session, "in the cold boot after the kernel that failed")
}

/// A failed checkpoint: `seamless-reboot` with two units, and the CRIU that
/// dumps the second killed halfway. Expected: the command fails and says
/// why, no kexec happens, both units run on the old kernel (the first with
/// its old main pid, restored in place; the second as it was, or started
/// again if its half-done dump took it down, which the error says), the
/// first unit's connections survive with nothing lost, no kernel stays
/// loaded, and no drop-in or lock rule is left behind. Before that, dry runs
/// refuse units the plan knows CRIU cannot checkpoint: a process outside
/// the main process's tree, a user or network namespace, an io_uring. After
/// it, in the same guest, the faults of [`crate::faults`]: the image store
/// filling up mid-update, the daemon killed mid-update, and the kexec job
/// cancelled after the hand-over.
pub fn failed_checkpoint(lab: &Lab) -> Result<ScenarioReport> {
    lab.run_scenario(
        "failed-checkpoint",
        lab_service_config(),
        failed_checkpoint_steps,
    )
}

fn failed_checkpoint_steps(session: &mut Session<'_>) -> Result<()> {
    let kernel_b = session.lab.kernel_b().clone();
    let guest = session.guest().clone();
    let state = session.start_lab_service()?;

    // First the plan's refusal: a unit with a process outside its main
    // process's tree (here an orphan that PID 1 adopted), which CRIU would
    // not save, is refused by the dry run before anything is touched.
    guest
        .sh("systemd-run --unit=lab-stray.service /bin/sh -c '(sleep 1000 &); exec sleep 1001'")?;
    let refusal = check_refuses(
        &guest,
        &kernel_b.vmlinuz,
        "lab-stray.service",
        &["not under its main process"],
    );
    guest.sh("systemctl stop lab-stray.service")?;
    session.report.check(
        "a unit with a process outside its main tree is refused by the check",
        refusal.is_ok(),
        refusal.unwrap_or_else(|e| format!("{e:#}")),
    );
    // A unit in namespaces CRIU cannot checkpoint (made by its sandbox
    // options) is refused by the check, in an operator's words, rather than
    // by CRIU; its mount and hostname namespaces are not what stops it.
    guest.sh(
        "systemd-run --unit=lab-sandboxed.service -p PrivateTmp=yes -p ProtectHostname=yes \
         -p PrivateNetwork=yes -p PrivateUsers=yes /bin/sleep 1002",
    )?;
    let refusal = check_refuses(
        &guest,
        &kernel_b.vmlinuz,
        "lab-sandboxed.service",
        &[
            "lab-sandboxed.service: cannot be preserved: it runs in its own network namespace",
            "PrivateNetwork=",
            "its own user namespace",
            "PrivateUsers=",
        ],
    )
    .and_then(|text| {
        if text.contains("its own mount namespace") {
            anyhow::bail!("the mount namespace was named as a reason: {text}");
        }
        Ok(text)
    });
    guest.sh("systemctl stop lab-sandboxed.service")?;
    session.report.check(
        "a unit in namespaces of its own is refused by the check, naming the options",
        refusal.is_ok(),
        refusal.unwrap_or_else(|e| format!("{e:#}")),
    );
    // Units are resolved to systemd's own names: one named twice (without
    // and with its suffix) is refused, and so is the system bus; so is an
    // argument that would change what the next boot runs.
    let refusal = check_refuses(
        &guest,
        &kernel_b.vmlinuz,
        "lab-service --unit lab-service.service --unit dbus --append init=/bin/sh",
        &[
            "lab-service.service: names lab-service.service, which is already in the update (as lab-service)",
            "dbus (dbus.service): cannot be preserved: it is the system bus",
            "\"init=/bin/sh\" would change what the next boot runs",
            // The lab's kernel B is older than A.
            "is older than the running kernel",
            "pass --allow-downgrade",
        ],
    );
    session.report.check(
        "a unit named twice, the system bus, `--append init=` and an older kernel without \
         --allow-downgrade are refused by the check",
        refusal.is_ok(),
        refusal.unwrap_or_else(|e| format!("{e:#}")),
    );

    // Debian's ssh.service while a login session runs (this very check's):
    // the session's processes descend from sshd but live in a session
    // scope; the check says sessions are not preserved.
    let refusal = check_refuses(
        &guest,
        &kernel_b.vmlinuz,
        "ssh.service",
        &[
            "ssh.service: cannot be preserved while process",
            "session-",
            "sessions are not preserved",
        ],
    );
    session.report.check(
        "ssh.service with a live login session is refused by the check: sessions are not preserved",
        refusal.is_ok(),
        refusal.unwrap_or_else(|e| format!("{e:#}")),
    );
    // A unit holding an io_uring instance, which CRIU cannot checkpoint, is
    // refused by the check too, rather than by its dump.
    guest.sh("systemd-run --unit=lab-io-uring.service \
         /usr/local/lib/seamless-lab/lab-service --listen 0.0.0.0:7779 --hold-io-uring")?;
    let refusal = check_refuses(
        &guest,
        &kernel_b.vmlinuz,
        "lab-io-uring.service",
        &[
            "lab-io-uring.service: cannot be preserved",
            "holds an io_uring instance",
            "which CRIU cannot checkpoint",
        ],
    );
    guest.sh("systemctl stop lab-io-uring.service")?;
    session.report.check(
        "a unit holding an io_uring instance is refused by the check",
        refusal.is_ok(),
        refusal.unwrap_or_else(|e| format!("{e:#}")),
    );

    guest.sh("systemctl start lab-blocker.service")?;
    let (_, service_pid) = unit_main_pid(&guest, "lab-service.service")?;
    let (blocker_state, blocker_pid) = unit_main_pid(&guest, "lab-blocker.service")?;
    if blocker_state != "active" {
        anyhow::bail!("lab-blocker.service did not start: {blocker_state}");
    }
    session.start_standard_clients(state.total)?;
    let before = session.probe()?;

    // The fault: the CRIU that dumps the blocker (the second unit) is killed
    // halfway, as soon as it has seized the blocker's process (its tracer).
    let update = guest.run(
        &format!(
            "{} \
             seamless-reboot --kernel /boot/{} --allow-downgrade --unit lab-service.service --unit lab-blocker.service --yes; \
             status=$?; wait; exit $status",
            crate::faults::when_criu_seizes(
                blocker_pid,
                "kill -9 $t && echo \"CRIU $t killed while dumping pid $p\"",
                "/run/lab-killed-criu",
            ),
            kernel_b.vmlinuz
        ),
        Duration::from_secs(300),
    )?;
    let killed = guest.sh("cat /run/lab-killed-criu 2>/dev/null || true")?;
    let output = update.output();
    std::fs::write(session.vm.run_dir.join("update.log"), &output)?;

    let resumed = poll(
        "traffic to resume",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || Ok((session.probe()?.total > before.total + 100).then_some(())),
    );
    session.stop_clients()?;
    resumed?;

    let now = guest.boot_info()?;
    let (service_state, service_pid_after) = unit_main_pid(&guest, "lab-service.service")?;
    let (blocker_state, blocker_pid_after) = unit_main_pid(&guest, "lab-blocker.service")?;
    let loaded = guest.sh("cat /sys/kernel/kexec_loaded")?;
    let leftovers = guest.sh(
        "ls /run/systemd/system/*.d/50-seamless-reboot-* 2>/dev/null; nft list tables | grep CRIU || true",
    )?;

    let report = &mut session.report;
    report.kernel_after = Some(now.kernel.clone());
    report.boot_id_after = Some(now.boot_id.clone());
    report.check(
        "the fault happened: CRIU was killed while dumping the second unit",
        !killed.trim().is_empty(),
        killed.trim().to_string(),
    );
    // Either the blocker survived its half-done dump and everything was
    // undone, or it did not and was started again, which the error says.
    report.check(
        "the update failed and said why",
        !update.status.success()
            && output.contains("checkpoint of lab-blocker.service failed")
            && (output.contains("everything was undone")
                || output.contains("lab-blocker.service was inactive after its checkpoint failed; it was started again")
                || output.contains("lab-blocker.service was failed after its checkpoint failed; it was started again")),
        crate::process::tail(&output, 4).trim().to_string(),
    );
    report.check(
        "no kexec: same boot, same kernel",
        now.boot_id == report.boot_id_before && now.kernel == report.kernel_before,
        format!("{} on {}", now.boot_id, now.kernel),
    );
    report.check(
        "no kernel left loaded",
        loaded.trim() == "0",
        format!("/sys/kernel/kexec_loaded = {}", loaded.trim()),
    );
    let blocker_restarted = output.contains("lab-blocker.service was");
    report.check(
        "both units running: the first restored with its old main pid, the second as it was or started again as reported",
        service_state == "active"
            && service_pid_after == service_pid
            && blocker_state == "active"
            && (blocker_pid_after == blocker_pid || blocker_restarted),
        format!(
            "lab-service {service_state} {service_pid} -> {service_pid_after}, lab-blocker {blocker_state} {blocker_pid} -> {blocker_pid_after}"
        ),
    );
    report.check(
        "no drop-in or lock rule left behind",
        leftovers.trim().is_empty(),
        leftovers.trim().to_string(),
    );
    for client in report.clients.clone() {
        let r = &client.report;
        report.check(
            &format!("{}: connection survived with nothing lost", client.name),
            r.broken.is_none() && r.lost == 0 && r.bytes_verified > 0,
            format!(
                "verified {} B, lost {}, max gap {:.2} s, broken {:?}",
                r.bytes_verified, r.lost, r.max_gap_s, r.broken
            ),
        );
        report.timing(&format!("{}_blackout_s", client.name), r.max_gap_s);
    }
    // The same guest serves the faults past the checkpoints.
    crate::faults::image_store_full(session)?;
    crate::faults::daemon_killed_mid_update(session)?;
    crate::faults::kexec_job_cancelled(session)
}

/// A stock Debian unit the product cannot preserve (redis: its packaged
/// unit has `PrivateUsers=`), which the seamless scenario's configuration
/// leaves to a restart.
const UNPRESERVABLE_UNIT: &str = "redis-server.service";

/// memcached's port.
const MEMCACHED_PORT: u16 = 11211;

/// Debian's memcached (its packaged, sandboxed unit: its own user, a mount
/// namespace with `PrivateTmp=`, `ProtectSystem=full`, `PrivateDevices=`,
/// `NoNewPrivileges=`, a capability bounding set), with a client on the
/// Linux peer incrementing a counter over one connection, and a file in the
/// unit's private /tmp.
struct MemcachedSession {
    client: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    main_pid: i32,
    identity: String,
    private_file: String,
}

/// What the restored memcached must still have in its private /tmp.
const MEMCACHED_TMP_TEXT: &str = "written before the update";

impl MemcachedSession {
    fn start(session: &Session<'_>) -> Result<MemcachedSession> {
        let guest = session.guest();
        // The operator's one change: listen beyond localhost.
        guest.sh(
            "sed -i 's/^-l 127.0.0.1$/-l 0.0.0.0/' /etc/memcached.conf && \
             systemctl restart memcached.service && systemctl is-active memcached.service",
        )?;
        let (_, main_pid) = unit_main_pid(guest, "memcached.service")?;
        let identity = process_identity(guest, main_pid)?;
        let private_file = guest
            .sh(&format!(
                "d=$(ls -d /tmp/systemd-private-*-memcached.service-*/tmp) && \
                 echo '{MEMCACHED_TMP_TEXT}' > $d/lab.txt && echo $d/lab.txt"
            ))?
            .trim()
            .to_string();
        let binary = required_binary(&session.lab.bin_dir, "lab-memcached-client")?;
        let log = std::fs::File::create(session.vm.run_dir.join("client-memcached.log"))?;
        let mut client = crate::process::wrapped_command(&session.wrapper(), binary)
            .args([
                "--connect",
                &format!("{GUEST_PEER_ADDR}:{MEMCACHED_PORT}"),
                "--interval-ms",
                "100",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .context("cannot start the memcached client")?;
        let stdin = client.stdin.take();
        std::thread::sleep(Duration::from_secs(2));
        if let Some(status) = client.try_wait()? {
            anyhow::bail!("the memcached client ended at once ({status})");
        }
        Ok(MemcachedSession {
            client,
            stdin,
            main_pid,
            identity,
            private_file,
        })
    }

    /// After the update: the same process in its own sandbox, the client's
    /// counter continued on its connection, the private /tmp kept, and the
    /// unit's own restart, stop and start work. Returns the checks.
    fn after_update(mut self, session: &Session<'_>) -> Result<Vec<(String, bool, String)>> {
        let guest = session.guest().clone();
        let mut checks = Vec::new();
        let (state, pid) = unit_main_pid(&guest, "memcached.service")?;
        let identity = process_identity(&guest, pid)?;
        checks.push((
            "memcached: active with the same process, user, capabilities and seccomp filter"
                .to_string(),
            state == "active" && pid == self.main_pid && identity == self.identity,
            format!("{state}; MainPID {} -> {pid}:\n{identity}", self.main_pid),
        ));
        let sandbox = guest.sh(&format!(
            "[ \"$(readlink /proc/{pid}/ns/mnt)\" != \"$(readlink /proc/1/ns/mnt)\" ] && \
             nsenter -t {pid} -m cat /tmp/lab.txt && \
             nsenter -t {pid} -m sh -c 'touch /usr/x 2>&1 || true'"
        ));
        checks.push((
            "memcached: back in its own mount namespace, with its private /tmp and a read-only /usr"
                .to_string(),
            sandbox.as_ref().is_ok_and(|out| {
                out.contains(MEMCACHED_TMP_TEXT) && out.contains("Read-only file system")
            }),
            format!("{sandbox:?} (written to {} before)", self.private_file),
        ));
        // Some increments after the restore, then the client's report.
        std::thread::sleep(Duration::from_secs(3));
        drop(self.stdin.take());
        let finished = poll(
            "the memcached client to stop",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || self.client.try_wait().map_err(Into::into),
        );
        let mut report = String::new();
        if let Some(mut out) = self.client.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut report)?;
        }
        let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap_or_default();
        let longest_wait_ms = report["longest_wait_ms"].as_u64().unwrap_or(0);
        checks.push((
            "memcached: the client's counter continued on its connection, no increment lost or repeated"
                .to_string(),
            finished.as_ref().is_ok_and(std::process::ExitStatus::success)
                && report["error"].is_null()
                && report["increments"].as_u64().unwrap_or(0) > 50
                // The update happened within the connection's life.
                && longest_wait_ms > 5_000,
            format!("{finished:?}; {report}"),
        ));
        let OwnCommands {
            restart,
            after_restart,
            stop_start,
        } = own_commands(&guest, "memcached.service")?;
        checks.push((
            "memcached: systemctl restart, stop and start work afterwards".to_string(),
            restart.is_ok()
                && after_restart != self.main_pid
                && after_restart > 0
                && stop_start.is_ok(),
            format!("restart {restart:?} (MainPID {after_restart}); stop/start {stop_start:?}"),
        ));
        Ok(checks)
    }
}

/// A download by curl on the host (where QEMU runs), slowed down so that it
/// spans the update.
#[derive(Debug)]
pub struct Download {
    curl: std::process::Child,
    file: PathBuf,
    log: PathBuf,
    pub(crate) sha256: String,
}

impl Download {
    /// Starts fetching `url` into `<run dir>/<name>` and returns once it is
    /// under way; `sha256` is what the file must hash to.
    pub fn start(session: &Session<'_>, url: &str, name: &str, sha256: &str) -> Result<Download> {
        let file = session.vm.run_dir.join(name);
        let log_path = session.vm.run_dir.join(format!("{name}.curl.log"));
        let log = std::fs::File::create(&log_path)?;
        let curl = crate::process::wrapped_command(&session.wrapper(), "curl")
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "--limit-rate",
                NGINX_RATE,
                "-o",
            ])
            .arg(&file)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start curl")?;
        poll(
            &format!("the download of {url} to start"),
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                Ok(
                    (std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) > 256 << 10)
                        .then_some(()),
                )
            },
        )?;
        Ok(Download {
            curl,
            file,
            log: log_path,
            sha256: sha256.to_string(),
        })
    }

    /// Whether curl is still fetching.
    pub fn running(&mut self) -> bool {
        matches!(self.curl.try_wait(), Ok(None))
    }

    /// Waits (up to `timeout`) for curl to end; whether the file is complete
    /// (curl succeeded and the hash is equal), and what was seen.
    pub fn finish(&mut self, timeout: Duration) -> Result<(bool, String)> {
        let finished = poll(
            "the download to finish",
            timeout,
            Duration::from_secs(1),
            || self.curl.try_wait().map_err(Into::into),
        );
        let got = crate::process::run(
            std::process::Command::new("sha256sum").arg(&self.file),
            Duration::from_secs(60),
        )?
        .stdout;
        let got = got
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let curl_log = std::fs::read_to_string(&self.log).unwrap_or_default();
        Ok((
            finished
                .as_ref()
                .is_ok_and(std::process::ExitStatus::success)
                && got == self.sha256,
            format!(
                "curl {finished:?} {}; sha256 {got} (served {})",
                curl_log.trim(),
                self.sha256
            ),
        ))
    }
}

/// A download from Debian's nginx (its packaged unit and configuration) by
/// curl on the host through QEMU's forward.
#[derive(Debug)]
struct NginxDownload {
    download: Download,
    master_pid: i32,
    workers: String,
}

/// Bytes of the file nginx serves, and the rate curl reads it at: about
/// three and a half minutes of transfer, started right before the update.
const NGINX_FILE_MIB: u32 = 32;
const NGINX_RATE: &str = "160k";

impl NginxDownload {
    fn start(session: &Session<'_>) -> Result<NginxDownload> {
        let guest = session.guest();
        let (state, master_pid) = unit_main_pid(guest, "nginx.service")?;
        if state != "active" {
            anyhow::bail!("nginx.service is {state} in the guest");
        }
        let sha256 = guest.sh(&format!(
            "head -c {NGINX_FILE_MIB}M /dev/urandom > /var/www/html/big.bin && \
             sha256sum /var/www/html/big.bin | cut -d' ' -f1"
        ))?;
        let workers = nginx_workers(guest)?;
        // QEMU's forwards listen where QEMU runs (in the lab's namespace
        // when the guest has a Linux peer).
        let url = format!(
            "http://127.0.0.1:{}/big.bin",
            session.vm.host_port(NGINX_PORT)?
        );
        let download = Download::start(session, &url, "nginx-big.bin", sha256.trim())?;
        Ok(NginxDownload {
            download,
            master_pid,
            workers,
        })
    }
}

/// The pids of nginx's worker processes, comma-separated.
fn nginx_workers(guest: &Guest) -> Result<String> {
    Ok(guest
        .sh("pgrep -u www-data -d, -x nginx || true")?
        .trim()
        .to_string())
}

/// After the update: nginx is the same processes, the download finished
/// byte for byte, and the unit's own reload, restart, stop and start work.
/// Returns the checks (name, passed, detail).
fn nginx_after_update(
    session: &Session<'_>,
    mut download: NginxDownload,
) -> Result<Vec<(String, bool, String)>> {
    let guest = session.guest().clone();
    let mut checks = Vec::new();
    let (state, master_after) = unit_main_pid(&guest, "nginx.service")?;
    let workers_after = nginx_workers(&guest)?;
    checks.push((
        "nginx: active with the same master and worker processes".to_string(),
        state == "active"
            && master_after == download.master_pid
            && workers_after == download.workers,
        format!(
            "{state}; master {} -> {master_after}; workers {} -> {workers_after}",
            download.master_pid, download.workers
        ),
    ));
    let (complete, detail) = download.download.finish(Duration::from_secs(600))?;
    checks.push((
        "nginx: the download completed byte for byte".to_string(),
        complete,
        detail,
    ));
    // The unit's own commands, now that it runs by its unit file again:
    // reload reads the pid file the restore wrote.
    let reload = guest.sh("systemctl reload nginx.service && systemctl is-active nginx.service");
    let (_, after_reload) = unit_main_pid(&guest, "nginx.service")?;
    checks.push((
        "nginx: systemctl reload works afterwards (same master)".to_string(),
        reload.is_ok() && after_reload == download.master_pid,
        format!("{reload:?}; MainPID {after_reload}"),
    ));
    let OwnCommands {
        restart,
        after_restart,
        stop_start,
    } = own_commands(&guest, "nginx.service")?;
    checks.push((
        "nginx: systemctl restart works afterwards (new master)".to_string(),
        restart.is_ok() && after_restart != download.master_pid && after_restart > 0,
        format!("{restart:?}; MainPID {after_restart}"),
    ));
    checks.push((
        "nginx: systemctl stop and start work afterwards".to_string(),
        stop_start.is_ok(),
        format!("{stop_start:?}"),
    ));
    Ok(checks)
}

/// What a unit's own commands did after the update.
pub(crate) struct OwnCommands {
    /// `systemctl restart` (then `is-active`).
    pub restart: Result<String>,
    /// The main pid after the restart.
    pub after_restart: i32,
    /// `systemctl stop`, not active, `systemctl start`, active.
    pub stop_start: Result<String>,
}

/// Runs `unit`'s own restart, then stop and start, as an operator would.
pub(crate) fn own_commands(guest: &Guest, unit: &str) -> Result<OwnCommands> {
    let restart = guest.sh(&format!(
        "systemctl restart {unit} && systemctl is-active {unit}"
    ));
    let (_, after_restart) = unit_main_pid(guest, unit)?;
    let stop_start = guest.sh(&format!(
        "systemctl stop {unit} && ! systemctl is-active {unit} && \
         systemctl start {unit} && systemctl is-active {unit}"
    ));
    Ok(OwnCommands {
        restart,
        after_restart,
        stop_start,
    })
}

/// A lab-only polkit rule that logs the details of each seamless-reboot
/// Start polkit is asked about (it decides nothing). Through `logger`:
/// Debian runs polkitd with `--no-debug`, which drops `polkit.log`.
const POLKIT_LOG_RULE: &str = "polkit.addRule(function(action, subject) {\n\
    if (action.id == \"org.seamlessreboot.start\") {\n\
        polkit.spawn([\"/usr/bin/logger\", \"-t\", \"lab-polkit-details\",\n\
            \"user=\" + subject.user + \" kernel=\" + action.lookup(\"kernel\") +\n\
            \" units=\" + action.lookup(\"units\")]);\n\
    }\n\
});\n";

/// An administrator's Start, without a polkit agent: refused because it
/// needs authentication, twice (nothing kept); the details polkit saw (the
/// kernel and units) are in the detail. `(passed, detail)`.
fn admin_start_asks_for_authentication(
    session: &Session<'_>,
    vmlinuz: &str,
    unit: &str,
) -> Result<(bool, String)> {
    let guest = session.guest();
    guest.sh(&format!(
        "id labadmin >/dev/null 2>&1 || useradd -m -G sudo labadmin; \
         mkdir -p /etc/polkit-1/rules.d; \
         printf '%s' '{POLKIT_LOG_RULE}' > /etc/polkit-1/rules.d/10-lab-log-details.rules; \
         systemctl restart polkit.service"
    ))?;
    let start = format!(
        "runuser -u labadmin -- busctl --timeout=150 call {DBUS_DEST} Start ssasasas /boot/{vmlinuz} '' 0 1 {unit} 1 allow-downgrade"
    );
    let first = guest.run(&start, Duration::from_secs(200))?;
    let second = guest.run(&start, Duration::from_secs(200))?;
    let implicit = guest.sh(
        "pkaction --verbose --action-id org.seamlessreboot.start | grep -i 'implicit active'",
    )?;
    let logged = guest
        .sh("journalctl -u polkit.service --no-pager -o cat | grep lab-polkit-details | tail -1")?;
    let daemon = guest.sh(
        "journalctl -u seamless-reboot.service --no-pager -o cat | grep -E 'Start by .* refused' | tail -1",
    )?;
    guest.sh("rm -f /etc/polkit-1/rules.d/10-lab-log-details.rules")?;
    let refused = |o: &crate::process::Finished| !o.status.success();
    // The details are reported, not required: how a rule may log differs
    // between polkit builds.
    let passed = refused(&first)
        && refused(&second)
        && implicit.trim().ends_with("auth_admin")
        && daemon.contains("refused");
    Ok((
        passed,
        format!(
            "{}; {}; polkit: {}; daemon: {}",
            first.output().trim(),
            implicit.trim(),
            logged.trim(),
            daemon.trim()
        ),
    ))
}

/// After an update, as `labuser`: the store cannot be listed, the records
/// cannot be read, `status` says the snapshots are root's, and the
/// daemon's `LastReport` names the units and outcomes but no pid, path or
/// command line. `(passed, detail)`.
fn unprivileged_user_learns_no_details(session: &Session<'_>) -> Result<(bool, String)> {
    let guest = session.guest();
    let as_user = |command: &str| {
        guest.run(
            &format!("runuser -u labuser -- {command}"),
            Duration::from_secs(120),
        )
    };
    let list = as_user("ls /var/lib/seamless-reboot/images")?;
    let manifest = guest.sh("ls -d /var/lib/seamless-reboot/images/t*/manifest | tail -1")?;
    let read = as_user(&format!("cat {}", manifest.trim()))?;
    let status = as_user("seamless-reboot status")?;
    let report = as_user(&format!(
        "busctl --timeout=150 get-property {DBUS_DEST} LastReport"
    ))?;
    let as_root = guest.sh(&format!(
        "busctl --timeout=150 get-property {DBUS_DEST} LastReport"
    ))?;
    let report_text = report.output();
    let passed = !list.status.success()
        && list.output().contains("Permission denied")
        && !manifest.trim().is_empty()
        && !read.status.success()
        && !status.status.success()
        && status.output().contains("are root's")
        && report.status.success()
        && report_text.contains("withheld")
        && !report_text.contains("restored pid")
        && !report_text.contains("/var/lib")
        && as_root.contains("restored pid");
    Ok((
        passed,
        format!(
            "ls: {}; cat manifest: {}; status: {}; LastReport as labuser: {}",
            list.output().trim(),
            read.output().trim(),
            status.output().trim(),
            report_text.trim()
        ),
    ))
}

/// Runs `seamless-reboot --check` for `unit` until it fails saying every one
/// of `needles` (the unit may need a moment to reach the state the check
/// refuses); returns what it said, or an error with its last answer.
pub(crate) fn check_refuses(
    guest: &Guest,
    vmlinuz: &str,
    unit: &str,
    needles: &[&str],
) -> Result<String> {
    let mut last_output = String::new();
    poll(
        &format!("the check to refuse {unit}"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let check = guest.run(
                &format!("seamless-reboot --check --kernel /boot/{vmlinuz} --unit {unit}"),
                Duration::from_secs(120),
            )?;
            let text = check.output();
            last_output.clone_from(&text);
            Ok(
                (!check.status.success() && needles.iter().all(|n| text.contains(n)))
                    .then(|| text.trim().to_string()),
            )
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}; it said: {}", last_output.trim()))
}

/// ssh's exit status when the connection broke (here: the guest shut down).
const SSH_CONNECTION_LOST: i32 = 255;

fn seamless_steps(session: &mut Session<'_>, variant: SeamlessVariant) -> Result<()> {
    let kernel_b = session.lab.kernel_b().clone();
    let unit = "lab-service.service";
    let state = session.start_lab_service()?;
    let (_, pid_before) = unit_main_pid(session.guest(), unit)?;
    let identity_before = process_identity(session.guest(), pid_before)?;
    // With the CLI, stock Debian services are preserved beside the lab's
    // (nginx: root master and workers; memcached: a sandboxed unit with
    // its own mount namespace), and beside them one the product cannot
    // preserve (redis: PrivateUsers=), which the configuration leaves to a
    // restart.
    let mut unpreservable_pid = 0;
    let units = if variant.debian_services {
        session.guest().sh(&format!(
            "mkdir -p /etc/seamless-reboot/config.toml.d && \
             printf '[policy]\\n\"{UNPRESERVABLE_UNIT}\" = \"restart\"\\n' \
               > /etc/seamless-reboot/config.toml.d/50-lab.toml && \
             systemctl is-active {UNPRESERVABLE_UNIT}"
        ))?;
        unpreservable_pid = unit_main_pid(session.guest(), UNPRESERVABLE_UNIT)?.1;
        // mosquitto is named without its suffix, as an operator may: the
        // plan resolves it to mosquitto.service, which everything after uses.
        format!(
            "{unit} --unit nginx.service --unit memcached.service --unit {UNPRESERVABLE_UNIT} \
             --unit {} --unit mosquitto --unit haproxy.service",
            crate::services::POSTGRES_UNIT
        )
    } else {
        unit.to_string()
    };
    // The stock services of the matrix with their own clients, set up
    // before the lab's clients start, so that those span the update.
    let openssh = if variant.debian_services {
        Some(crate::services::openssh_row(session, &kernel_b.vmlinuz)?)
    } else {
        None
    };
    let postgres = if variant.debian_services {
        Some(crate::services::Postgres::start(
            session,
            &kernel_b.vmlinuz,
        )?)
    } else {
        None
    };
    let mosquitto = if variant.debian_services {
        Some(crate::services::Mosquitto::start(session)?)
    } else {
        None
    };
    let memcached = if variant.debian_services {
        Some(MemcachedSession::start(session)?)
    } else {
        None
    };
    if variant.linux_peer {
        session.start_client("lines", ClientSpec::Lines { interval_ms: 50 })?;
        session.start_client(
            "bulk",
            ClientSpec::Bulk {
                bytes: 256 << 20,
                rate: Some(1 << 20),
            },
        )?;
        session.start_linux_peer_client("peer-lines", ClientSpec::Lines { interval_ms: 50 })?;
        session.start_linux_peer_client(
            "peer-bulk",
            ClientSpec::Bulk {
                bytes: 256 << 20,
                rate: Some(1 << 20),
            },
        )?;
        session.wait_traffic(state.total + 40, Duration::from_secs(60))?;
    } else {
        session.start_standard_clients(state.total)?;
    }
    let before_update = session.probe()?;

    // Only root or a polkit-authorized caller may start an update: an
    // ordinary user is refused (no polkit agent answers for them). The call
    // may start both the daemon and polkit, which takes longer than busctl's
    // default 25 s under emulation.
    let refused = session.guest().run(
        &format!(
            "runuser -u labuser -- busctl --timeout=150 call {DBUS_DEST} Check ssasasas /boot/{0} '' 0 1 {unit} 1 allow-downgrade; \
             runuser -u labuser -- busctl --timeout=150 call {DBUS_DEST} Start ssasasas /boot/{0} '' 0 1 {unit} 1 allow-downgrade",
            kernel_b.vmlinuz
        ),
        Duration::from_secs(200),
    )?;
    // Which one refused: the bus policy lets everybody call the methods, so
    // the daemon's own check (root or polkit) must have, and logged it.
    let refused_by_daemon = session.guest().sh(
        "journalctl -u seamless-reboot.service --no-pager -o cat | grep -E 'Start by .* refused' | tail -1",
    )?;
    // An administrator (group sudo) must authenticate for Start, every time
    // (auth_admin, nothing kept): without an agent to answer (and from the
    // lab's ssh session, which is not local) it is refused, twice. A lab-only polkit rule logs the details polkit was given, to
    // show that the dialog would name the kernel and units.
    let admin_start = admin_start_asks_for_authentication(session, &kernel_b.vmlinuz, unit)?;
    // The downloads start last, so that they are in full flow at the update.
    let mut nginx = if variant.debian_services {
        Some(NginxDownload::start(session)?)
    } else {
        None
    };
    let haproxy = match &nginx {
        Some(n) => Some(crate::services::Haproxy::start(
            session,
            &n.download.sha256,
        )?),
        None => None,
    };
    let old = session.guest().boot_info()?;
    // The update itself: through the command line (which talks to the
    // daemon over D-Bus), or straight through D-Bus as update tooling would.
    let script = if variant.via_dbus {
        format!(
            "busctl --timeout=150 call {DBUS_DEST} Start ssasasas /boot/{} '' 0 1 {unit} 1 allow-downgrade && \
             busctl wait {DBUS_DEST} Completed 2>/dev/null || \
             for i in $(seq 600); do busctl get-property {DBUS_DEST} Operation; sleep 0.5; done",
            kernel_b.vmlinuz
        )
    } else {
        format!(
            "seamless-reboot --kernel /boot/{} --allow-downgrade --unit {units} --yes",
            kernel_b.vmlinuz
        )
    };
    let update = session.guest().run(&script, Duration::from_secs(300))?;
    let download_spanned_update = match &mut nginx {
        Some(n) => n.download.running(),
        None => true,
    };
    std::fs::write(session.vm.run_dir.join("update.log"), update.output())?;
    // systemd stops the ssh session as soon as it runs the kexec request, so
    // the command's last line may not reach us: having reached the hand-over
    // step is enough here, the next boot shows whether it happened.
    let reached_handover = update.stdout.contains("handed over to systemd")
        || (update.status.code() == Some(SSH_CONNECTION_LOST)
            && update.stdout.contains("handing over to systemd kexec"));
    if !variant.via_dbus && !reached_handover {
        anyhow::bail!(
            "seamless-reboot did not hand over ({}):\n{}{}",
            update.status,
            update.stdout,
            update.stderr
        );
    }
    // The command returns right after systemd accepted the kexec request.
    let handed_over = now_unix();
    let requested = Instant::now();
    let back = session.back_after_kexec(&old.boot_id)?;
    session
        .report
        .timing("handover_to_ssh_s", requested.elapsed().as_secs_f64());
    let (restored_pid, restored_at) = session.wait_unit_active(unit)?;
    session
        .report
        .timing("handover_to_restored_s", restored_at - handed_over);
    // Traffic resumes once the held packets are re-injected: wait until the line client
    // has had replies again (the service's count grows past its value at the
    // update by more than the lines sent before it).
    let resumed = poll(
        "traffic to resume",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || Ok((session.probe()?.total > before_update.total + 100).then_some(())),
    );
    session.stop_clients()?;
    resumed?;

    let status = session.guest().sh("seamless-reboot status")?;
    let unprivileged = unprivileged_user_learns_no_details(session)?;
    std::fs::write(session.vm.run_dir.join("status.txt"), &status)?;
    // The frozen time as the product recorded it at the checkpoint.
    let status_json = session.guest().sh("seamless-reboot status --json")?;
    if let Some(ms) = frozen_ms(&status_json, unit) {
        session.report.timing("frozen_s", ms as f64 / 1000.0);
    }
    let journal = session
        .guest()
        .sh(&format!("journalctl -b -u {unit} --no-pager -o cat"))?;
    // The hold's and the restore helper's own account, with timestamps.
    let hold_log = session.guest().sh(&format!(
        "journalctl -b -u seamless-reboot-hold.service -u {unit} --no-pager -o short-unix"
    ))?;
    std::fs::write(session.vm.run_dir.join("hold.log"), &hold_log)?;
    let identity_after = process_identity(session.guest(), restored_pid)?;
    // Once every restore has ended, the finishing unit reloads systemd: the
    // restore drop-in is gone and the unit is again as its unit file says.
    let guest = session.guest().clone();
    let handed_back = poll(
        "the unit to be handed back to its own configuration",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || {
            let show = guest.sh(&format!("systemctl show -p Type -p DropInPaths {unit}"))?;
            Ok((show.contains("Type=simple") && !show.contains("seamless-reboot")).then_some(show))
        },
    );
    // The services' memory does not stay on disk once they are back (the
    // finishing unit wipes it last), nor the old boot's undo journal.
    let mut images_left = String::new();
    let wiped = poll(
        "the images to be wiped",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || {
            images_left = guest.sh(
                "find /var/lib/seamless-reboot/images \\( -path '*/unit-*/images/*' -type f ! -name '*.log' \\) -o -name undo.json",
            )?;
            Ok(images_left.trim().is_empty().then_some(()))
        },
    );
    let restart = session.guest().sh(&format!(
        "systemctl restart {unit} && systemctl is-active {unit}"
    ));
    let after_restart = session.wait_lab_service(Duration::from_secs(60));
    let (_, pid_after_restart) = unit_main_pid(session.guest(), unit)?;
    let identity_after_restart = process_identity(session.guest(), pid_after_restart)?;

    let nginx_checks = match nginx {
        Some(n) => Some(nginx_after_update(session, n)?),
        None => None,
    };
    let memcached_checks = match memcached {
        Some(m) => Some(m.after_update(session)?),
        None => None,
    };
    let mut outcomes = Vec::new();
    if let Some(h) = haproxy {
        outcomes.push(h.after_update(session)?);
    }
    if let Some(p) = postgres {
        outcomes.push(p.after_update(session)?);
    }
    if let Some(m) = mosquitto {
        outcomes.push(m.after_update(session)?);
    }
    outcomes.extend(openssh);
    let unpreservable = if variant.debian_services {
        let guest = session.guest().clone();
        Some(poll(
            "the unit left to a restart to be started",
            Duration::from_secs(120),
            Duration::from_secs(1),
            || {
                let (state, pid) = unit_main_pid(&guest, UNPRESERVABLE_UNIT)?;
                Ok((state == "active" && pid > 0).then_some(pid))
            },
        ))
    } else {
        None
    };

    // What the matrix says of the services checked here: their packages
    // and sandboxes, read from the guest.
    let described = if variant.debian_services {
        let guest = session.guest();
        let mut described = Vec::new();
        for (unit, package) in [
            (unit, None),
            ("nginx.service", Some("nginx")),
            ("memcached.service", Some("memcached")),
            (UNPRESERVABLE_UNIT, Some("redis-server")),
        ] {
            let package = match package {
                Some(p) => crate::matrix::package_version(guest, p)?,
                None => "the lab's own service".to_string(),
            };
            described.push((package, crate::matrix::sandbox_options(guest, unit)?));
        }
        described
    } else {
        Vec::new()
    };
    let end = session.guest().boot_info()?;
    let refused_text = refused.output();
    let report = &mut session.report;
    report.check(
        "guest runs kernel B",
        back.kernel == kernel_b.release,
        format!("{} -> {}", report.kernel_before, back.kernel),
    );
    report.check(
        "no further reboot during the scenario",
        end.boot_id == back.boot_id,
        format!(
            "boot {} after the kexec, {} at the end ({})",
            back.boot_id, end.boot_id, end.kernel
        ),
    );
    report.check(
        "boot id changed",
        back.boot_id != report.boot_id_before,
        format!("{} -> {}", report.boot_id_before, back.boot_id),
    );
    report.check(
        "D-Bus Check, then Start, refused for a non-root caller, by the daemon's polkit check",
        // busctl prints the error's text ("Access denied"), gdbus its name.
        !refused.status.success()
            && (refused_text.matches("Access denied").count() == 2
                || refused_text.matches("AccessDenied").count() == 2)
            && !refused_by_daemon.trim().is_empty(),
        format!(
            "{}; daemon: {}",
            refused_text.trim(),
            refused_by_daemon.trim()
        ),
    );
    report.check(
        "an admin's Start needs authentication each time (auth_admin): refused twice without an agent (the details polkit was given follow)",
        admin_start.0,
        admin_start.1.clone(),
    );
    report.check(
        "an unprivileged user can read neither the images nor the records, and the daemon tells them outcomes without pids, paths or command lines",
        unprivileged.0,
        unprivileged.1.clone(),
    );
    report.check(
        "unit active with the restored process as main pid",
        restored_pid == pid_before,
        format!("MainPID {pid_before} before, {restored_pid} after"),
    );
    report.check(
        "the restored process has its user, capabilities, seccomp filter and its own mount and hostname namespaces back",
        identity_after == identity_before
            && identity_before.contains("Namespaces:\tmnt uts lab")
            && identity_before.contains("NoNewPrivs:\t1")
            && identity_before.contains("Seccomp:\t2")
            && !identity_before.contains("Uid:\t0"),
        format!("before:\n{identity_before}after:\n{identity_after}"),
    );
    let planned_sandbox = update
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("unit     {unit}:")))
        .unwrap_or("no line for the unit");
    if !variant.via_dbus {
        report.check(
            "the plan said which sandbox the restore builds again",
            planned_sandbox.contains(
                "in its own mount (private /tmp and /var/tmp) and hostname (UTS) namespaces",
            ),
            planned_sandbox.to_string(),
        );
    }
    report.check(
        "after the restore the unit runs by its own unit file again (no restore drop-in)",
        handed_back.is_ok(),
        format!("{handed_back:?}"),
    );
    report.check(
        "the images and the old boot's undo journal are gone once the units are back (only CRIU's logs remain)",
        wiped.is_ok(),
        match &wiped {
            Ok(()) => "no image file left".to_string(),
            Err(e) => format!("{e:#}; left: {}", images_left.trim()),
        },
    );
    report.check(
        "seamless-reboot status says restored",
        status.contains("restored"),
        status.trim().to_string(),
    );
    for client in report.clients.clone() {
        let r = &client.report;
        let mut detail = format!(
            "sent {} B, verified {} B, lost {}, max gap {:.2} s, kernels {:?}",
            r.bytes_sent, r.bytes_verified, r.lost, r.max_gap_s, r.kernels_seen
        );
        if let Some(b) = &r.broken {
            detail.push_str(&format!(", broken: {:?} {}", b.reason, b.detail));
        }
        // Its longest gap is the update's blackout (over a minute under
        // emulation): a client that finished before the update proves
        // nothing.
        report.check(
            &format!(
                "{}: connection survived the update with nothing lost",
                client.name
            ),
            r.broken.is_none() && r.lost == 0 && r.bytes_verified > 0 && r.max_gap_s > 5.0,
            detail,
        );
        if let Some(end) = r.max_gap_end_unix {
            report.timing(&format!("{}_blackout_s", client.name), r.max_gap_s);
            report.timing(
                &format!("{}_resume_after_restore_s", client.name),
                end - restored_at,
            );
        }
    }
    if let Some(lines) = report.clients.iter().find(|c| c.name == "lines").cloned() {
        let r = &lines.report;
        report.check(
            "line replies came from both kernels on one connection",
            r.kernels_seen.len() == 2 && r.kernels_seen.last() == Some(&kernel_b.release),
            format!("{:?}", r.kernels_seen),
        );
        report.check(
            "in-memory state continued",
            r.state_first.is_some_and(|f| f <= before_update.total)
                && r.state_last.is_some_and(|l| l > before_update.total),
            format!(
                "count {:?} at the start, {} at the update, {:?} at the end",
                r.state_first, before_update.total, r.state_last
            ),
        );
    }
    report.check(
        "the restored service logs to the journal under its unit",
        journal.contains("kernel changed"),
        crate::process::tail(&journal, 3).trim().to_string(),
    );
    if let Some(started) = unpreservable {
        let said = update
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("left out {UNPRESERVABLE_UNIT}")))
            .unwrap_or("nothing about it");
        report.check(
            "a stock unit the plan cannot preserve (PrivateUsers=), with policy restart, is left out with its reason and started afresh by the next boot",
            said.contains("(policy restart)")
                && said.contains("PrivateUsers=")
                && started
                    .as_ref()
                    .is_ok_and(|&pid| pid != unpreservable_pid),
            format!(
                "MainPID {unpreservable_pid} -> {started:?}; update said: {said}"
            ),
        );
    }
    if let Some(checks) = memcached_checks {
        for (name, ok, detail) in checks {
            report.check(&name, ok, detail);
        }
    }
    if let Some(checks) = nginx_checks {
        report.check(
            "nginx: the download was in progress when the update handed over",
            download_spanned_update,
            "curl was still running when seamless-reboot returned",
        );
        for (name, ok, detail) in checks {
            report.check(&name, ok, detail);
        }
    }
    report.check(
        "systemctl restart works afterwards",
        restart.is_ok()
            && after_restart.is_ok()
            && pid_after_restart != restored_pid
            && identity_after_restart == identity_before,
        format!("{restart:?}; new MainPID {pid_after_restart}:\n{identity_after_restart}"),
    );
    for outcome in &outcomes {
        for (name, ok, detail) in &outcome.checks {
            report.check(name, *ok, detail.clone());
        }
    }
    if variant.debian_services {
        let mut rows = lab_matrix_rows(report, unit, &described);
        rows.extend(outcomes.into_iter().map(|o| o.row));
        crate::matrix::write_matrix(
            &session.vm.run_dir,
            &format!("{} -> {}", session.report.kernel_before, kernel_b.release),
            &rows,
        )?;
    }
    Ok(())
}

/// The matrix rows of the lab's service, nginx, memcached and redis, from
/// the checks the scenario recorded for them; `described` holds each one's
/// package and sandbox, in that order.
fn lab_matrix_rows(
    report: &ScenarioReport,
    unit: &str,
    described: &[(String, String)],
) -> Vec<crate::matrix::MatrixRow> {
    let passed = |names: &dyn Fn(&str) -> bool| {
        let checks: Vec<_> = report.checks.iter().filter(|c| names(&c.name)).collect();
        !checks.is_empty() && checks.iter().all(|c| c.passed)
    };
    let detail = |name: &str| {
        report
            .checks
            .iter()
            .find(|c| c.name.starts_with(name))
            .map(|c| c.passed)
    };
    let lost: u64 = report.clients.iter().map(|c| c.report.lost).sum();
    let lab_passed = passed(&|n| {
        n.starts_with("unit active with the restored process")
            || n.starts_with("the restored process has its user")
            || n.contains("connection survived the update with nothing lost")
            || n == "in-memory state continued"
            || n == "systemctl restart works afterwards"
    });
    let yes_if = |ok: Option<bool>| if ok == Some(true) { "yes" } else { "NO" }.to_string();
    let rows = [
        (
            format!("lab-service ({unit})"),
            yes_if(detail("unit active with the restored process")),
            "4 clients (lines and an echoed stream, through QEMU's network and from the Linux peer)",
            format!("{lost} bytes"),
            "the lab's strictest sandbox: DynamicUser=, ProtectSystem=strict, empty capabilities, a seccomp filter",
            lab_passed,
        ),
        (
            "nginx (nginx.service)".to_string(),
            yes_if(detail("nginx: active with the same master")),
            "curl from the host, rate-limited to span the update; plus the backend side of haproxy's",
            if detail("nginx: the download completed") == Some(true) {
                "0 bytes (sha256 equal)".to_string()
            } else {
                "download incomplete".to_string()
            },
            "root master, workers as www-data; Type=forking with PIDFile=",
            passed(&|n| n.starts_with("nginx:")),
        ),
        (
            "memcached (memcached.service)".to_string(),
            yes_if(detail("memcached: active with the same process")),
            "a client on the Linux peer incrementing a counter every 100 ms over one connection",
            if detail("memcached: the client's counter continued") == Some(true) {
                "0 increments".to_string()
            } else {
                "see checks".to_string()
            },
            "its private /tmp carried; a read-only /usr in its mount namespace afterwards",
            passed(&|n| n.starts_with("memcached:")),
        ),
        (
            format!("redis ({UNPRESERVABLE_UNIT})"),
            "no: refused by check (PrivateUsers=); policy restart: started afresh by the next boot"
                .to_string(),
            "none (its state is not carried)",
            "its in-memory state, as with a plain reboot".to_string(),
            "CRIU cannot checkpoint systemd's PrivateUsers= layout; the plan says so and the policy decides",
            passed(&|n| n.starts_with("a stock unit the plan cannot preserve")),
        ),
    ];
    rows.into_iter()
        .zip(described)
        .map(
            |((service, preserved, connections, lost, notes, passed), (package, sandbox))| {
                crate::matrix::MatrixRow {
                    service,
                    package: package.clone(),
                    sandbox: sandbox.clone(),
                    preserved,
                    connections: connections.to_string(),
                    lost,
                    notes: notes.to_string(),
                    passed,
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_frozen_time() {
        let status = r#"{"transaction_id":"t1-2","units":[
            {"unit":"a.service","outcome":"restored","frozen_ms":812},
            {"unit":"b.service","outcome":"cold-started","frozen_ms":2242}]}"#;
        assert_eq!(frozen_ms(status, "b.service"), Some(2242));
        assert_eq!(frozen_ms(status, "a.service"), Some(812));
        assert_eq!(frozen_ms(status, "c.service"), None);
        assert_eq!(
            frozen_ms(
                r#"{"units":[{"unit":"a.service","frozen_ms":null}]}"#,
                "a.service"
            ),
            None
        );
        assert_eq!(frozen_ms("no update has run", "a.service"), None);
    }

    #[test]
    fn parses_state_and_pid_in_any_order() {
        assert_eq!(
            parse_active_and_pid("MainPID=551\nActiveState=active\n"),
            ("active".to_string(), 551)
        );
        assert_eq!(
            parse_active_and_pid("ActiveState=failed\nMainPID=0\n"),
            ("failed".to_string(), 0)
        );
    }
}
