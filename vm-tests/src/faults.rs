//! Faults an update cannot simply report and stop at: the image store
//! fills up mid-update, the daemon dies mid-update, and systemd drops the
//! kexec job after the hand-over. Each runs in the failed-checkpoint scenario's guest, after
//! its own fault (one boot serves them all), with a client of the lab
//! service on the line: the units must run again with their state, from
//! the undo journal on disk, and nothing of the update may stay behind.

use std::time::Duration;

use anyhow::Result;

use crate::clients::ClientSpec;
use crate::guest::Guest;
use crate::process::poll;
use crate::scenario::{Session, unit_main_pid};

/// A guest shell fragment that runs in the background until CRIU seizes
/// `pid` (it becomes the process's tracer), then runs `action` at once,
/// with `$t` the tracer's pid and `$p` the seized pid, and writes what
/// `action` prints to `marker`. Ends with `&`: follow it with the update.
pub(crate) fn when_criu_seizes(pid: i32, action: &str, marker: &str) -> String {
    format!(
        "rm -f {marker}; p={pid}; \
         (for i in $(seq 6000); do \
            t=$(awk '/^TracerPid:/ {{print $2}}' /proc/$p/status 2>/dev/null); \
            if [ -n \"$t\" ] && [ \"$t\" != 0 ]; then {{ {action}; }} > {marker}; break; fi; \
            sleep 0.01; \
          done) &"
    )
}

/// What an update must not leave behind once undone: a staged kernel, a
/// drop-in, a CRIU lock table, an undo journal.
fn leftovers(guest: &Guest) -> Result<String> {
    guest.query(
        "echo \"kexec_loaded=$(cat /sys/kernel/kexec_loaded)\"; \
         ls /run/systemd/system/*.d/50-seamless-reboot-* 2>/dev/null; \
         nft list tables | grep CRIU; \
         find /var/lib/seamless-reboot/images -name undo.json; true",
    )
}

fn nothing_left(leftovers: &str) -> bool {
    leftovers.trim() == "kexec_loaded=0"
}

/// Starts a `lines` client named `name` and waits until it flows.
fn start_lines_client(session: &mut Session<'_>, name: &str) -> Result<()> {
    let before = session.probe()?.total;
    session.start_client(name, ClientSpec::Lines { interval_ms: 50 })?;
    session.wait_traffic(before + 20, Duration::from_secs(60))
}

/// Stops the clients and checks `name`'s connection: it survived with
/// nothing lost.
fn check_client(session: &mut Session<'_>, name: &str, what: &str) -> Result<()> {
    let before = session.probe()?.total;
    let resumed = poll(
        "traffic to resume",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || Ok((session.probe()?.total > before + 40).then_some(())),
    );
    session.stop_clients()?;
    let report = &mut session.report;
    let client = report
        .clients
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.report.clone());
    let (ok, detail) = match client {
        Some(r) => (
            resumed.is_ok() && r.broken.is_none() && r.lost == 0 && r.bytes_verified > 0,
            format!(
                "verified {} B, lost {}, max gap {:.2} s, broken {:?}; {}",
                r.bytes_verified,
                r.lost,
                r.max_gap_s,
                r.broken,
                resumed.map_or_else(|e| format!("{e:#}"), |()| "traffic resumed".into())
            ),
        ),
        None => (false, format!("no report from client {name}")),
    };
    report.check(what, ok, detail);
    Ok(())
}

