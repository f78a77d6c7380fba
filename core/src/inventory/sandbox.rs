//! What CRIU must be told about a unit that runs in a mount namespace of its
//! own (systemd's `PrivateTmp=`, `ProtectSystem=`, `ProtectHome=`,
//! `PrivateDevices=`, `ProtectKernel*=`, ...).
//!
//! # Why
//!
//! systemd builds a service's mount namespace as a copy of the host's, with
//! every copied mount a slave of its host original. CRIU accepts such
//! mounts as external (bound again from the host at restore) only when the
//! dump says so (`auto_ext_mnt`, `ext_masters`, `ext_sharing`), and two
//! parts of the namespace need more than that:
//!
//! * `PrivateTmp=` binds `/tmp/systemd-private-<boot id>-<unit>-XXXXXX/tmp`
//!   (and the same below `/var/tmp`) over the service's `/tmp`. The name
//!   holds the old boot's id, and systemd deletes the directory once the
//!   unit's processes are gone (the dump kills them), so the restore cannot
//!   bind it from where it was: the dump marks these two mounts as external
//!   under fixed names, their contents are copied next to the images while
//!   the processes are frozen, and the next boot binds the unit's new
//!   private directories in their place, filled with the saved contents.
//! * systemd opens stdin (`/dev/null`) before it builds the namespace, so
//!   that fd lives on a mount outside the namespace, which CRIU cannot look
//!   up. Such files are declared external (`file[<mnt_id>:<inode>]`) and
//!   the restore hands CRIU the same path opened afresh.
//! * Mounts the host made after the unit started reach its namespace by
//!   propagation: a login's `/run/user/<uid>`, another unit's
//!   `/run/credentials/<unit>`. They belong to the old boot's sessions and
//!   units, not to this unit's sandbox, and their host paths will not exist
//!   when the next boot restores it, so the dump leaves them out
//!   (`skip_mnt`). The next boot's own such mounts propagate into the
//!   restored namespace as they would into any unit's. The same goes for
//!   systemd's bind of the unit's own cgroup file `memory.pressure` over
//!   the read-only `/sys/fs/cgroup`: CRIU cannot give a bound file its
//!   host sharing back (`MOVE_MOUNT_SET_GROUP` wants a mount's root), so
//!   the restored unit sees the file read-only, as the rest of its cgroup.
//!
//! Everything is read below the inventory's root (`/` in production).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Inventory, InventoryError, io_err};

/// The mount namespace of a unit's processes, as the dump and the restore
/// need to know it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSandbox {
    /// The private `/tmp` and `/var/tmp` of `PrivateTmp=`.
    pub private_dirs: Vec<PrivateDir>,
    /// Files the unit's processes hold open on mounts that are not in their
    /// namespace.
    pub outside_files: Vec<OutsideFile>,
    /// Mountpoints (in the unit's view) the dump leaves out: the old boot's
    /// sessions' and other units' mounts that propagated into the namespace.
    #[serde(default)]
    pub skipped_mounts: Vec<String>,
}

/// A private directory systemd bound into the unit's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateDir {
    /// Where the unit sees it: `/tmp` or `/var/tmp`.
    pub mountpoint: String,
    /// Where it is on the host, e.g.
    /// `/tmp/systemd-private-<boot id>-redis-server.service-AbCdEf/tmp`.
    pub host_path: PathBuf,
}

impl PrivateDir {
    /// The name the dump gives this mount and the restore maps to a path
    /// (CRIU's `mnt[<mountpoint>]:<name>`).
    pub fn external_name(&self) -> String {
        format!(
            "private{}",
            self.mountpoint.replace('/', "-").trim_end_matches('-')
        )
    }

    /// CRIU's `external` entry at the dump: this mount, by where the unit
    /// sees it, is external under [`PrivateDir::external_name`].
    pub fn dump_external(&self) -> String {
        format!("mnt[{}]:{}", self.mountpoint, self.external_name())
    }

    /// CRIU's `external` entry at the restore: bind `target` where the dump
    /// named [`PrivateDir::external_name`].
    pub fn restore_external(&self, target: &Path) -> String {
        format!("mnt[{}]:{}", self.external_name(), target.display())
    }

    /// The file its contents are saved in, next to CRIU's images.
    pub fn archive_name(&self) -> String {
        format!("{}.tar", self.external_name())
    }
}

