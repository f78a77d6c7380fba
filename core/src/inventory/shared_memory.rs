//! Shared memory of a unit that does not survive a kexec by itself.
//!
//! # Why
//!
//! - POSIX shared memory (`shm_open`, PostgreSQL's dynamic shared memory)
//!   is a file on the host's `/dev/shm`, a tmpfs. CRIU saves which file a
//!   process maps or holds, not what is in it, and the next boot's
//!   `/dev/shm` is empty: the restore would fail on the missing file. The
//!   files are found here, saved beside the images while the unit is frozen
//!   and put back before the restore.
//! - System V shared memory of the host's IPC namespace (PostgreSQL's
//!   interlock segment) CRIU refuses to save: it saves segments only with an
//!   IPC namespace it dumps (`criu/cr-dump.c`: "SysVIPC shmem map ... doesn't
//!   live in IPC ns"). The plan refuses such a unit up front and names the
//!   remedy, an IPC namespace of the unit's own (`PrivateIPC=yes`), which
//!   the product preserves with its segments.
//!
//! Both are read from `/proc/<pid>/maps` (mappings) and the fd links (files
//! held open), below the inventory's root.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Inventory, InventoryError, io_err};

/// Where POSIX shared memory lives.
pub const SHM_DIR: &str = "/dev/shm";

/// The archive of the carried `/dev/shm` files in a unit's images directory.
pub const SHM_ARCHIVE: &str = "dev-shm.tar";

/// The shared memory of a unit's processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedMemory {
    /// Files of the host's `/dev/shm` the processes map or hold, by name
    /// relative to it, sorted: carried across the kexec.
    pub shm_files: Vec<String>,
    /// System V segments attached by processes in the host's IPC namespace.
    pub host_sysv: Vec<SysvAttachment>,
    /// `/dev/shm` files a process sees that are not the host's (a private
    /// `/dev`): not carried, so the plan refuses the unit.
    pub private_shm_files: Vec<(i32, String)>,
}

/// A System V shared memory segment a process has attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvAttachment {
    /// The process.
    pub pid: i32,
    /// The segment's id (the mapping's inode in `/proc/<pid>/maps`).
    pub shmid: u64,
}

/// A mapping's backing file as `/proc/<pid>/maps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    /// The inode field (for a System V segment: its id).
    pub inode: u64,
    /// The path field, as shown (may end in ` (deleted)`).
    pub path: String,
}

/// The file-backed mappings of a `/proc/<pid>/maps` text, in order; lines
/// without a path (anonymous memory) are left out. `Err((line, detail))`
/// on a line that does not have the five leading fields.
pub fn parse_maps(text: &str) -> Result<Vec<MappedFile>, (usize, String)> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut rest = line;
        let mut fields = Vec::with_capacity(5);
        for _ in 0..5 {
            rest = rest.trim_start_matches(' ');
            let end = rest.find(' ').unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        let inode = fields[4].parse::<u64>().map_err(|_| {
            (
                index + 1,
                "expected `address perms offset dev inode [path]`".to_string(),
            )
        })?;
        let path = rest.trim_start_matches(' ');
        if !path.is_empty() {
            found.push(MappedFile {
                inode,
                path: path.to_string(),
            });
        }
    }
    Ok(found)
}

/// The name below `/dev/shm` of a path a process maps or holds, if it is a
/// POSIX shared memory file that still has a name.
fn shm_name(path: &str) -> Option<&str> {
    let name = path.strip_prefix(SHM_DIR)?.strip_prefix('/')?;
    (!name.is_empty() && !name.ends_with(" (deleted)")).then_some(name)
}

impl Inventory {
    /// The shared memory of `pids` (processes that exit meanwhile are left
    /// out).
    pub fn shared_memory(&self, pids: &[i32]) -> Result<SharedMemory, InventoryError> {
        let host_ipc = fs::read_link(self.root.join("proc/1/ns/ipc")).ok();
        let mut shm_files = BTreeSet::new();
        let mut private_shm_files = BTreeSet::new();
        let mut host_sysv = Vec::new();
        for &pid in pids {
            let maps_path = self.root.join(format!("proc/{pid}/maps"));
            let maps = match fs::read_to_string(&maps_path) {
                Ok(text) => parse_maps(&text).map_err(|(line, detail)| InventoryError::Parse {
                    path: maps_path.clone(),
                    line,
                    detail,
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&maps_path, "cannot read")(e)),
            };
            let ipc = fs::read_link(self.root.join(format!("proc/{pid}/ns/ipc"))).ok();
            let mut seen_sysv = BTreeSet::new();
            let mut names: BTreeSet<String> = BTreeSet::new();
            for mapped in &maps {
                if mapped.path.starts_with("/SYSV") {
                    if ipc.is_some() && ipc == host_ipc && seen_sysv.insert(mapped.inode) {
                        host_sysv.push(SysvAttachment {
                            pid,
                            shmid: mapped.inode,
                        });
                    }
                } else if let Some(name) = shm_name(&mapped.path) {
                    names.insert(name.to_string());
                }
            }
            for (_, target) in self.fd_links(pid)?.unwrap_or_default() {
                if let Some(name) = shm_name(&target.to_string_lossy()) {
                    names.insert(name.to_string());
                }
            }
            for name in names {
                if self.is_hosts_shm_file(pid, &name) {
                    shm_files.insert(name);
                } else {
                    private_shm_files.insert((pid, name));
                }
            }
        }
        Ok(SharedMemory {
            shm_files: shm_files.into_iter().collect(),
            host_sysv,
            private_shm_files: private_shm_files.into_iter().collect(),
        })
    }