/// The daemon is killed (SIGKILL) while CRIU dumps the second unit, after
/// the first unit's checkpoint: the command says the daemon left and what
/// happens next; systemd starts the daemon again, which replays the undo
/// journal before it serves: the first unit runs again restored in place
/// (same main pid, its connection intact), the second as it was or started
/// again as the replay reports, and nothing of the update stays.
pub fn daemon_killed_mid_update(session: &mut Session<'_>) -> Result<()> {
    let kernel_b = session.lab.kernel_b().clone();
    let guest = session.guest().clone();
    guest.sh("systemctl start lab-blocker.service")?;
    let (_, service_pid) = unit_main_pid(&guest, "lab-service.service")?;
    let (_, blocker_pid) = unit_main_pid(&guest, "lab-blocker.service")?;
    start_lines_client(session, "lines-daemon-killed")?;
    let since = guest.sh("date +%s")?.trim().to_string();
    let update = guest.run(
        &format!(
            "{} \
             seamless-reboot --kernel /boot/{} --allow-downgrade --unit lab-service.service --unit lab-blocker.service --yes; \
             status=$?; wait; exit $status",
            when_criu_seizes(
                blocker_pid,
                "d=$(systemctl show -P MainPID seamless-reboot.service); \
                 kill -9 $d && echo \"daemon $d killed while CRIU $t dumps pid $p\"",
                "/run/lab-killed-daemon",
            ),
            kernel_b.vmlinuz
        ),
        Duration::from_secs(300),
    )?;
    let output = update.output();
    std::fs::write(session.vm.run_dir.join("update-daemon-killed.log"), &output)?;
    let killed = guest.sh("cat /run/lab-killed-daemon 2>/dev/null || true")?;
    // The restarted daemon replays the journal before it takes its name.
    let mut replay = String::new();
    let replayed = poll(
        "the restarted daemon to replay the undo journal",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || {
            replay = guest.query(&format!(
                "journalctl -u seamless-reboot.service --since @{since} -o cat --no-pager \
                 | grep -F 'was undone because its daemon stopped before it finished' || true"
            ))?;
            Ok((!replay.trim().is_empty()).then_some(()))
        },
    );
    let active = poll(
        "the daemon to serve again",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || {
            Ok((guest
                .query("systemctl is-active seamless-reboot.service || true")?
                .trim()
                == "active")
                .then_some(()))
        },
    );
    let (service_state, service_pid_after) = unit_main_pid(&guest, "lab-service.service")?;
    let (blocker_state, blocker_pid_after) = unit_main_pid(&guest, "lab-blocker.service")?;
    let left = leftovers(&guest)?;
    guest.sh("systemctl stop lab-blocker.service")?;

    let report = &mut session.report;
    report.check(
        "daemon killed: the fault happened while CRIU dumped the second unit",
        !killed.trim().is_empty(),
        killed.trim().to_string(),
    );
    report.check(
        "daemon killed: the command failed, saying the daemon left and that it undoes the update when started again",
        !update.status.success()
            && output.contains("the daemon left the bus before the update completed")
            && output.contains("undoes what the update left half done"),
        crate::process::tail(&output, 2).trim().to_string(),
    );
    report.check(
        "daemon killed: systemd started it again and it replayed the undo journal before serving",
        replayed.is_ok() && active.is_ok(),
        format!(
            "{}{}",
            replay.trim(),
            active.err().map(|e| format!("; {e:#}")).unwrap_or_default()
        ),
    );
    let blocker_reported = replay.contains("lab-blocker.service");
    report.check(
        "daemon killed: the first unit restored in place with its old main pid, the second as it was or started again as reported",
        service_state == "active"
            && service_pid_after == service_pid
            && blocker_state == "active"
            && (blocker_pid_after == blocker_pid || blocker_reported),
        format!(
            "lab-service {service_state} {service_pid} -> {service_pid_after}, lab-blocker {blocker_state} {blocker_pid} -> {blocker_pid_after}"
        ),
    );
    report.check(
        "daemon killed: no kernel, drop-in, lock table or undo journal left",
        nothing_left(&left),
        left.trim().to_string(),
    );
    check_client(
        session,
        "lines-daemon-killed",
        "daemon killed: the lab service's connection survived with nothing lost",
    )
}

