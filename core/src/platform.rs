//! Every contact the reboot transaction has with the running system, behind
//! one trait.
//!
//! The transaction decides *what* happens and in which order, and how each
//! step is undone; [`Platform`] does it. The real implementation talks to
//! systemd (`systemctl`), nftables (`nft`), CRIU (its RPC) and the kernel
//! (`kexec_file_load`); tests use a recording fake that can be told to fail
//! any step, so every undo path is exercised without root.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::criu::{Criu, DumpOptions, Notification, scripts};
use crate::inventory::sandbox::PrivateDir;
use crate::inventory::shared_memory::{SHM_ARCHIVE, SHM_DIR};
use crate::inventory::{Inventory, UnitInventory};
use crate::kexec::{InitrdImage, KernelImage, KernelLoader};
use crate::manifest::{read_boot_id, read_kernel_release};

/// What systemd says about a unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitStatus {
    /// The unit's canonical name (systemd's `Id`): what an alias or a name
    /// without its suffix resolves to.
    pub unit: String,
    /// `ActiveState`, e.g. `active`, `failed`, `inactive`.
    pub active_state: String,
    /// `SubState`, e.g. `running`.
    pub sub_state: String,
    /// `MainPID`; 0 when there is none.
    pub main_pid: i32,
    /// `ControlGroup`, e.g. `/system.slice/demo.service`.
    pub control_group: String,
    /// The argv of the unit's (first) `ExecStart`.
    pub exec_start: Vec<String>,
    /// `FragmentPath`: the unit file.
    pub fragment_path: String,
    /// `LoadState`, e.g. `loaded`, `not-found`.
    pub load_state: String,
    /// `PIDFile`; empty when the unit has none.
    pub pid_file: String,
}

/// The outcome of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpStats {
    /// How long CRIU had the tree frozen (from its network lock to the end).
    pub frozen: Duration,
}

/// The system as the transaction sees it.
pub trait Platform {
    /// `systemctl show` of the properties in [`UnitStatus`]; `unit` may be
    /// an alias or lack its suffix, the status names the unit by its `Id`.
    fn unit_status(&self, unit: &str) -> Result<UnitStatus>;
    /// The unit's processes and sockets, read from its cgroup and /proc.
    fn inventory(&self, status: &UnitStatus) -> Result<UnitInventory>;
    /// `/proc/sys/kernel/random/boot_id` and `uname -r`.
    fn boot_id_and_release(&self) -> Result<(String, String)>;
    /// Bytes root may still write on the filesystem that holds `dir` (or,
    /// while `dir` does not exist yet, its nearest existing parent).
    fn free_bytes(&self, dir: &Path) -> Result<u64>;
    /// The owner and permission bits of `path`; `None` when it does not
    /// exist.
    fn owner_and_mode(&self, path: &Path) -> Result<Option<(u32, u32)>>;
    /// The type of the filesystem `path` (or, while it does not exist, its
    /// nearest existing parent) is on, as `/proc/self/mountinfo` names it.
    fn filesystem_type(&self, path: &Path) -> Result<String>;
    /// Writes `/run/systemd/system/<unit>.d/<name>` (a runtime drop-in).
    fn write_runtime_dropin(&self, unit: &str, name: &str, contents: &str) -> Result<()>;
    /// Removes a runtime drop-in written by [`Platform::write_runtime_dropin`].
    fn remove_runtime_dropin(&self, unit: &str, name: &str) -> Result<()>;
    fn daemon_reload(&self) -> Result<()>;
    fn start_unit(&self, unit: &str) -> Result<()>;
    /// Names of the `inet` nftables tables.
    fn nft_tables(&self) -> Result<Vec<String>>;
    /// `nft list table inet NAME`, replayable with `nft -f`.
    fn nft_list_table(&self, name: &str) -> Result<String>;
    fn nft_delete_table(&self, name: &str) -> Result<()>;
    /// Checkpoints the process tree rooted at the unit's main pid into
    /// `images_dir`, with its established TCP connections locked by nftables,
    /// its journal streams treated as external and, when it has a mount
    /// namespace of its own, that namespace (its private `/tmp` and
    /// `/var/tmp` saved as `<name>.tar` next to the images). The tree is gone
    /// afterwards. Fails, leaving the tree running, if a process of the
    /// unit's cgroup is not in the saved tree.
    fn criu_dump(
        &self,
        unit: &UnitStatus,
        inventory: &UnitInventory,
        images_dir: &Path,
    ) -> Result<DumpStats>;
    /// Loads the kernel for the next kexec.
    fn load_kernel(
        &self,
        kernel: &KernelImage,
        initrd: Option<&InitrdImage>,
        cmdline: &str,
    ) -> Result<()>;
    fn unload_kernel(&self) -> Result<()>;
    /// Asks systemd to stop everything and kexec into the loaded kernel.
    fn kexec(&self) -> Result<()>;
    /// Whether systemd has a job for `kexec.target`: the machine is going
    /// down for a kexec.
    fn kexec_pending(&self) -> Result<bool>;
    /// Starts `binary watch-kexec TRANSACTION_DIR` in a transient unit the
    /// shutdown does not stop (see `transaction::watch_kexec`).
    fn start_kexec_watch(&self, transaction_dir: &Path, binary: &Path) -> Result<()>;
}

