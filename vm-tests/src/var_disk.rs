//! A guest whose `/var` is a filesystem of its own, on a second virtio disk,
//! mounted from `/etc/fstab`, as many servers have it. systemd runs its
//! generators before any filesystem of `/etc/fstab` is mounted, so in the
//! next boot seamless-reboot's generator cannot see the snapshot under
//! `/var/lib/seamless-reboot/images`: it must decide from the kernel command
//! line alone, and the snapshot can be read only after local-fs.target.
//!
//! The guest gets the disk for its whole run ([`VmConfig::data_disk_mib`]:
//! an empty ext4 the host makes without root); [`move_var`] adds the fstab
//! line and a oneshot unit that, early in the next boot, before fstab's
//! `var.mount` and before anything has written to `/var`, copies the root's
//! `/var` onto the disk ([`VAR_MOVE_UNIT`]), and reboots once. The base
//! image shared by every scenario is not changed.
//!
//! [`VmConfig::data_disk_mib`]: crate::vm::VmConfig::data_disk_mib

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::guest::Guest;
use crate::layer::Layer;
use crate::scenario::Session;
use crate::vm::BOOT_TIMEOUT;

/// The second disk as the guest names it (the root is `/dev/vda`).
pub const VAR_DEVICE: &str = "/dev/vdb";
/// Size of the second disk: room for the guest's /var (about 50 MiB) and
/// the snapshots the scenario writes there.
pub const VAR_DISK_MIB: u32 = 2048;
/// The line [`move_var`] adds to the guest's `/etc/fstab`.
pub const FSTAB_LINE: &str = "/dev/vdb /var ext4 defaults 0 2";
/// The unit that copies the root's `/var` onto the disk, once.
pub const VAR_MOVE_UNIT: &str = include_str!("../guest/lab-var-move.service");
/// Where that unit is installed.
const VAR_MOVE_UNIT_PATH: &str = "/etc/systemd/system/lab-var-move.service";
/// While this file exists, the next boot copies `/var` (the unit removes it).
const VAR_MOVE_FLAG: &str = "/etc/lab-var-move";

/// Moves the guest's `/var` onto its second disk and reboots into a boot
/// that mounts it from `/etc/fstab`; records the reboot's duration
/// (`var_move_reboot_s`), makes that boot the report's boot before the
/// update, and checks that the copy ran and `/var` is the disk.
pub fn move_var(session: &mut Session<'_>) -> Result<()> {
    let guest = session.guest().clone();
    let old = guest.boot_info()?;
    let mut layer = Layer::new(&session.vm.run_dir.join("layer-var"))?;
    layer.add_bytes(VAR_MOVE_UNIT_PATH, VAR_MOVE_UNIT.as_bytes(), 0o644)?;
    layer.add_bytes(VAR_MOVE_FLAG, b"", 0o644)?;
    layer.install(&guest)?;
    guest.sh(&format!(
        "grep -qxF '{FSTAB_LINE}' /etc/fstab || echo '{FSTAB_LINE}' >> /etc/fstab; \
         systemctl enable --quiet lab-var-move.service && systemctl daemon-reload"
    ))?;
    let requested = Instant::now();
    // The reboot may cut the ssh session: the new boot id is what counts.
    let _ = guest.run("systemctl reboot --no-block", Duration::from_secs(30));
    let back = guest
        .wait_up(BOOT_TIMEOUT, Some(&old.boot_id))
        .with_context(|| {
            format!(
                "after the reboot that moves /var; console tail:\n{}",
                session.vm.console_tail(30)
            )
        })?;
    session
        .report
        .timing("var_move_reboot_s", requested.elapsed().as_secs_f64());
    session.report.kernel_before = back.kernel.clone();
    session.report.boot_id_before = back.boot_id.clone();

    let moved = guest.query(&format!(
        "systemctl show -p ConditionResult -p Result -p ExecMainStatus lab-var-move.service; \
         test -e {VAR_MOVE_FLAG} && echo flag=left || echo flag=removed"
    ))?;
    session.report.check(
        "/var on a second disk: early in the first boot, the root's /var was copied onto it",
        copy_ran(&moved),
        moved.split_whitespace().collect::<Vec<_>>().join(" "),
    );
    check_var(session, "in the first boot")
}

/// Checks that `/var` is the second disk, mounted from `/etc/fstab`, and
/// that journald writes this boot's journal there; `when` names the boot.
pub fn check_var(session: &mut Session<'_>, when: &str) -> Result<()> {
    let state = var_state(session.guest())?;
    session.report.check(
        &format!(
            "/var on a second disk: mounted from /etc/fstab, this boot's journal on it, {when}"
        ),
        state.is_second_disk(),
        state.describe(),
    );
    Ok(())
}