/// After the hand-over, systemd's kexec job is cancelled (a fault injector
/// in a unit the shutdown leaves alone cancels every job as soon as the
/// kexec job exists, then starts multi-user.target again, as an operator
/// would). The shutdown has begun: the daemon is stopped, and so is the
/// lab's ssh session. Expected: the watcher the update started finds the
/// job gone and replays the journal: the unit runs again restored in place
/// (same pid, connection intact); the start multi-user.target asked for
/// meanwhile was skipped by the unit's guard (it would have thrown the
/// checkpointed state away); nothing of the update stays; no kexec.
pub fn kexec_job_cancelled(session: &mut Session<'_>) -> Result<()> {
    let kernel_b = session.lab.kernel_b().clone();
    let guest = session.guest().clone();
    let before = guest.boot_info()?;
    let (_, service_pid) = unit_main_pid(&guest, "lab-service.service")?;
    start_lines_client(session, "lines-kexec-cancelled")?;
    let since = guest.sh("date +%s")?.trim().to_string();
    guest.sh(
        "rm -f /run/lab-cancelled-kexec; \
         systemd-run --quiet --unit=lab-cancel-kexec.service -p DefaultDependencies=no /bin/sh -c \
         \"until systemctl list-jobs --no-legend --plain | grep -q ' kexec.target '; do sleep 0.02; done; \
           systemctl cancel; sleep 1; systemctl cancel; \
           echo cancelled > /run/lab-cancelled-kexec; systemctl start multi-user.target\"",
    )?;
    // The shutdown ends this ssh session: the command's own end is not
    // waited for.
    let update = guest.run(
        &format!(
            "seamless-reboot --kernel /boot/{} --allow-downgrade --unit lab-service.service --yes",
            kernel_b.vmlinuz
        ),
        Duration::from_secs(300),
    );
    let output = match &update {
        Ok(finished) => finished.output(),
        Err(e) => format!("{e:#}"),
    };
    std::fs::write(
        session.vm.run_dir.join("update-kexec-cancelled.log"),
        &output,
    )?;
    let mut undone = String::new();
    let replayed = poll(
        "the kexec watcher to undo the update",
        Duration::from_secs(300),
        Duration::from_secs(2),
        || {
            undone = guest.query(&format!(
                "journalctl --since @{since} -o cat --no-pager \
                 | grep -F 'but the kexec job ended without a kexec' || true"
            ))?;
            Ok((!undone.trim().is_empty()).then_some(()))
        },
    );
    let cancelled = guest.query("cat /run/lab-cancelled-kexec 2>/dev/null || true")?;
    let skipped = guest.query(&format!(
        "journalctl -u lab-service.service --since @{since} -o cat --no-pager \
         | grep -F 'checkpointed by seamless-reboot' || true"
    ))?;
    let now = guest.boot_info()?;
    let (service_state, service_pid_after) = unit_main_pid(&guest, "lab-service.service")?;
    let left = leftovers(&guest)?;

    let report = &mut session.report;
    report.check(
        "kexec cancelled: the fault happened (every job cancelled once the kexec job existed)",
        cancelled.trim() == "cancelled",
        format!(
            "{}; the command: {}",
            cancelled.trim(),
            crate::process::tail(&output, 2).trim()
        ),
    );
    report.check(
        "kexec cancelled: no kexec (same boot, same kernel)",
        now.boot_id == before.boot_id && now.kernel == before.kernel,
        format!("{} on {}", now.boot_id, now.kernel),
    );
    report.check(
        "kexec cancelled: the update's watcher found the job gone and undid the update",
        replayed.is_ok() && undone.contains("everything was undone"),
        undone.trim().to_string(),
    );
    report.check(
        "kexec cancelled: starting the checkpointed unit meanwhile was skipped by its guard",
        !skipped.trim().is_empty(),
        skipped.trim().to_string(),
    );
    report.check(
        "kexec cancelled: the unit restored in place with its old main pid",
        service_state == "active" && service_pid_after == service_pid,
        format!("lab-service {service_state} {service_pid} -> {service_pid_after}"),
    );
    report.check(
        "kexec cancelled: no kernel, drop-in, lock table or undo journal left",
        nothing_left(&left),
        left.trim().to_string(),
    );
    check_client(
        session,
        "lines-kexec-cancelled",
        "kexec cancelled: the lab service's connection survived with nothing lost",
    )
}