    /// Whether `/dev/shm/<name>` as `pid` sees it is the host's file (the
    /// same inode on the same device): true in the host's mount namespace
    /// and in a sandbox that binds the host's `/dev/shm`.
    fn is_hosts_shm_file(&self, pid: i32, name: &str) -> bool {
        let theirs = self
            .root
            .join(format!("proc/{pid}/root"))
            .join(SHM_DIR.trim_start_matches('/'))
            .join(name);
        let host: PathBuf = self.root.join(SHM_DIR.trim_start_matches('/')).join(name);
        match (fs::metadata(theirs), fs::metadata(host)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const POSTGRES_MAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 fe:00 131090                     /usr/lib/postgresql/17/bin/postgres
7f23b0000000-7f23b8000000 rw-s 00000000 00:01 1025                       /dev/zero (deleted)
7f23bd000000-7f23bd100000 rw-s 00000000 00:1a 7                          /dev/shm/PostgreSQL.3806459730
7f23bde3b000-7f23bde3c000 rw-s 00000000 00:01 0                          /SYSV00006b4b (deleted)
7f23bde3c000-7f23bde3d000 rw-s 00000000 00:1a 9                          /dev/shm/gone (deleted)
7f23bde40000-7f23bde41000 rw-p 00000000 00:00 0 
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn parses_the_backing_files_of_mappings() {
        let maps = parse_maps(POSTGRES_MAPS).unwrap();
        assert_eq!(maps.len(), 6);
        assert_eq!(
            maps[3],
            MappedFile {
                inode: 0,
                path: "/SYSV00006b4b (deleted)".into()
            }
        );
        assert_eq!(maps[2].path, "/dev/shm/PostgreSQL.3806459730");
        assert_eq!(maps[5].path, "[stack]");
        assert!(parse_maps("7f00-7f01 rw-p 0 00:00 x /a\n").is_err());
    }

    #[test]
    fn names_only_living_files_below_dev_shm() {
        assert_eq!(shm_name("/dev/shm/PostgreSQL.1"), Some("PostgreSQL.1"));
        assert_eq!(shm_name("/dev/shm/x (deleted)"), None);
        assert_eq!(shm_name("/dev/shmem/x"), None);
        assert_eq!(shm_name("/dev/shm/"), None);
    }

    /// A process tree below a temporary root: PID 1 and `pid` with the
    /// given IPC namespace and maps.
    fn tree(pid: i32, ipc: &str, maps: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (p, ns) in [(1, "ipc:[4026531839]"), (pid, ipc)] {
            let dir = root.path().join(format!("proc/{p}"));
            fs::create_dir_all(dir.join("ns")).unwrap();
            fs::create_dir_all(dir.join("fd")).unwrap();
            std::os::unix::fs::symlink(ns, dir.join("ns/ipc")).unwrap();
        }
        let dir = root.path().join(format!("proc/{pid}"));
        fs::write(dir.join("maps"), maps).unwrap();
        // The process sees the host's root.
        std::os::unix::fs::symlink(root.path(), dir.join("root")).unwrap();
        fs::create_dir_all(root.path().join("dev/shm")).unwrap();
        fs::write(root.path().join("dev/shm/PostgreSQL.3806459730"), b"dsm").unwrap();
        root
    }

    #[test]
    fn finds_host_sysv_segments_and_the_shm_files_to_carry() {
        let root = tree(492, "ipc:[4026531839]", POSTGRES_MAPS);
        let held = root.path().join("dev/shm/held");
        fs::write(&held, b"x").unwrap();
        std::os::unix::fs::symlink("/dev/shm/held", root.path().join("proc/492/fd/7")).unwrap();
        let found = Inventory::new(root.path())
            .shared_memory(&[492, 493])
            .unwrap();
        assert_eq!(
            found,
            SharedMemory {
                shm_files: vec!["PostgreSQL.3806459730".into(), "held".into()],
                host_sysv: vec![SysvAttachment { pid: 492, shmid: 0 }],
                private_shm_files: vec![],
            }
        );
    }

    #[test]
    fn sysv_memory_of_an_own_ipc_namespace_is_not_the_hosts() {
        let root = tree(492, "ipc:[4026532235]", POSTGRES_MAPS);
        let found = Inventory::new(root.path()).shared_memory(&[492]).unwrap();
        assert!(found.host_sysv.is_empty());
        assert_eq!(found.shm_files, vec!["PostgreSQL.3806459730".to_string()]);
    }

    #[test]
    fn a_shm_file_the_host_does_not_have_is_private() {
        let root = tree(
            7,
            "ipc:[4026531839]",
            "7f00-7f01 rw-s 00000000 00:1a 7 /dev/shm/mine\n",
        );
        let found = Inventory::new(root.path()).shared_memory(&[7]).unwrap();
        assert!(found.shm_files.is_empty());
        assert_eq!(found.private_shm_files, vec![(7, "mine".to_string())]);
    }
}