/// A file open in the unit on a mount outside its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideFile {
    /// The mount id (`mnt_id:` of `/proc/<pid>/fdinfo/<fd>`).
    pub mnt_id: u32,
    /// The file's inode.
    pub inode: u64,
    /// Its path on the host, e.g. `/dev/null`.
    pub path: PathBuf,
    /// Open for writing too (the `O_ACCMODE` bits of its `flags:`).
    pub writable: bool,
}

impl OutsideFile {
    /// CRIU's key for it, the same at dump (`external`) and at restore
    /// (`inherit_fd`): `file[<mnt_id hex>:<inode hex>]`.
    pub fn key(&self) -> String {
        format!("file[{:x}:{:x}]", self.mnt_id, self.inode)
    }
}

/// One line of `/proc/<pid>/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The mount id.
    pub id: u32,
    /// `major:minor` of the filesystem.
    pub device: String,
    /// The directory of the filesystem that is mounted here.
    pub root: String,
    /// Where it is mounted, in the reader's view.
    pub mountpoint: String,
}

/// Parses `/proc/<pid>/mountinfo` (`proc(5)`): `id parent major:minor root
/// mountpoint options [optional...] - fstype source superoptions`, paths
/// with `\ooo` escapes.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, (usize, String)> {
    let mut mounts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let bad = |what: &str| (index + 1, format!("expected {what}"));
        if fields.len() < 7 || !fields.contains(&"-") {
            return Err(bad(
                "`id parent major:minor root mountpoint options ... - fs`",
            ));
        }
        let id = fields[0].parse().map_err(|_| bad("a numeric mount id"))?;
        if !fields[2].contains(':') {
            return Err(bad("`major:minor`"));
        }
        mounts.push(MountInfo {
            id,
            device: fields[2].to_string(),
            root: unescape(fields[3]),
            mountpoint: unescape(fields[4]),
        });
    }
    Ok(mounts)
}

/// Undoes the kernel's `\ooo` octal escapes (space, tab, newline, `\`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host path of a mount of the unit's namespace: a mount of the same
/// filesystem in the host whose root is a prefix of the unit mount's root,
/// the deepest such root winning.
pub fn host_path_of(mount: &MountInfo, host: &[MountInfo]) -> Option<PathBuf> {
    host.iter()
        .filter(|h| h.device == mount.device && is_path_prefix(&h.root, &mount.root))
        .max_by_key(|h| h.root.len())
        .map(|h| {
            let rest = mount.root[h.root.len()..].trim_start_matches('/');
            let base = Path::new(&h.mountpoint);
            if rest.is_empty() {
                base.to_path_buf()
            } else {
                base.join(rest)
            }
        })
}