/// The image store fills up mid-update: the store is a small tmpfs here,
/// which passes the plan's free-space check, and another process fills it
/// as soon as the first unit's checkpoint is on it. Expected: the update
/// fails on the second unit (its undo journal entry or its images cannot be
/// written), says so, and is undone in full though nothing more can be
/// written to the store: the first unit restored in place (same pid,
/// connection intact), the second running, nothing left behind.
pub fn image_store_full(session: &mut Session<'_>) -> Result<()> {
    const STORE: &str = "/var/lib/seamless-reboot/images";
    let kernel_b = session.lab.kernel_b().clone();
    let guest = session.guest().clone();
    guest.sh(&format!(
        "mount -t tmpfs -o size=64m,mode=0700 lab-small-store {STORE} && systemctl start lab-blocker.service"
    ))?;
    let (_, service_pid) = unit_main_pid(&guest, "lab-service.service")?;
    let (_, blocker_pid) = unit_main_pid(&guest, "lab-blocker.service")?;
    start_lines_client(session, "lines-store-full")?;
    let update = guest.run(
        &format!(
            "rm -f /run/lab-filled-store; \
             (for i in $(seq 6000); do \
                if ls {STORE}/*/unit-lab-service.service/unit.json >/dev/null 2>&1; then \
                  dd if=/dev/zero of={STORE}/lab-filler bs=1M 2>/dev/null; \
                  df --output=avail -B1 {STORE} | tail -1 > /run/lab-filled-store; \
                  break; \
                fi; \
                sleep 0.01; \
              done) & \
             seamless-reboot --kernel /boot/{} --allow-downgrade --unit lab-service.service --unit lab-blocker.service --yes; \
             status=$?; wait; exit $status",
            kernel_b.vmlinuz
        ),
        Duration::from_secs(300),
    )?;
    let output = update.output();
    std::fs::write(session.vm.run_dir.join("update-store-full.log"), &output)?;
    let filled = guest.sh("cat /run/lab-filled-store 2>/dev/null || true")?;
    let (service_state, service_pid_after) = unit_main_pid(&guest, "lab-service.service")?;
    let (blocker_state, blocker_pid_after) = unit_main_pid(&guest, "lab-blocker.service")?;
    let left = leftovers(&guest)?;
    guest.sh(&format!(
        "systemctl stop lab-blocker.service; rm -f {STORE}/lab-filler; umount {STORE}"
    ))?;

    let report = &mut session.report;
    report.check(
        "store full: the fault happened (the store filled once the first unit was checkpointed)",
        filled.trim() == "0",
        format!("bytes left in the store: {}", filled.trim()),
    );
    // Which write meets the full store depends on timing: the blocker's
    // images (its dump fails, it runs on as it was), or, once its dump has
    // succeeded, its undo journal entry or record (its in-place restore then
    // has nothing to restore from: it is started with its own command, and
    // the error says so).
    let blocker_restarted = output.contains("lab-blocker.service was")
        || output.contains(
            "lab-blocker.service could not be restored in place; it was started with its own command",
        );
    report.check(
        "store full: the update failed, naming the full store, and was undone",
        !update.status.success()
            && output.contains("No space left on device")
            && (output.contains("everything was undone") || blocker_restarted),
        crate::process::tail(&output, 3).trim().to_string(),
    );
    report.check(
        "store full: the first unit restored in place with its old main pid, the second running as it was or started again as reported",
        service_state == "active"
            && service_pid_after == service_pid
            && blocker_state == "active"
            && (blocker_pid_after == blocker_pid || blocker_restarted),
        format!(
            "lab-service {service_state} {service_pid} -> {service_pid_after}, lab-blocker {blocker_state} {blocker_pid} -> {blocker_pid_after}"
        ),
    );
    report.check(
        "store full: no kernel, drop-in, lock table or undo journal left",
        nothing_left(&left),
        left.trim().to_string(),
    );
    check_client(
        session,
        "lines-store-full",
        "store full: the lab service's connection survived with nothing lost",
    )
}