/// What the guest says of its `/var`, in one round trip.
pub fn var_state(guest: &Guest) -> Result<VarState> {
    let out = guest.query(
        "printf 'source=%s\\n' \"$(findmnt -n -o SOURCE --mountpoint /var)\"; \
         printf 'fstype=%s\\n' \"$(findmnt -n -o FSTYPE --mountpoint /var)\"; \
         printf 'from=%s\\n' \"$(systemctl show -P SourcePath var.mount)\"; \
         printf 'journal=%s\\n' \"$(journalctl -b -q -o cat --no-pager -D /var/log/journal 2>/dev/null | wc -l)\"",
    )?;
    Ok(VarState::parse(&out))
}

/// How `/var` is mounted, and whether this boot's journal is on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VarState {
    /// `findmnt`'s SOURCE of the `/var` mount (empty: no mount there).
    pub source: String,
    pub fstype: String,
    /// Where systemd read `var.mount` from (`/etc/fstab`).
    pub from: String,
    /// This boot's entries in the persistent journal under /var/log/journal.
    pub journal_entries: u64,
}

impl VarState {
    /// Parses the `key=value` lines of [`var_state`]'s script.
    pub fn parse(text: &str) -> VarState {
        let mut state = VarState::default();
        for line in text.lines() {
            match line.trim().split_once('=') {
                Some(("source", v)) => state.source = v.to_string(),
                Some(("fstype", v)) => state.fstype = v.to_string(),
                Some(("from", v)) => state.from = v.to_string(),
                Some(("journal", v)) => state.journal_entries = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        state
    }

    /// `/var` is the second disk's ext4, from `/etc/fstab`, with this
    /// boot's journal on it.
    pub fn is_second_disk(&self) -> bool {
        self.source == VAR_DEVICE
            && self.fstype == "ext4"
            && self.from == "/etc/fstab"
            && self.journal_entries > 0
    }

    pub fn describe(&self) -> String {
        format!(
            "findmnt /var: {} ({}); var.mount from {}; {} journal entries of this boot in /var/log/journal",
            if self.source.is_empty() {
                "not a mount point"
            } else {
                &self.source
            },
            self.fstype,
            if self.from.is_empty() {
                "nowhere"
            } else {
                &self.from
            },
            self.journal_entries
        )
    }
}

/// Whether `systemctl show` of the copying unit (and the flag probe) says
/// it ran in this boot and succeeded, and removed its flag.
fn copy_ran(show: &str) -> bool {
    let has = |line: &str| show.lines().any(|l| l.trim() == line);
    has("ConditionResult=yes")
        && has("Result=success")
        && has("ExecMainStatus=0")
        && has("flag=removed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_on_the_second_disk_from_fstab_with_the_journal() {
        let state =
            VarState::parse("source=/dev/vdb\nfstype=ext4\nfrom=/etc/fstab\njournal=1234\n");
        assert!(state.is_second_disk(), "{}", state.describe());
        assert_eq!(state.journal_entries, 1234);
    }

    #[test]
    fn var_on_the_root_or_elsewhere_or_without_journal_is_not() {
        let on_root = VarState::parse("source=\nfstype=\nfrom=\njournal=900\n");
        assert!(!on_root.is_second_disk());
        assert!(
            on_root.describe().contains("not a mount point"),
            "{}",
            on_root.describe()
        );
        let by_hand = VarState::parse("source=/dev/vdb\nfstype=ext4\nfrom=\njournal=9\n");
        assert!(!by_hand.is_second_disk());
        let no_journal =
            VarState::parse("source=/dev/vdb\nfstype=ext4\nfrom=/etc/fstab\njournal=0\n");
        assert!(!no_journal.is_second_disk());
        let other_disk =
            VarState::parse("source=/dev/vdc\nfstype=ext4\nfrom=/etc/fstab\njournal=9\n");
        assert!(!other_disk.is_second_disk());
    }

    #[test]
    fn the_copy_ran_once_and_removed_its_flag() {
        let ran = "ConditionResult=yes\nResult=success\nExecMainStatus=0\nflag=removed\n";
        assert!(copy_ran(ran));
        let skipped = "ConditionResult=no\nResult=success\nExecMainStatus=0\nflag=removed\n";
        assert!(!copy_ran(skipped));
        let failed = "ConditionResult=yes\nResult=exit-code\nExecMainStatus=1\nflag=left\n";
        assert!(!copy_ran(failed));
    }

    #[test]
    fn the_unit_copies_before_fstab_mounts_the_disk_and_only_once() {
        for line in [
            "DefaultDependencies=no",
            "ConditionPathExists=/etc/lab-var-move",
            "Before=systemd-fsck@dev-vdb.service var.mount",
            "RequiredBy=var.mount",
        ] {
            assert!(
                VAR_MOVE_UNIT.lines().any(|l| l == line),
                "lab-var-move.service lacks {line}"
            );
        }
        assert!(VAR_MOVE_UNIT.contains(&format!("rm {VAR_MOVE_FLAG}")));
        assert!(FSTAB_LINE.starts_with(VAR_DEVICE));
    }
}
