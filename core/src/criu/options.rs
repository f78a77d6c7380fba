//! Typed builders for the `criu_opts` of dump, restore and check requests.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::error::CriuError;
use super::rpc::{
    CriuCgMode, CriuNetworkLockMethod, CriuOpts, CriuReq, CriuReqType, InheritFd as RpcInheritFd,
};

/// The `--external` key that lets a dump leave a unix socket's peer outside
/// the dumped tree: `unix[<ino>]`, where `ino` is the inode of the dumped
/// task's own socket (`/proc/PID/fd/N -> socket:[ino]`).
pub fn external_unix_socket_key(inode: u32) -> String {
    format!("unix[{inode}]")
}

/// The `inherit_fd` key that replaces, at restore, the socket with inode
/// `ino` recorded at dump: `socket:[<ino>]`.
pub fn inherit_socket_key(inode: u32) -> String {
    format!("socket:[{inode}]")
}

/// A file CRIU should take from one of its own fds instead of recreating it.
#[derive(Debug, Clone)]
pub struct InheritFd<'a> {
    /// What the fd stands for, e.g. [`inherit_socket_key`]`(ino)`,
    /// `pipe:[ino]`, `tty[rdev:dev]`, `file[mnt_id:ino]` or a path.
    pub key: String,
    /// The replacement; it is passed to the CRIU process under this number.
    pub fd: BorrowedFd<'a>,
}

impl<'a> InheritFd<'a> {
    /// An fd standing in for the unix socket that had inode `inode` at dump.
    pub fn unix_socket(inode: u32, fd: BorrowedFd<'a>) -> Self {
        Self {
            key: inherit_socket_key(inode),
            fd,
        }
    }
}

/// Options of a DUMP request.
///
/// [`DumpOptions::new`] sets what seamless reboot needs: established TCP
/// connections, nftables network locking, file locks, tasks killed after the
/// dump, notifications on, and a debug-level `dump.log` in the images dir.
#[derive(Debug, Clone)]
pub struct DumpOptions<'a> {
    /// Directory the images are written to (open in this process; CRIU
    /// reaches it through `/proc/<our pid>/fd`).
    pub images_dir: BorrowedFd<'a>,
    /// Directory for the log and other work files; the images dir if unset.
    pub work_dir: Option<BorrowedFd<'a>>,
    /// Root of the process tree to dump. Must be positive: an unset pid would
    /// make CRIU dump the caller.
    pub pid: i32,
    /// Keep the tasks running after the dump instead of killing them.
    pub leave_running: bool,
    /// Dump established TCP connections.
    pub tcp_established: bool,
    /// Skip (instead of failing on) half-open in-flight TCP connections.
    pub tcp_skip_in_flight: bool,
    /// How CRIU locks the network while dumping.
    pub network_lock: CriuNetworkLockMethod,
    /// Dump file locks.
    pub file_locks: bool,
    /// The tree is a shell job (has a controlling terminal / session leader
    /// outside). Services are not.
    pub shell_job: bool,
    /// Allow link-remapping of deleted-but-open files.
    pub link_remap: bool,
    /// Inodes of the tree's unix sockets whose peers stay outside the dump
    /// (sent as [`external_unix_socket_key`] entries).
    pub external_unix_sockets: Vec<u32>,
    /// Further raw `--external` keys.
    pub external: Vec<String>,
    /// The tree runs in a mount namespace copied from the host's (a
    /// systemd sandbox): let CRIU treat every mount it finds in its own
    /// namespace as external, slaves and shared ones included
    /// (`auto_ext_mnt`, `ext_masters`, `ext_sharing`).
    pub external_mounts: bool,
    /// Mountpoints (in the tree's mount namespace) left out of the dump.
    pub skip_mounts: Vec<String>,
    /// How cgroups are dumped; CRIU's default when unset.
    pub manage_cgroups_mode: Option<CriuCgMode>,
    /// Seconds CRIU waits for the tasks to freeze; CRIU's default when unset.
    pub freeze_timeout_secs: Option<u32>,
    /// Log file name in the work dir (no `/`); CRIU's `criu.log` when unset.
    pub log_file: Option<String>,
    /// Log verbosity 0-4; CRIU's default (2) when unset.
    pub log_level: Option<i32>,
    /// Ask CRIU for NOTIFY callbacks.
    pub notify_scripts: bool,
}