/// The new kernel does not come up: the update kexecs into a kernel with an
/// initrd that unpacks to nothing, so it cannot reach its root filesystem
/// (virtio_blk is a module) and panics; `panic=-1` on the command line
/// reboots at once, and QEMU starts its own kernel again, as a machine's
/// firmware would boot its default entry. Expected: the machine is back on
/// a cold boot without the update's marker, the snapshot is not restored
/// (the unit started afresh, as in a plain boot), and `status` says why.
pub fn new_kernel_fails_to_boot(session: &mut Session<'_>) -> Result<()> {
    let kernel_a = session.lab.kernel_a().clone();
    let guest = session.guest().clone();
    let before = guest.boot_info()?;
    let (_, service_pid) = unit_main_pid(&guest, "lab-service.service")?;
    guest.sh(
        "printf '' | cpio --quiet -o -H newc > /boot/lab-empty-initrd.img && \
         chmod 644 /boot/lab-empty-initrd.img && test -s /boot/lab-empty-initrd.img",
    )?;
    let console_before = std::fs::read_to_string(session.vm.run_dir.join("console.log"))
        .unwrap_or_default()
        .len();
    // The kexec ends this ssh session: the command's own end is not waited for.
    let update = guest.run(
        &format!(
            "seamless-reboot --kernel /boot/{} --allow-downgrade --initrd /boot/lab-empty-initrd.img \
             --unit lab-service.service --yes",
            kernel_a.vmlinuz
        ),
        Duration::from_secs(300),
    );
    let output = match &update {
        Ok(finished) => finished.output(),
        Err(e) => format!("{e:#}"),
    };
    std::fs::write(session.vm.run_dir.join("update-kernel-fails.log"), &output)?;
    let back = session.back_after_kexec(&before.boot_id)?;
    let console =
        std::fs::read_to_string(session.vm.run_dir.join("console.log")).unwrap_or_default();
    let panic_line = console
        .get(console_before..)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("Kernel panic"))
        .unwrap_or("")
        .trim()
        .to_string();
    let (service_pid_after, _) = session.wait_unit_active("lab-service.service")?;
    let cmdline = guest.query("cat /proc/cmdline")?;
    let status = guest.query("seamless-reboot status")?;
    std::fs::write(session.vm.run_dir.join("status-kernel-fails.txt"), &status)?;
    let dropins = guest.query(
        "systemctl show -p DropInPaths --value lab-service.service | tr ' ' '\\n' | grep seamless || true",
    )?;

    let report = &mut session.report;
    report.check(
        "kernel fails to boot: the update handed over to a kernel that panicked",
        output.contains("handing over to systemd kexec") && !panic_line.is_empty(),
        format!(
            "{panic_line}; the command: {}",
            crate::process::tail(&output, 1).trim()
        ),
    );
    report.check(
        "kernel fails to boot: the machine came back by itself, on a cold boot without the update's marker",
        back.boot_id != before.boot_id && !cmdline.contains("seamless_reboot.transaction="),
        format!("{} on {}; cmdline {}", back.boot_id, back.kernel, cmdline.trim()),
    );
    report.check(
        "kernel fails to boot: the snapshot was not restored, the unit started afresh as in a plain boot",
        service_pid_after != service_pid && dropins.trim().is_empty(),
        format!(
            "lab-service active, MainPID {service_pid} -> {service_pid_after}; seamless-reboot drop-ins: {}",
            dropins.trim()
        ),
    );
    report.check(
        "kernel fails to boot: status says the snapshot was not restored, and why",
        status.contains("not restored: this boot")
            && status.contains("was not started by the update's kexec"),
        status.trim().to_string(),
    );
    Ok(())
}