/// The filesystem type of the mount that holds `path` (absolute, resolved)
/// in a `/proc/self/mountinfo` text: the longest mount point that is
/// `path` or a parent of it, the last one mounted when several are.
pub fn filesystem_of(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mount_point) = fields.get(4) else {
            continue;
        };
        // The fields after the optional ones: "- fstype source options".
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let Some(fstype) = fields.get(dash + 1) else {
            continue;
        };
        let mount_point = mount_point.replace("\\040", " ").replace("\\011", "\t");
        if path.starts_with(&mount_point)
            && best
                .as_ref()
                .is_none_or(|(len, _)| mount_point.len() >= *len)
        {
            best = Some((mount_point.len(), (*fstype).to_string()));
        }
    }
    best.map(|(_, fstype)| fstype)
}

/// The real system.
#[derive(Debug)]
pub struct LinuxPlatform {
    criu: Criu,
    runtime_units: PathBuf,
}

impl LinuxPlatform {
    pub fn new(criu_timeout: Duration) -> Self {
        LinuxPlatform {
            criu: Criu::new().with_timeout(Some(criu_timeout)),
            runtime_units: PathBuf::from("/run/systemd/system"),
        }
    }
}

/// Runs `program` and returns what it printed, failing with its stderr if
/// it fails.
pub(crate) fn command(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Saves the contents of a unit's private directory as its archive in
/// `images_dir`.
fn save_private_dir(private: &PrivateDir, images_dir: &Path) -> Result<()> {
    create_archive(
        &images_dir.join(private.archive_name()),
        &private.host_path,
        &["."],
        &["--one-file-system"],
    )
    .with_context(|| format!("cannot save the unit's private {}", private.mountpoint))
}

/// Saves the named files of `/dev/shm` as [`SHM_ARCHIVE`] in `images_dir`
/// (nothing when there are none).
fn save_shm_files(names: &[String], images_dir: &Path) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    create_archive(
        &images_dir.join(SHM_ARCHIVE),
        Path::new(SHM_DIR),
        &names,
        &[],
    )
    .with_context(|| format!("cannot save the unit's files in {SHM_DIR}"))
}

/// Writes `archive` (tar) from `members` of `dir`, keeping numeric owners,
/// modes, extended attributes and holes, with tar's `extra` options.
fn create_archive(archive: &Path, dir: &Path, members: &[&str], extra: &[&str]) -> Result<()> {
    let archive = archive.to_string_lossy();
    let dir = dir.to_string_lossy();
    let mut args = vec![
        "--create",
        "--file",
        &archive,
        "--numeric-owner",
        "--xattrs",
        "--sparse",
        "--directory",
        &dir,
    ];
    args.extend(extra);
    args.push("--");
    args.extend(members);
    command("tar", &args).map(drop)
}