impl<'a> DumpOptions<'a> {
    /// Dump the tree rooted at `pid` into `images_dir`, with the defaults
    /// described on the type.
    pub fn new(images_dir: BorrowedFd<'a>, pid: i32) -> Self {
        Self {
            images_dir,
            work_dir: None,
            pid,
            leave_running: false,
            tcp_established: true,
            tcp_skip_in_flight: false,
            network_lock: CriuNetworkLockMethod::Nftables,
            file_locks: true,
            shell_job: false,
            link_remap: false,
            external_unix_sockets: Vec::new(),
            external: Vec::new(),
            external_mounts: false,
            skip_mounts: Vec::new(),
            manage_cgroups_mode: None,
            freeze_timeout_secs: None,
            log_file: Some("dump.log".into()),
            log_level: Some(4),
            notify_scripts: true,
        }
    }

    /// The `criu_opts` for these options.
    pub fn to_criu_opts(&self) -> Result<CriuOpts, CriuError> {
        if self.pid <= 0 {
            return Err(CriuError::InvalidOptions(format!(
                "dump pid must be positive, got {}",
                self.pid
            )));
        }
        if let Some(&bad) = self.external_unix_sockets.iter().find(|&&ino| ino == 0) {
            return Err(CriuError::InvalidOptions(format!(
                "invalid unix socket inode {bad}"
            )));
        }
        let mut opts = common_opts(
            self.images_dir,
            self.work_dir,
            self.log_file.as_deref(),
            self.log_level,
            self.notify_scripts,
        )?;
        opts.pid = Some(self.pid);
        opts.leave_running = Some(self.leave_running);
        opts.tcp_established = Some(self.tcp_established);
        opts.tcp_skip_in_flight = self.tcp_skip_in_flight.then_some(true);
        opts.set_network_lock(self.network_lock);
        opts.file_locks = Some(self.file_locks);
        opts.shell_job = Some(self.shell_job);
        opts.link_remap = self.link_remap.then_some(true);
        opts.external = self
            .external_unix_sockets
            .iter()
            .map(|&ino| external_unix_socket_key(ino))
            .chain(self.external.iter().cloned())
            .collect();
        if self.external_mounts {
            opts.auto_ext_mnt = Some(true);
            opts.ext_masters = Some(true);
            opts.ext_sharing = Some(true);
        }
        opts.skip_mnt = self.skip_mounts.clone();
        if let Some(mode) = self.manage_cgroups_mode {
            opts.set_manage_cgroups_mode(mode);
        }
        opts.timeout = self.freeze_timeout_secs;
        Ok(opts)
    }

    /// The DUMP request for these options.
    pub fn to_request(&self) -> Result<CriuReq, CriuError> {
        Ok(request(CriuReqType::Dump, self.to_criu_opts()?))
    }
}