fn is_path_prefix(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The private directories among `mounts` (the unit's view): `/tmp` and
/// `/var/tmp` bound from a `systemd-private-*` directory, with their host
/// paths.
pub fn private_dirs(mounts: &[MountInfo], host: &[MountInfo]) -> Vec<PrivateDir> {
    let mut found = Vec::new();
    for mountpoint in ["/tmp", "/var/tmp"] {
        // The last mount on a mountpoint is the one the unit sees.
        let Some(mount) = mounts.iter().rev().find(|m| m.mountpoint == mountpoint) else {
            continue;
        };
        if !mount.root.contains("/systemd-private-") {
            continue;
        }
        if let Some(host_path) = host_path_of(mount, host) {
            found.push(PrivateDir {
                mountpoint: mountpoint.to_string(),
                host_path,
            });
        }
    }
    found
}

/// The mountpoints among `mounts` (the unit's view) the dump leaves out:
/// those that propagated from the host's sessions and other units (below
/// `/run/user/`, and below `/run/credentials/` other than `unit`'s own) and
/// binds below `/sys/fs/cgroup/`. Deepest first, each once.
pub fn propagated_transient_mounts(mounts: &[MountInfo], unit: &str) -> Vec<String> {
    let own_credentials = format!("/run/credentials/{unit}");
    let mut found: Vec<String> = mounts
        .iter()
        .map(|m| m.mountpoint.clone())
        .filter(|p| {
            p.starts_with("/run/user/")
                || p.starts_with("/sys/fs/cgroup/")
                || (p.starts_with("/run/credentials/")
                    && *p != own_credentials
                    && !p.starts_with(&format!("{own_credentials}/")))
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    found
}

impl Inventory {
    /// The mount sandbox of `unit`'s processes `pids` (the main one first),
    /// which run in a mount namespace other than PID 1's.
    pub fn mount_sandbox(&self, unit: &str, pids: &[i32]) -> Result<MountSandbox, InventoryError> {
        let host = self.mountinfo(1)?.unwrap_or_default();
        let mut sandbox = MountSandbox::default();
        let mut seen = BTreeSet::new();
        // A process's mountinfo lists only the mounts below its root: a
        // chrooted worker (haproxy's) sees almost none. The namespace's
        // mounts are read from the first process of each namespace, the
        // main one first, which runs at its root.
        let mut namespaces: Vec<(PathBuf, BTreeSet<u32>)> = Vec::new();
        for &pid in pids {
            let ns_path = self.root.join(format!("proc/{pid}/ns/mnt"));
            let Ok(namespace) = fs::read_link(&ns_path) else {
                continue;
            };
            let ids = match namespaces.iter().find(|(ns, _)| *ns == namespace) {
                Some((_, ids)) => ids.clone(),
                None => {
                    let Some(mounts) = self.mountinfo(pid)? else {
                        continue;
                    };
                    if sandbox.private_dirs.is_empty() {
                        sandbox.private_dirs = private_dirs(&mounts, &host);
                    }
                    if sandbox.skipped_mounts.is_empty() {
                        sandbox.skipped_mounts = propagated_transient_mounts(&mounts, unit);
                    }
                    let ids: BTreeSet<u32> = mounts.iter().map(|m| m.id).collect();
                    namespaces.push((namespace, ids.clone()));
                    ids
                }
            };
            for file in self.files_outside(pid, &ids, &host)? {
                if seen.insert((file.mnt_id, file.inode)) {
                    sandbox.outside_files.push(file);
                }
            }
        }
        Ok(sandbox)
    }

    /// `/proc/<pid>/mountinfo`, or `None` if the process is gone.
    fn mountinfo(&self, pid: i32) -> Result<Option<Vec<MountInfo>>, InventoryError> {
        let path = self.root.join(format!("proc/{pid}/mountinfo"));
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "cannot read")(e)),
        };
        parse_mountinfo(&text)
            .map(Some)
            .map_err(|(line, detail)| InventoryError::Parse { path, line, detail })
    }

    /// The files (fds naming a path) of `pid` on mounts not in `mount_ids`.
    fn files_outside(
        &self,
        pid: i32,
        mount_ids: &BTreeSet<u32>,
        host: &[MountInfo],
    ) -> Result<Vec<OutsideFile>, InventoryError> {
        let mut found = Vec::new();
        for (fd, target) in self.fd_links(pid)?.unwrap_or_default() {
            let target = target.to_string_lossy().into_owned();
            // Sockets, pipes, anonymous inodes and memfds live on the
            // kernel's internal mounts, which CRIU handles by kind.
            if !target.starts_with('/') || target.starts_with("/memfd:") {
                continue;
            }
            let info_path = self.root.join(format!("proc/{pid}/fdinfo/{fd}"));
            let Ok(info) = fs::read_to_string(&info_path) else {
                continue;
            };
            let Some(fdinfo) = parse_fdinfo(&info) else {
                return Err(InventoryError::Parse {
                    path: info_path,
                    line: 1,
                    detail: "expected `flags:`, `mnt_id:` and `ino:` lines".into(),
                });
            };
            if mount_ids.contains(&fdinfo.mnt_id) {
                continue;
            }
            let fd_path = self.root.join(format!("proc/{pid}/fd/{fd}"));
            found.push(OutsideFile {
                mnt_id: fdinfo.mnt_id,
                inode: fdinfo.inode,
                path: self.host_path_of_open_file(&fd_path, &target, fdinfo.mnt_id, host),
                writable: fdinfo.flags & 0o3 != 0,
            });
        }
        found.sort_by_key(|f| (f.mnt_id, f.inode));
        Ok(found)
    }
}

impl Inventory {
    /// The host's path of the file open at `fd_path` (`/proc/<pid>/fd/<n>`)
    /// whose link reads `target`, on the host's mount `mnt_id`. The link is
    /// the path in the process's view; for a chrooted process (haproxy's
    /// worker) a file outside its root reads relative to its mount
    /// (`/null` for `/dev/null`), so the mount's host mountpoint is tried
    /// too, and for a device udev's `/dev/char/<major>:<minor>` (a process
    /// restored once holds its stdin on a mount CRIU made and let go). The
    /// first candidate that is the same file (device and inode, or for a
    /// device node the same device) wins; else the link as it reads.
    fn host_path_of_open_file(
        &self,
        fd_path: &Path,
        target: &str,
        mnt_id: u32,
        host: &[MountInfo],
    ) -> PathBuf {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut candidates = vec![PathBuf::from(target)];
        if let Some(mount) = host.iter().find(|m| m.id == mnt_id) {
            candidates.push(Path::new(&mount.mountpoint).join(target.trim_start_matches('/')));
        }
        let Ok(open) = fs::metadata(fd_path) else {
            return PathBuf::from(target);
        };
        let is_char_device = open.file_type().is_char_device();
        if is_char_device {
            let (major, minor) = (
                nix::sys::stat::major(open.rdev()),
                nix::sys::stat::minor(open.rdev()),
            );
            candidates.push(PathBuf::from(format!("/dev/char/{major}:{minor}")));
        }
        candidates
            .iter()
            .find_map(|c| {
                let on_host = self.root.join(c.strip_prefix("/").unwrap_or(c));
                let meta = fs::metadata(&on_host).ok()?;
                let same = if is_char_device {
                    meta.file_type().is_char_device() && meta.rdev() == open.rdev()
                } else {
                    meta.dev() == open.dev() && meta.ino() == open.ino()
                };
                // udev's links name the device node they point to.
                same.then(|| match fs::canonicalize(&on_host) {
                    Ok(real) if c.starts_with("/dev/char") => real
                        .strip_prefix(&self.root)
                        .map(|p| Path::new("/").join(p))
                        .unwrap_or_else(|_| c.clone()),
                    _ => c.clone(),
                })
            })
            .unwrap_or_else(|| PathBuf::from(target))
    }
}

/// The fields of `/proc/<pid>/fdinfo/<fd>` the sandbox needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdInfo {
    /// `flags:` (octal).
    pub flags: u32,
    /// `mnt_id:`.
    pub mnt_id: u32,
    /// `ino:`.
    pub inode: u64,
}