/// Unpacks `archive` (tar) into `dir` with its owners, modes and extended
/// attributes, with tar's `extra` options.
pub(crate) fn extract_archive(archive: &Path, dir: &Path, extra: &[&str]) -> Result<()> {
    let archive = archive.to_string_lossy();
    let dir = dir.to_string_lossy();
    let mut args = vec![
        "--extract",
        "--file",
        &archive,
        "--numeric-owner",
        "--preserve-permissions",
        "--xattrs",
        "--directory",
        &dir,
    ];
    args.extend(extra);
    command("tar", &args).map(drop)
}

/// Fails if a process of `unit`'s cgroup is not in the process tree CRIU
/// saved in `images_dir`, naming it. The cgroup and /proc are read below
/// `root` (`/` in production).
fn check_cgroup_saved(root: &Path, unit: &UnitStatus, images_dir: &Path) -> Result<()> {
    let tree = crate::criu::images::read_process_tree(images_dir)?;
    let members = Inventory::new(root).cgroup_pids(&unit.unit, &unit.control_group)?;
    let unsaved = tree.unsaved(&members);
    if unsaved.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unsaved
        .iter()
        .map(|pid| {
            let comm =
                fs::read_to_string(root.join(format!("proc/{pid}/comm"))).unwrap_or_default();
            format!("{pid} (`{}`)", comm.trim())
        })
        .collect();
    bail!(
        "process {} of {} is not in the tree CRIU saved (it left its main process's tree after \
         the plan) and would be lost",
        list.join(", "),
        unit.unit
    )
}