/// Options of a RESTORE request.
///
/// [`RestoreOptions::new`] mirrors [`DumpOptions::new`]: established TCP
/// connections, nftables network lock method (CRIU then deletes the dump's
/// `inet CRIU-<run id>` table at the end), file locks, the root task restored
/// as a child of the caller (`rst_sibling`), notifications on, and a
/// debug-level `restore.log` in the images dir.
#[derive(Debug, Clone)]
pub struct RestoreOptions<'a> {
    /// Directory holding the images (open in this process).
    pub images_dir: BorrowedFd<'a>,
    /// Directory for the log and other work files; the images dir if unset.
    pub work_dir: Option<BorrowedFd<'a>>,
    /// Restore established TCP connections (must match the dump).
    pub tcp_established: bool,
    /// The network lock method, normally the one used at dump.
    pub network_lock: CriuNetworkLockMethod,
    /// Restore file locks.
    pub file_locks: bool,
    /// See [`DumpOptions::shell_job`].
    pub shell_job: bool,
    /// Make the restored root a child of the caller (`CLONE_PARENT`) rather
    /// than of `criu swrk`; the caller must then reap it.
    pub rst_sibling: bool,
    /// Files taken from fds instead of being recreated; the fds are passed
    /// to CRIU by [`super::Criu::restore`].
    pub inherit_fds: Vec<InheritFd<'a>>,
    /// Raw `--external` keys (mounts, devices, ...).
    pub external: Vec<String>,
    /// The tree had a mount namespace of its own: rebuild it on this root
    /// (CRIU's `root`; `/` for a systemd sandbox, which is a copy of the
    /// host's tree), binding the mounts the dump found external from the
    /// same host paths again (`auto_ext_mnt`).
    pub mount_namespace_root: Option<String>,
    /// How cgroups are restored; CRIU's default when unset.
    pub manage_cgroups_mode: Option<CriuCgMode>,
    /// LSM profile to apply, `apparmor:<name>` or `selinux:<context>`.
    pub lsm_profile: Option<String>,
    /// Log file name in the work dir (no `/`); CRIU's `criu.log` when unset.
    pub log_file: Option<String>,
    /// Log verbosity 0-4; CRIU's default (2) when unset.
    pub log_level: Option<i32>,
    /// Ask CRIU for NOTIFY callbacks.
    pub notify_scripts: bool,
}

impl<'a> RestoreOptions<'a> {
    /// Restore from `images_dir` with the defaults described on the type.
    pub fn new(images_dir: BorrowedFd<'a>) -> Self {
        Self {
            images_dir,
            work_dir: None,
            tcp_established: true,
            network_lock: CriuNetworkLockMethod::Nftables,
            file_locks: true,
            shell_job: false,
            rst_sibling: true,
            inherit_fds: Vec::new(),
            external: Vec::new(),
            mount_namespace_root: None,
            manage_cgroups_mode: None,
            lsm_profile: None,
            log_file: Some("restore.log".into()),
            log_level: Some(4),
            notify_scripts: true,
        }
    }

    /// The fds that must be open in the CRIU process for `inherit_fds`.
    pub fn fds_to_pass(&self) -> Vec<BorrowedFd<'a>> {
        self.inherit_fds.iter().map(|i| i.fd).collect()
    }

    /// The `criu_opts` for these options; `inherit_fd` entries name the fds
    /// by their numbers in this process, which is where [`super::Swrk`]
    /// places them in CRIU's.
    pub fn to_criu_opts(&self) -> Result<CriuOpts, CriuError> {
        if let Some(bad) = self.inherit_fds.iter().find(|i| i.key.is_empty()) {
            return Err(CriuError::InvalidOptions(format!(
                "inherit fd {} has an empty key",
                bad.fd.as_raw_fd()
            )));
        }
        let mut opts = common_opts(
            self.images_dir,
            self.work_dir,
            self.log_file.as_deref(),
            self.log_level,
            self.notify_scripts,
        )?;
        opts.tcp_established = Some(self.tcp_established);
        opts.set_network_lock(self.network_lock);
        opts.file_locks = Some(self.file_locks);
        opts.shell_job = Some(self.shell_job);
        opts.rst_sibling = Some(self.rst_sibling);
        opts.inherit_fd = self
            .inherit_fds
            .iter()
            .map(|i| RpcInheritFd {
                key: i.key.clone(),
                fd: i.fd.as_raw_fd(),
            })
            .collect();
        opts.external = self.external.clone();
        if let Some(root) = &self.mount_namespace_root {
            opts.root = Some(root.clone());
            opts.auto_ext_mnt = Some(true);
        }
        if let Some(mode) = self.manage_cgroups_mode {
            opts.set_manage_cgroups_mode(mode);
        }
        opts.lsm_profile = self.lsm_profile.clone();
        Ok(opts)
    }

    /// The RESTORE request for these options.
    pub fn to_request(&self) -> Result<CriuReq, CriuError> {
        Ok(request(CriuReqType::Restore, self.to_criu_opts()?))
    }
}