/// Parses the `flags:`, `mnt_id:` and `ino:` lines of an fdinfo file.
pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    Some(FdInfo {
        flags: u32::from_str_radix(field("flags:")?, 8).ok()?,
        mnt_id: field("mnt_id:")?.parse().ok()?,
        inode: field("ino:")?.parse().ok()?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOST: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:22 / /dev rw,nosuid shared:2 - devtmpfs udev rw
30 22 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
40 22 0:33 / /tmp rw,nosuid,nodev shared:14 - tmpfs tmpfs rw
";

    const UNIT: &str = "\
300 290 254:1 / / ro,relatime shared:120 master:1 - ext4 /dev/vda1 rw
301 300 0:40 / /dev rw,nosuid shared:121 - tmpfs tmpfs rw
302 300 0:33 /systemd-private-0123abcd-redis-server.service-Xy12Ab/tmp /tmp rw shared:122 master:14 - tmpfs tmpfs rw
303 300 254:1 /var/tmp/systemd-private-0123abcd-redis-server.service-Qw34Cd/tmp /var/tmp rw shared:123 master:1 - ext4 /dev/vda1 rw
304 300 0:25 /systemd/inaccessible/dir /home ro shared:124 master:5 - tmpfs tmpfs rw
305 300 254:1 /my\\040dir /srv/my\\040dir rw shared:125 master:1 - ext4 /dev/vda1 rw
";

    #[test]
    fn parses_mountinfo_with_escapes() {
        let mounts = parse_mountinfo(UNIT).unwrap();
        assert_eq!(mounts.len(), 6);
        assert_eq!(mounts[2].id, 302);
        assert_eq!(mounts[2].device, "0:33");
        assert_eq!(mounts[5].root, "/my dir");
        assert_eq!(mounts[5].mountpoint, "/srv/my dir");
    }

    #[test]
    fn rejects_garbled_mountinfo() {
        assert_eq!(parse_mountinfo("22 1 254:1 / /").unwrap_err().0, 1);
        assert_eq!(
            parse_mountinfo("x 1 254:1 / / rw - ext4 a b")
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            parse_mountinfo(&format!("{HOST}22 1 2541 / / rw - ext4 a b\n"))
                .unwrap_err()
                .0,
            5
        );
    }

    #[test]
    fn finds_the_private_tmp_dirs_and_their_host_paths() {
        let host = parse_mountinfo(HOST).unwrap();
        let unit = parse_mountinfo(UNIT).unwrap();
        let dirs = private_dirs(&unit, &host);
        assert_eq!(
            dirs,
            vec![
                PrivateDir {
                    mountpoint: "/tmp".into(),
                    host_path: "/tmp/systemd-private-0123abcd-redis-server.service-Xy12Ab/tmp"
                        .into(),
                },
                PrivateDir {
                    mountpoint: "/var/tmp".into(),
                    host_path: "/var/tmp/systemd-private-0123abcd-redis-server.service-Qw34Cd/tmp"
                        .into(),
                },
            ]
        );
        assert_eq!(dirs[0].external_name(), "private-tmp");
        assert_eq!(dirs[1].external_name(), "private-var-tmp");
        assert_eq!(dirs[1].dump_external(), "mnt[/var/tmp]:private-var-tmp");
        assert_eq!(
            dirs[1].restore_external(Path::new("/var/tmp/x/tmp")),
            "mnt[private-var-tmp]:/var/tmp/x/tmp"
        );
    }

    #[test]
    fn a_tmp_that_is_not_systemd_private_is_no_private_dir() {
        let host = parse_mountinfo(HOST).unwrap();
        let unit = parse_mountinfo("300 290 0:33 / /tmp rw master:14 - tmpfs tmpfs rw\n").unwrap();
        assert_eq!(private_dirs(&unit, &host), vec![]);
    }

    #[test]
    fn host_path_takes_the_deepest_covering_root() {
        let host =
            parse_mountinfo("1 0 8:1 / / rw - ext4 a rw\n2 1 8:1 /srv/data /data rw - ext4 a rw\n")
                .unwrap();
        let mount = MountInfo {
            id: 9,
            device: "8:1".into(),
            root: "/srv/data/x".into(),
            mountpoint: "/x".into(),
        };
        assert_eq!(host_path_of(&mount, &host), Some("/data/x".into()));
        let elsewhere = MountInfo {
            device: "8:2".into(),
            ..mount.clone()
        };
        assert_eq!(host_path_of(&elsewhere, &host), None);
        // `/srv/database` is not below `/srv/data`.
        let sibling = MountInfo {
            root: "/srv/database".into(),
            ..mount
        };
        assert_eq!(host_path_of(&sibling, &host), Some("/srv/database".into()));
    }

    #[test]
    fn leaves_out_the_sessions_and_other_units_mounts() {
        let unit = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 a rw\n\
             2 1 0:25 / /run rw master:5 - tmpfs t rw\n\
             3 2 0:25 /systemd/inaccessible/dir /run/user ro master:5 - tmpfs t rw\n\
             4 2 0:46 / /run/user/0 rw master:9 - tmpfs t rw\n\
             5 4 0:47 / /run/user/0/doc rw master:10 - fuse f rw\n\
             6 2 0:44 / /run/credentials/getty@tty1.service ro master:11 - tmpfs t rw\n\
             7 2 0:45 / /run/credentials/a.service ro master:12 - tmpfs t rw\n\
             8 2 0:25 /a /run/a rw master:5 - tmpfs t rw\n\
             9 1 0:27 / /sys/fs/cgroup ro master:8 - cgroup2 c rw\n\
             10 9 0:27 /system.slice/a.service/memory.pressure \
             /sys/fs/cgroup/system.slice/a.service/memory.pressure rw master:8 - cgroup2 c rw\n",
        )
        .unwrap();
        assert_eq!(
            propagated_transient_mounts(&unit, "a.service"),
            vec![
                "/sys/fs/cgroup/system.slice/a.service/memory.pressure".to_string(),
                "/run/user/0/doc".to_string(),
                "/run/credentials/getty@tty1.service".to_string(),
                "/run/user/0".to_string(),
            ]
        );
    }

    #[test]
    fn parses_fdinfo() {
        let info = "pos:\t0\nflags:\t0100002\nmnt_id:\t25\nino:\t4\n";
        assert_eq!(
            parse_fdinfo(info),
            Some(FdInfo {
                flags: 0o100002,
                mnt_id: 25,
                inode: 4
            })
        );
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t25\n"), None);
        assert_eq!(parse_fdinfo("flags:\t9\nmnt_id:\t25\nino:\t4\n"), None);
    }

    #[test]
    fn outside_file_key_is_hex() {
        let file = OutsideFile {
            mnt_id: 25,
            inode: 4097,
            path: "/dev/null".into(),
            writable: true,
        };
        assert_eq!(file.key(), "file[19:1001]");
    }

    #[test]
    fn finds_files_on_mounts_outside_the_namespace() {
        let root = tempfile::tempdir().unwrap();
        let proc = root.path().join("proc");
        fs::create_dir_all(proc.join("1")).unwrap();
        fs::write(proc.join("1/mountinfo"), HOST).unwrap();
        let pid = proc.join("300");
        fs::create_dir_all(pid.join("fd")).unwrap();
        fs::create_dir_all(pid.join("fdinfo")).unwrap();
        fs::write(pid.join("mountinfo"), UNIT).unwrap();
        let fds: [(&str, &str, &str); 4] = [
            ("0", "/dev/null", "flags:\t0100002\nmnt_id:\t25\nino:\t4\n"),
            ("1", "socket:[777]", "flags:\t02\nmnt_id:\t9\nino:\t777\n"),
            (
                "3",
                "/var/lib/redis/dump.rdb",
                "flags:\t0100000\nmnt_id:\t300\nino:\t55\n",
            ),
            (
                "4",
                "/memfd:x (deleted)",
                "flags:\t02\nmnt_id:\t1\nino:\t9\n",
            ),
        ];
        for (fd, target, info) in fds {
            std::os::unix::fs::symlink(target, pid.join("fd").join(fd)).unwrap();
            fs::write(pid.join("fdinfo").join(fd), info).unwrap();
        }
        // A chrooted worker in the same namespace sees only the mounts
        // below its root; its file on /dev (mount 301) is still inside.
        let worker = proc.join("301");
        fs::create_dir_all(worker.join("fd")).unwrap();
        fs::create_dir_all(worker.join("fdinfo")).unwrap();
        fs::create_dir_all(worker.join("ns")).unwrap();
        fs::create_dir_all(pid.join("ns")).unwrap();
        for dir in [&pid, &worker] {
            std::os::unix::fs::symlink("mnt:[4026532001]", dir.join("ns/mnt")).unwrap();
        }
        fs::write(
            worker.join("mountinfo"),
            "305 300 254:1 /my\\040dir /srv/my\\040dir rw shared:125 master:1 - ext4 /dev/vda1 rw\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/shm/log (deleted)", worker.join("fd/3")).unwrap();
        fs::write(
            worker.join("fdinfo/3"),
            "flags:\t02\nmnt_id:\t301\nino:\t4\n",
        )
        .unwrap();
        let sandbox = Inventory::new(root.path())
            .mount_sandbox("redis-server.service", &[300, 301])
            .unwrap();
        assert_eq!(
            sandbox.outside_files,
            vec![OutsideFile {
                mnt_id: 25,
                inode: 4,
                path: "/dev/null".into(),
                writable: true,
            }]
        );
        assert_eq!(sandbox.private_dirs.len(), 2);
    }

    #[test]
    fn a_device_held_on_a_mount_gone_from_view_is_found_by_its_device_number() {
        let root = tempfile::tempdir().unwrap();
        let fd = root.path().join("proc/300/fd");
        fs::create_dir_all(&fd).unwrap();
        // The open file: the machine's own /dev/null (the fake tree cannot
        // make a device node); its link as a restored process shows it
        // would read `/null`, which the tree does not have.
        std::os::unix::fs::symlink("/dev/null", fd.join("0")).unwrap();
        fs::create_dir_all(root.path().join("dev/char")).unwrap();
        std::os::unix::fs::symlink("/dev/null", root.path().join("dev/char/1:3")).unwrap();
        let inventory = Inventory::new(root.path());
        assert_eq!(
            inventory.host_path_of_open_file(&fd.join("0"), "/null", 173, &[]),
            PathBuf::from("/dev/char/1:3")
        );
        // Not a device: the link as it reads.
        fs::write(root.path().join("plain"), b"x").unwrap();
        std::os::unix::fs::symlink(root.path().join("plain"), fd.join("1")).unwrap();
        assert_eq!(
            inventory.host_path_of_open_file(&fd.join("1"), "/gone", 173, &[]),
            PathBuf::from("/gone")
        );
    }
}