/// Parses `systemctl show` output (`Key=value` lines).
pub fn parse_show(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The argv of the first command in systemd's `ExecStart` property, which
/// `systemctl show` prints as `{ path=/usr/bin/x ; argv[]=/usr/bin/x -a b ; ... }`.
pub fn parse_exec_start(value: &str) -> Vec<String> {
    let Some(start) = value.find("argv[]=") else {
        return Vec::new();
    };
    let rest = &value[start + "argv[]=".len()..];
    let end = rest.find(" ;").unwrap_or(rest.len());
    rest[..end].split_whitespace().map(str::to_string).collect()
}

impl Platform for LinuxPlatform {
    fn unit_status(&self, unit: &str) -> Result<UnitStatus> {
        let text = command(
            "systemctl",
            &[
                "show",
                "--property=Id,LoadState,ActiveState,SubState,MainPID,ControlGroup,ExecStart,FragmentPath,PIDFile",
                "--",
                unit,
            ],
        )?;
        let props = parse_show(&text);
        let get = |k: &str| props.get(k).cloned().unwrap_or_default();
        let id = get("Id");
        Ok(UnitStatus {
            unit: if id.is_empty() { unit.to_string() } else { id },
            active_state: get("ActiveState"),
            sub_state: get("SubState"),
            main_pid: get("MainPID").parse().unwrap_or(0),
            control_group: get("ControlGroup"),
            exec_start: parse_exec_start(&get("ExecStart")),
            fragment_path: get("FragmentPath"),
            load_state: get("LoadState"),
            pid_file: get("PIDFile"),
        })
    }

    fn inventory(&self, status: &UnitStatus) -> Result<UnitInventory> {
        Ok(Inventory::new(Path::new("/")).unit(
            &status.unit,
            &status.control_group,
            status.main_pid,
        )?)
    }

    fn boot_id_and_release(&self) -> Result<(String, String)> {
        let root = Path::new("/");
        Ok((read_boot_id(root)?, read_kernel_release(root)?))
    }

    fn free_bytes(&self, dir: &Path) -> Result<u64> {
        let existing = dir
            .ancestors()
            .find(|d| d.exists())
            .with_context(|| format!("no part of {} exists", dir.display()))?;
        let stat = nix::sys::statvfs::statvfs(existing)
            .with_context(|| format!("cannot read the free space of {}", existing.display()))?;
        Ok(stat.blocks_free().saturating_mul(stat.fragment_size()))
    }

    fn owner_and_mode(&self, path: &Path) -> Result<Option<(u32, u32)>> {
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(path) {
            Ok(meta) => Ok(Some((meta.uid(), meta.mode() & 0o7777))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn filesystem_type(&self, path: &Path) -> Result<String> {
        let existing = path
            .ancestors()
            .find(|d| d.exists())
            .with_context(|| format!("no part of {} exists", path.display()))?;
        let real = fs::canonicalize(existing)
            .with_context(|| format!("cannot resolve {}", existing.display()))?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        filesystem_of(&mountinfo, &real)
            .with_context(|| format!("no mount in /proc/self/mountinfo holds {}", real.display()))
    }

    fn write_runtime_dropin(&self, unit: &str, name: &str, contents: &str) -> Result<()> {
        let dir = self.runtime_units.join(format!("{unit}.d"));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(name);
        fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))
    }

    fn remove_runtime_dropin(&self, unit: &str, name: &str) -> Result<()> {
        let path = self.runtime_units.join(format!("{unit}.d")).join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    fn daemon_reload(&self) -> Result<()> {
        command("systemctl", &["daemon-reload"]).map(drop)
    }

    fn start_unit(&self, unit: &str) -> Result<()> {
        command("systemctl", &["start", "--", unit]).map(drop)
    }

    fn nft_tables(&self) -> Result<Vec<String>> {
        let text = command("nft", &["list", "tables", "inet"])?;
        Ok(text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("table inet "))
            .map(str::to_string)
            .collect())
    }

    fn nft_list_table(&self, name: &str) -> Result<String> {
        command("nft", &["list", "table", "inet", name])
    }

    fn nft_delete_table(&self, name: &str) -> Result<()> {
        command("nft", &["delete", "table", "inet", name]).map(drop)
    }

    fn criu_dump(
        &self,
        unit: &UnitStatus,
        inventory: &UnitInventory,
        images_dir: &Path,
    ) -> Result<DumpStats> {
        let pid = unit.main_pid;
        fs::create_dir_all(images_dir)
            .with_context(|| format!("cannot create {}", images_dir.display()))?;
        let dir = fs::File::open(images_dir)
            .with_context(|| format!("cannot open {}", images_dir.display()))?;
        let mut options = DumpOptions::new(dir.as_fd(), pid);
        options.external_unix_sockets = inventory
            .stdio_socket_inodes
            .iter()
            .map(|&inode| u32::try_from(inode).context("socket inode out of range"))
            .collect::<Result<_>>()?;
        if let Some(sandbox) = &inventory.mount_sandbox {
            options.external_mounts = true;
            options.skip_mounts = sandbox.skipped_mounts.clone();
            options
                .external
                .extend(sandbox.private_dirs.iter().map(PrivateDir::dump_external));
            options
                .external
                .extend(sandbox.outside_files.iter().map(|f| f.key()));
        }
        // CRIU freezes the tree a little after its pre-dump hook (its dump
        // setup comes in between) and the tree is gone when it answers, so
        // that span bounds the frozen time from above. Without the hook the
        // whole call bounds it, including CRIU's start.
        let mut started = Instant::now();
        let mut notify = |n: Notification<'_>| -> Result<()> {
            if n.script == scripts::PRE_DUMP {
                started = Instant::now();
            } else if n.script == scripts::POST_DUMP {
                // Every image is written and the tree is still frozen: the
                // last moment to abandon the dump (CRIU then resumes the
                // tree). The plan refused processes outside the main
                // process's tree; one that left it since would be lost.
                check_cgroup_saved(Path::new("/"), unit, images_dir)?;
                // systemd deletes a unit's private /tmp once its processes
                // are gone: its contents go with the images.
                if let Some(sandbox) = &inventory.mount_sandbox {
                    for private in &sandbox.private_dirs {
                        save_private_dir(private, images_dir)?;
                    }
                }
                // /dev/shm does not outlive the boot either.
                save_shm_files(&inventory.shared_memory.shm_files, images_dir)?;
            }
            Ok(())
        };
        self.criu.dump(&options, &mut notify).with_context(|| {
            format!(
                "CRIU could not checkpoint pid {pid} (log: {}/dump.log)",
                images_dir.display()
            )
        })?;
        Ok(DumpStats {
            frozen: started.elapsed(),
        })
    }

    fn load_kernel(
        &self,
        kernel: &KernelImage,
        initrd: Option<&InitrdImage>,
        cmdline: &str,
    ) -> Result<()> {
        KernelLoader::linux()
            .load(kernel, initrd, cmdline)
            .map(drop)
            .context("cannot load the new kernel")
    }

    fn unload_kernel(&self) -> Result<()> {
        KernelLoader::linux()
            .unload()
            .context("cannot unload the loaded kernel")
    }

    fn kexec(&self) -> Result<()> {
        command("systemctl", &["kexec", "--no-block"]).map(drop)
    }

    fn kexec_pending(&self) -> Result<bool> {
        let jobs = command(
            "systemctl",
            &["list-jobs", "--no-legend", "--plain", "--", KEXEC_TARGET],
        )?;
        Ok(has_job_for(&jobs, KEXEC_TARGET))
    }

    fn start_kexec_watch(&self, transaction_dir: &Path, binary: &Path) -> Result<()> {
        let id = transaction_dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("a transaction directory is named by its id")?;
        let unit = format!("--unit=seamless-reboot-kexec-watch-{id}.service");
        let dir = transaction_dir
            .to_str()
            .context("the transaction directory's path is UTF-8")?;
        let binary = binary.to_str().context("the binary's path is UTF-8")?;
        // DefaultDependencies=no: no Conflicts=shutdown.target, so the
        // shutdown the kexec starts leaves it running to the end.
        command(
            "systemd-run",
            &[
                "--quiet",
                "--no-block",
                "--collect",
                &unit,
                "--description=seamless-reboot: undo the update if systemd does not kexec",
                "--property=DefaultDependencies=no",
                "--",
                binary,
                "watch-kexec",
                dir,
            ],
        )
        .map(drop)
    }
}

/// The unit systemd's kexec goes through.
const KEXEC_TARGET: &str = "kexec.target";

/// Whether `systemctl list-jobs --no-legend --plain` output (`ID UNIT TYPE
/// STATE` per line) lists a job for `unit`.
fn has_job_for(jobs: &str, unit: &str) -> bool {
    jobs.lines()
        .any(|line| line.split_whitespace().nth(1) == Some(unit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::images::{PSTREE_IMAGE, SavedProcess, encode_process_tree};

    #[test]
    fn a_kexec_job_is_found_in_systemctls_job_list() {
        let jobs = "1234 kexec.target start waiting\n1240 systemd-kexec.service start waiting\n";
        assert!(has_job_for(jobs, "kexec.target"));
        assert!(!has_job_for("", "kexec.target"));
        assert!(!has_job_for("No jobs running.\n", "kexec.target"));
        assert!(!has_job_for(
            "1240 systemd-kexec.service start waiting\n",
            "kexec.target"
        ));
    }

    #[test]
    fn shm_files_go_into_an_archive_and_come_back_with_their_modes() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let shm = tmp.path().join("shm");
        fs::create_dir_all(&shm).expect("dir");
        fs::write(shm.join("PostgreSQL.1"), b"segment").expect("file");
        fs::set_permissions(shm.join("PostgreSQL.1"), fs::Permissions::from_mode(0o600))
            .expect("mode");
        fs::write(shm.join("other"), b"not the unit's").expect("file");
        let archive = tmp.path().join(SHM_ARCHIVE);
        create_archive(&archive, &shm, &["PostgreSQL.1"], &[]).expect("archive");
        let next = tmp.path().join("next");
        fs::create_dir_all(&next).expect("dir");
        extract_archive(&archive, &next, &["--keep-old-files"]).expect("extracted");
        assert_eq!(
            fs::read(next.join("PostgreSQL.1")).expect("back"),
            b"segment"
        );
        let mode = fs::metadata(next.join("PostgreSQL.1"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!next.join("other").exists());
        // A file of the same name in the next boot is not overwritten.
        fs::write(next.join("PostgreSQL.1"), b"this boot's").expect("file");
        assert!(extract_archive(&archive, &next, &["--keep-old-files"]).is_err());
        assert_eq!(
            fs::read(next.join("PostgreSQL.1")).expect("kept"),
            b"this boot's"
        );
    }

    #[test]
    fn free_space_is_read_from_the_nearest_existing_directory() {
        let tmp = tempfile::tempdir().expect("tmp");
        let platform = LinuxPlatform::new(Duration::from_secs(1));
        let here = platform.free_bytes(tmp.path()).expect("free space");
        assert!(here > 0);
        let later = platform
            .free_bytes(&tmp.path().join("images/t1-1"))
            .expect("free space of a directory still to be made");
        // The same filesystem; other writers may change it a little.
        assert!(later.abs_diff(here) < 64 << 20, "{here} vs {later}");
    }

    #[test]
    fn a_cgroup_process_missing_from_the_saved_tree_fails_the_dump_by_name() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        let cgroup = root.join("sys/fs/cgroup/system.slice/demo.service");
        fs::create_dir_all(cgroup.join("worker")).expect("cgroup");
        fs::write(cgroup.join("cgroup.procs"), "100\n").expect("procs");
        fs::write(cgroup.join("worker/cgroup.procs"), "101\n").expect("procs");
        let images = root.join("images");
        fs::create_dir_all(&images).expect("images");
        let saved = |pids: &[i32]| {
            let tree: Vec<SavedProcess> = pids
                .iter()
                .map(|&pid| SavedProcess {
                    pid,
                    ppid: 1,
                    threads: vec![pid],
                })
                .collect();
            fs::write(images.join(PSTREE_IMAGE), encode_process_tree(&tree)).expect("pstree");
        };
        let unit = UnitStatus {
            unit: "demo.service".into(),
            main_pid: 100,
            control_group: "/system.slice/demo.service".into(),
            ..UnitStatus::default()
        };

        saved(&[100, 101]);
        check_cgroup_saved(root, &unit, &images).expect("everything saved");

        saved(&[100]);
        fs::create_dir_all(root.join("proc/101")).expect("proc");
        fs::write(root.join("proc/101/comm"), "sleep\n").expect("comm");
        let err = check_cgroup_saved(root, &unit, &images).expect_err("101 is not saved");
        assert!(
            err.to_string()
                .starts_with("process 101 (`sleep`) of demo.service is not in the tree CRIU saved"),
            "{err}"
        );

        fs::remove_file(images.join(PSTREE_IMAGE)).expect("rm");
        let err = check_cgroup_saved(root, &unit, &images).expect_err("no tree");
        assert!(format!("{err:#}").contains("pstree.img"), "{err:#}");
    }

    #[test]
    fn parses_systemctl_show() {
        let props =
            parse_show("MainPID=543\nActiveState=active\nControlGroup=/system.slice/x.service\n");
        assert_eq!(props["MainPID"], "543");
        assert_eq!(props["ControlGroup"], "/system.slice/x.service");
    }

    #[test]
    fn parses_exec_start_argv() {
        let value = "{ path=/usr/local/lib/seamless-lab/lab-service ; argv[]=/usr/local/lib/seamless-lab/lab-service --listen 0.0.0.0:7777 ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }";
        assert_eq!(
            parse_exec_start(value),
            vec![
                "/usr/local/lib/seamless-lab/lab-service",
                "--listen",
                "0.0.0.0:7777"
            ]
        );
        assert!(parse_exec_start("").is_empty());
    }

    #[test]
    fn the_filesystem_of_a_path_is_its_longest_mount() {
        let mountinfo = "\
21 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 21 254:16 / /var rw,relatime shared:9 - ext4 /dev/vdb rw
31 30 0:40 / /var/lib/seamless\\040store rw shared:10 master:2 - nfs4 srv:/x rw
32 21 0:41 / /variable rw - tmpfs tmpfs rw
";
        let of = |p: &str| filesystem_of(mountinfo, Path::new(p));
        assert_eq!(
            of("/var/lib/seamless store/images").as_deref(),
            Some("nfs4")
        );
        assert_eq!(of("/var/lib/seamless-reboot").as_deref(), Some("ext4"));
        assert_eq!(of("/variable/x").as_deref(), Some("tmpfs"));
        assert_eq!(of("/etc").as_deref(), Some("ext4"));
        assert_eq!(filesystem_of("garbage\n", Path::new("/")), None);
    }
}