/// Options of a CHECK request. CRIU 4.1 insists on a directory for its log
/// even here.
#[derive(Debug, Clone)]
pub struct CheckOptions<'a> {
    /// Directory CRIU writes its log to (sent as the images dir).
    pub work_dir: BorrowedFd<'a>,
    /// Log file name (no `/`); CRIU's `criu.log` when unset.
    pub log_file: Option<String>,
    /// Log verbosity 0-4; CRIU's default (2) when unset.
    pub log_level: Option<i32>,
}

impl<'a> CheckOptions<'a> {
    /// Check, logging to `check.log` in `work_dir`.
    pub fn new(work_dir: BorrowedFd<'a>) -> Self {
        Self {
            work_dir,
            log_file: Some("check.log".into()),
            log_level: None,
        }
    }

    /// The CHECK request for these options.
    pub fn to_request(&self) -> Result<CriuReq, CriuError> {
        let opts = common_opts(
            self.work_dir,
            None,
            self.log_file.as_deref(),
            self.log_level,
            false,
        )?;
        Ok(request(CriuReqType::Check, opts))
    }
}

fn request(kind: CriuReqType, opts: CriuOpts) -> CriuReq {
    CriuReq {
        r#type: kind as i32,
        opts: Some(opts),
        ..CriuReq::default()
    }
}

fn common_opts(
    images_dir: BorrowedFd<'_>,
    work_dir: Option<BorrowedFd<'_>>,
    log_file: Option<&str>,
    log_level: Option<i32>,
    notify_scripts: bool,
) -> Result<CriuOpts, CriuError> {
    if let Some(name) = log_file
        && (name.is_empty() || name.contains('/') || name == "." || name == "..")
    {
        return Err(CriuError::InvalidOptions(format!(
            "log file must be a plain file name, got {name:?}"
        )));
    }
    if let Some(level) = log_level
        && !(0..=4).contains(&level)
    {
        return Err(CriuError::InvalidOptions(format!(
            "log level must be 0-4, got {level}"
        )));
    }
    Ok(CriuOpts {
        images_dir_fd: images_dir.as_raw_fd(),
        work_dir_fd: work_dir.map(|fd| fd.as_raw_fd()),
        log_file: log_file.map(str::to_owned),
        log_level,
        notify_scripts: notify_scripts.then_some(true),
        ..CriuOpts::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    fn dir() -> (tempfile::TempDir, File) {
        let d = tempfile::tempdir().expect("tempdir");
        let f = File::open(d.path()).expect("open");
        (d, f)
    }

    #[test]
    fn keys_have_criu_syntax() {
        assert_eq!(external_unix_socket_key(123), "unix[123]");
        assert_eq!(inherit_socket_key(123), "socket:[123]");
    }

    #[test]
    fn dump_defaults_map_to_criu_opts() {
        let (_d, images) = dir();
        let mut o = DumpOptions::new(images.as_fd(), 4242);
        o.external_unix_sockets = vec![777, 778];
        o.external.push("mnt[/data]:data".into());
        o.manage_cgroups_mode = Some(CriuCgMode::Soft);
        o.freeze_timeout_secs = Some(10);
        let opts = o.to_criu_opts().expect("valid");

        assert_eq!(opts.images_dir_fd, images.as_raw_fd());
        assert_eq!(opts.work_dir_fd, None);
        assert_eq!(opts.pid, Some(4242));
        assert_eq!(opts.leave_running, Some(false));
        assert_eq!(opts.tcp_established, Some(true));
        assert_eq!(opts.tcp_skip_in_flight, None);
        assert_eq!(opts.network_lock(), CriuNetworkLockMethod::Nftables);
        assert_eq!(opts.network_lock, Some(2));
        assert_eq!(opts.file_locks, Some(true));
        assert_eq!(opts.shell_job, Some(false));
        assert_eq!(opts.notify_scripts, Some(true));
        assert_eq!(opts.log_file.as_deref(), Some("dump.log"));
        assert_eq!(opts.log_level, Some(4));
        assert_eq!(
            opts.external,
            vec!["unix[777]", "unix[778]", "mnt[/data]:data"]
        );
        assert!(opts.unix_sk_ino.is_empty());
        assert_eq!(opts.ext_unix_sk, None);
        assert_eq!(opts.manage_cgroups_mode, Some(CriuCgMode::Soft as i32));
        assert_eq!(opts.timeout, Some(10));
        assert!(opts.inherit_fd.is_empty());
        assert_eq!(opts.rst_sibling, None);

        let req = o.to_request().expect("valid");
        assert_eq!(req.r#type(), CriuReqType::Dump);
        assert_eq!(req.opts, Some(opts));
        assert_eq!(req.keep_open, None);
    }

    #[test]
    fn dump_variants() {
        let (_d, images) = dir();
        let (_w, work) = dir();
        let mut o = DumpOptions::new(images.as_fd(), 1);
        o.work_dir = Some(work.as_fd());
        o.leave_running = true;
        o.network_lock = CriuNetworkLockMethod::Skip;
        o.tcp_skip_in_flight = true;
        o.link_remap = true;
        o.log_file = None;
        o.log_level = None;
        o.notify_scripts = false;
        let opts = o.to_criu_opts().expect("valid");
        assert_eq!(opts.work_dir_fd, Some(work.as_raw_fd()));
        assert_eq!(opts.leave_running, Some(true));
        assert_eq!(opts.network_lock(), CriuNetworkLockMethod::Skip);
        assert_eq!(opts.tcp_skip_in_flight, Some(true));
        assert_eq!(opts.link_remap, Some(true));
        assert_eq!(opts.log_file, None);
        // Unset: CRIU's proto default applies.
        assert_eq!(opts.log_level, None);
        assert_eq!(opts.log_level(), 2);
        assert_eq!(opts.notify_scripts, None);
        assert_eq!(opts.manage_cgroups_mode, None);
    }

    #[test]
    fn a_sandboxed_tree_is_dumped_with_external_mounts_and_restored_on_root() {
        let (_d, images) = dir();
        let plain = DumpOptions::new(images.as_fd(), 7)
            .to_criu_opts()
            .expect("valid");
        assert_eq!(
            (plain.auto_ext_mnt, plain.ext_masters, plain.ext_sharing),
            (None, None, None)
        );
        assert!(plain.skip_mnt.is_empty());
        let mut o = DumpOptions::new(images.as_fd(), 7);
        o.external_mounts = true;
        o.skip_mounts = vec!["/run/user/0".into()];
        let opts = o.to_criu_opts().expect("valid");
        assert_eq!(opts.auto_ext_mnt, Some(true));
        assert_eq!(opts.ext_masters, Some(true));
        assert_eq!(opts.ext_sharing, Some(true));
        assert_eq!(opts.skip_mnt, vec!["/run/user/0"]);
        // A dump never names a root: that is the restore's.
        assert_eq!(opts.root, None);

        let plain = RestoreOptions::new(images.as_fd())
            .to_criu_opts()
            .expect("valid");
        assert_eq!((plain.root, plain.auto_ext_mnt), (None, None));
        let mut r = RestoreOptions::new(images.as_fd());
        r.mount_namespace_root = Some("/".into());
        r.external = vec!["mnt[private-tmp]:/tmp/x/tmp".into()];
        let opts = r.to_criu_opts().expect("valid");
        assert_eq!(opts.root.as_deref(), Some("/"));
        assert_eq!(opts.auto_ext_mnt, Some(true));
        assert_eq!(opts.external, vec!["mnt[private-tmp]:/tmp/x/tmp"]);
        // mount-v2, not the compatibility mode.
        assert_eq!(opts.mntns_compat_mode, None);
    }

    #[test]
    fn dump_rejects_bad_values() {
        let (_d, images) = dir();
        for pid in [0, -1] {
            let o = DumpOptions::new(images.as_fd(), pid);
            assert!(matches!(
                o.to_criu_opts(),
                Err(CriuError::InvalidOptions(_))
            ));
        }
        let mut o = DumpOptions::new(images.as_fd(), 10);
        o.log_file = Some("../escape.log".into());
        assert!(matches!(
            o.to_criu_opts(),
            Err(CriuError::InvalidOptions(_))
        ));
        o.log_file = Some("ok.log".into());
        o.log_level = Some(5);
        assert!(matches!(
            o.to_criu_opts(),
            Err(CriuError::InvalidOptions(_))
        ));
        o.log_level = Some(0);
        o.external_unix_sockets = vec![0];
        assert!(matches!(
            o.to_criu_opts(),
            Err(CriuError::InvalidOptions(_))
        ));
    }

    #[test]
    fn restore_defaults_map_to_criu_opts() {
        let (_d, images) = dir();
        let (_s, journal) = dir();
        let mut o = RestoreOptions::new(images.as_fd());
        o.inherit_fds
            .push(InheritFd::unix_socket(777, journal.as_fd()));
        o.inherit_fds.push(InheritFd {
            key: "pipe:[99]".into(),
            fd: journal.as_fd(),
        });
        o.lsm_profile = Some("apparmor:unconfined".into());
        let opts = o.to_criu_opts().expect("valid");

        assert_eq!(opts.images_dir_fd, images.as_raw_fd());
        assert_eq!(opts.pid, None);
        assert_eq!(opts.tcp_established, Some(true));
        assert_eq!(opts.network_lock(), CriuNetworkLockMethod::Nftables);
        assert_eq!(opts.file_locks, Some(true));
        assert_eq!(opts.shell_job, Some(false));
        assert_eq!(opts.rst_sibling, Some(true));
        assert_eq!(opts.notify_scripts, Some(true));
        assert_eq!(opts.log_file.as_deref(), Some("restore.log"));
        assert_eq!(opts.lsm_profile.as_deref(), Some("apparmor:unconfined"));
        assert_eq!(
            opts.inherit_fd,
            vec![
                RpcInheritFd {
                    key: "socket:[777]".into(),
                    fd: journal.as_raw_fd()
                },
                RpcInheritFd {
                    key: "pipe:[99]".into(),
                    fd: journal.as_raw_fd()
                },
            ]
        );
        assert_eq!(
            o.fds_to_pass()
                .iter()
                .map(|f| f.as_raw_fd())
                .collect::<Vec<_>>(),
            vec![journal.as_raw_fd(); 2]
        );
        assert_eq!(
            o.to_request().expect("valid").r#type(),
            CriuReqType::Restore
        );
    }

    #[test]
    fn restore_rejects_empty_inherit_key() {
        let (_d, images) = dir();
        let mut o = RestoreOptions::new(images.as_fd());
        o.inherit_fds.push(InheritFd {
            key: String::new(),
            fd: images.as_fd(),
        });
        assert!(matches!(
            o.to_criu_opts(),
            Err(CriuError::InvalidOptions(_))
        ));
    }

    #[test]
    fn check_request_carries_a_log_dir() {
        let (_d, work) = dir();
        let req = CheckOptions::new(work.as_fd()).to_request().expect("valid");
        assert_eq!(req.r#type(), CriuReqType::Check);
        let opts = req.opts.expect("opts");
        assert_eq!(opts.images_dir_fd, work.as_raw_fd());
        assert_eq!(opts.log_file.as_deref(), Some("check.log"));
        assert_eq!(opts.notify_scripts, None);
    }

    #[test]
    fn encoded_request_round_trips() {
        use prost::Message;
        let (_d, images) = dir();
        let req = DumpOptions::new(images.as_fd(), 99)
            .to_request()
            .expect("valid");
        let bytes = req.encode_to_vec();
        assert_eq!(CriuReq::decode(bytes.as_slice()).expect("decode"), req);
    }
}
