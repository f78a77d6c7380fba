//! What a running unit consists of, read from the kernel: its processes and
//! its sockets.
//!
//! # Why
//!
//! Before anything is frozen, the plan must know what it is about to
//! checkpoint: which processes CRIU has to dump (a unit is its whole cgroup,
//! not just its main pid), which TCP connections will be carried across the
//! kexec (and so must be dumped with `--tcp-established`), which listeners the
//! unit serves, and which unix sockets connect its stdout/stderr to journald.
//! CRIU cannot dump the journald end of those streams, so they have to be
//! declared external and reconnected on restore. Reading this from the kernel
//! rather than from systemd's view gives what CRIU will actually see.
//!
//! # Where it comes from
//!
//! * Processes: `cgroup.procs` of the unit's cgroup on the unified (v2)
//!   hierarchy, `/sys/fs/cgroup<ControlGroup>`, and of every sub-cgroup below
//!   it (services may delegate and create children). The cgroup path is an
//!   input because systemd's `ControlGroup` property is authoritative;
//!   [`unit_cgroup_path`] only gives the usual default for system services.
//! * Sockets: `readlink /proc/<pid>/fd/*` gives `socket:[<inode>]` for every
//!   open socket. Those inodes are looked up in the socket tables of the
//!   process's network namespace, `/proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}`
//!   (not `/proc/net/…`, which is the reader's own namespace), read once per
//!   namespace (identified by `readlink /proc/<pid>/ns/net`) through the
//!   first pid in it, the main pid first. Sockets in those tables that no
//!   process of the unit holds are not the unit's and are ignored.
//! * The stdio streams: systemd connects a service's stdout/stderr to journald
//!   through a connected unix stream socket. Only journald's end shows the
//!   path `/run/systemd/journal/stdout` in `/proc/net/unix`; the service's end
//!   has none, so the unit's side is recognized as a unix stream socket on
//!   fd 1 or 2.
//!
//! Everything is read below a root directory ([`Inventory::new`], `/` in
//! production) so that tests build a fake tree in a temporary directory.
//! The parsers and the format facts they rely on are in [`procnet`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{TcpConnection, UnitNameError, validate_unit_name};

pub mod procnet;
pub mod sandbox;
pub mod shared_memory;
pub mod unix_peers;

use procnet::{Family, InetSocket, TCP_ESTABLISHED, TCP_LISTEN, UNIX_SOCK_STREAM, UnixSocket};

/// Where the unified cgroup hierarchy is mounted, relative to the root.
const CGROUP_MOUNT: &str = "sys/fs/cgroup";

/// The default cgroup path of a system service, e.g.
/// `/system.slice/demo.service`. systemd's `ControlGroup` property of the unit
/// is authoritative; this is what it normally says for units in
/// `system.slice`.
pub fn unit_cgroup_path(unit: &str) -> Result<String, UnitNameError> {
    validate_unit_name(unit)?;
    Ok(format!("/system.slice/{unit}"))
}

/// Socket counts that are neither TCP listeners, established TCP connections
/// nor stdio streams, by socket inode (a socket shared by several fds or
/// processes counts once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketCounts {
    /// Unix sockets other than the stdio streams.
    pub unix: usize,
    /// UDP sockets (IPv4 and IPv6).
    pub udp: usize,
    /// TCP sockets in states other than ESTABLISHED and LISTEN.
    pub tcp_other_state: usize,
    /// Sockets in none of those tables (netlink, packet, raw, ...).
    pub other: usize,
}

/// The sockets held by a set of processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInventory {
    /// Listening TCP addresses, sorted, without duplicates.
    pub listening: Vec<SocketAddr>,
    /// Established TCP connections, sorted, without duplicates.
    pub established: Vec<TcpConnection>,
    /// Inodes of unix stream sockets on fd 1 or 2 (journald streams), sorted.
    pub stdio_socket_inodes: Vec<u64>,
    /// Everything else, counted.
    pub other_sockets: SocketCounts,
    /// Pids that exited before their fds could be read.
    pub gone_pids: Vec<i32>,
}

/// What a running unit consists of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitInventory {
    /// The unit.
    pub unit: String,
    /// Its cgroup path, as given (e.g. `/system.slice/demo.service`).
    pub cgroup: String,
    /// Every pid of the cgroup and its sub-cgroups, sorted.
    pub pids: Vec<i32>,
    /// Ids of the threads other than each process's main thread (from
    /// `cgroup.threads`), sorted. CRIU restores thread ids too, so the next
    /// boot must keep them free like the pids.
    #[serde(default)]
    pub thread_ids: Vec<i32>,
    /// The main pid.
    pub main_pid: i32,
    /// Processes of the cgroup that are not the main process nor one of its
    /// descendants (an orphan adopted by PID 1, a process an `ExecStartPost`
    /// left behind). CRIU saves only the main process's tree, so these would
    /// be lost; the plan refuses such a unit.
    #[serde(default)]
    pub outside_main_tree: Vec<OutsideProcess>,
    /// Namespaces a process of the unit has that are not PID 1's (the
    /// sandbox options of its unit made them), one entry per kind, naming
    /// the first such process.
    #[serde(default)]
    pub foreign_namespaces: Vec<ForeignNamespace>,
    /// Descendants of the main process that run in another cgroup (an
    /// sshd's login sessions, in their session scopes): CRIU would take
    /// them along and the restore would put them into the unit, so the plan
    /// refuses the unit while they exist.
    #[serde(default)]
    pub descendants_elsewhere: Vec<DescendantElsewhere>,
    /// Open files of kinds CRIU cannot checkpoint (an io_uring instance):
    /// the plan refuses the unit rather than let its dump fail.
    #[serde(default)]
    pub unsupported_files: Vec<UnsupportedFile>,
    /// The unit's mount namespace, when it has one of its own: what the
    /// dump and the restore must be told about it.
    #[serde(default)]
    pub mount_sandbox: Option<sandbox::MountSandbox>,
    /// Connected unix sockets of the unit whose other end a process outside
    /// it holds: CRIU would fail on them halfway.
    #[serde(default)]
    pub outside_unix_peers: Vec<OutsideUnixPeer>,
    /// Its POSIX shared memory files (carried across the kexec) and System
    /// V segments of the host's IPC namespace (which CRIU cannot save).
    #[serde(default)]
    pub shared_memory: shared_memory::SharedMemory,
    /// Resident memory of the unit's processes (`VmRSS`), in bytes: about
    /// what CRIU will write to disk for them.
    #[serde(default)]
    pub resident_bytes: u64,
    /// Listening TCP addresses.
    pub listening: Vec<SocketAddr>,
    /// Established TCP connections.
    pub established: Vec<TcpConnection>,
    /// Unix stream sockets on stdout/stderr, to declare external to CRIU.
    pub stdio_socket_inodes: Vec<u64>,
    /// Other sockets, counted.
    pub other_sockets: SocketCounts,
}

/// The kinds of namespace a process has, as named in `/proc/<pid>/ns/`.
pub const NAMESPACE_KINDS: [&str; 8] =
    ["mnt", "uts", "ipc", "net", "pid", "user", "cgroup", "time"];

/// A namespace of a unit's process that differs from PID 1's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignNamespace {
    /// Its kind, one of [`NAMESPACE_KINDS`].
    pub kind: String,
    /// The first process of the unit (in pid order) that has it.
    pub pid: i32,
}

/// A descendant of a unit's main process in a cgroup outside the unit's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescendantElsewhere {
    /// Its pid.
    pub pid: i32,
    /// Its command name.
    pub comm: String,
    /// Its cgroup (e.g. `/user.slice/user-0.slice/session-4.scope`).
    pub cgroup: String,
}

/// A unix connection of a unit whose other end is held outside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideUnixPeer {
    /// The unit's process holding its end.
    pub pid: i32,
    /// The inode of its end.
    pub inode: u64,
    /// The process holding the other end, `pid (comm)`, if one does.
    pub peer_holder: Option<String>,
}

/// An open file CRIU cannot checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsupportedFile {
    /// The process holding it.
    pub pid: i32,
    /// Its fd number.
    pub fd: u32,
    /// What it is, in an operator's words (e.g. `an io_uring instance`).
    pub kind: String,
}

/// Kinds of file CRIU 4.1 has no dumper for, by the target of their
/// `/proc/<pid>/fd/<n>` link, with an operator's name for each.
const UNSUPPORTED_FILE_LINKS: [(&str, &str); 1] =
    [("anon_inode:[io_uring]", "an io_uring instance")];

/// A process of a unit's cgroup outside its main process's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideProcess {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Its command name (from `/proc/<pid>/stat`).
    pub comm: String,
}

/// Everything that can go wrong taking an inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The cgroup directory does not exist.
    #[error("unit {unit} has no cgroup {}: is it running?", .path.display())]
    NoCgroup {
        /// The unit.
        unit: String,
        /// The cgroup directory looked for.
        path: PathBuf,
    },
    /// The cgroup and its sub-cgroups hold no process.
    #[error("unit {unit} has no processes in its cgroup {cgroup}: is it running?")]
    EmptyCgroup {
        /// The unit.
        unit: String,
        /// The cgroup path.
        cgroup: String,
    },
    /// The cgroup path is not an absolute path below the hierarchy's root.
    #[error("unit {unit}: {cgroup:?} is not a cgroup path like /system.slice/{unit}")]
    BadCgroupPath {
        /// The unit.
        unit: String,
        /// The path as given.
        cgroup: String,
    },
    /// The main pid is not in the unit's cgroup.
    #[error("unit {unit}: main pid {main_pid} is not in its cgroup {cgroup}")]
    MainPidNotInCgroup {
        /// The unit.
        unit: String,
        /// The main pid.
        main_pid: i32,
        /// The cgroup path.
        cgroup: String,
    },
    /// The main pid exited while its sockets were read.
    #[error("unit {unit}: main pid {main_pid} exited during the inventory")]
    MainPidGone {
        /// The unit.
        unit: String,
        /// The main pid.
        main_pid: i32,
    },
    /// A pid is not positive.
    #[error("pid {0} is not a valid process id")]
    BadPid(i32),
    /// A kernel file has an unexpected line.
    #[error("{}:{line}: {detail}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The kernel's socket diagnostics (NETLINK_SOCK_DIAG) could not list
    /// the unix sockets and their peers.
    #[error("cannot list the unix sockets and their peers through NETLINK_SOCK_DIAG: {0}")]
    SockDiag(String),
    /// Reading failed.
    #[error("{}: {context}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path, context: &'static str) -> impl FnOnce(io::Error) -> InventoryError {
    let path = path.to_owned();
    move |source| InventoryError::Io {
        path,
        context,
        source,
    }
}

/// Reads processes and sockets below a root directory.
#[derive(Debug, Clone)]
pub struct Inventory {
    root: PathBuf,
    /// The unix sockets and their peers, when given (tests); else asked of
    /// the kernel when the root is `/`, and none below another root.
    unix_sockets: Option<Vec<unix_peers::UnixSocket>>,
}

/// The socket tables of one network namespace, by inode.
#[derive(Debug, Default)]
struct NetTables {
    tcp: HashMap<u64, InetSocket>,
    udp: BTreeSet<u64>,
    unix: HashMap<u64, UnixSocket>,
}

impl Inventory {
    /// An inventory reading below `root` (`/` in production).
    pub fn new(root: &Path) -> Inventory {
        Inventory {
            root: root.to_owned(),
            unix_sockets: None,
        }
    }

    /// The same inventory with the unix sockets the kernel would list.
    pub fn with_unix_sockets(mut self, sockets: Vec<unix_peers::UnixSocket>) -> Inventory {
        self.unix_sockets = Some(sockets);
        self
    }

    /// The root everything is read below.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The full inventory of `unit`, whose cgroup path (systemd's
    /// `ControlGroup`, e.g. `/system.slice/demo.service`) is `cgroup` and whose
    /// main pid (systemd's `MainPID`) is `main_pid`.
    pub fn unit(
        &self,
        unit: &str,
        cgroup: &str,
        main_pid: i32,
    ) -> Result<UnitInventory, InventoryError> {
        let mut pids = self.cgroup_pids(unit, cgroup)?;
        if !pids.contains(&main_pid) {
            return Err(InventoryError::MainPidNotInCgroup {
                unit: unit.to_owned(),
                main_pid,
                cgroup: cgroup.to_owned(),
            });
        }
        // Main pid first, so its network namespace's tables are the ones read.
        let mut ordered = vec![main_pid];
        ordered.extend(pids.iter().copied().filter(|&pid| pid != main_pid));
        let sockets = self.sockets_of_pids(&ordered)?;
        if sockets.gone_pids.contains(&main_pid) {
            return Err(InventoryError::MainPidGone {
                unit: unit.to_owned(),
                main_pid,
            });
        }
        pids.retain(|pid| !sockets.gone_pids.contains(pid));
        let thread_ids = self.cgroup_thread_ids(unit, cgroup, &pids)?;
        let outside_main_tree = self.outside_main_tree(main_pid, &pids)?;
        let foreign_namespaces = self.foreign_namespaces(&pids)?;
        let unsupported_files = self.unsupported_files(&pids)?;
        let descendants_elsewhere = self.descendants_elsewhere(main_pid, &pids)?;
        let mount_sandbox = if foreign_namespaces.iter().any(|ns| ns.kind == "mnt") {
            ordered.retain(|pid| pids.contains(pid));
            Some(self.mount_sandbox(unit, &ordered)?)
        } else {
            None
        };
        let shared_memory = self.shared_memory(&pids)?;
        // The kernel's socket diagnostics answer for the reader's network
        // namespace; a unit in one of its own is refused for that.
        let outside_unix_peers = if foreign_namespaces.iter().any(|ns| ns.kind == "net") {
            Vec::new()
        } else {
            self.outside_unix_peers(&pids, &sockets.stdio_socket_inodes)?
        };
        let resident_bytes = self.resident_bytes(&pids)?;
        Ok(UnitInventory {
            unit: unit.to_owned(),
            cgroup: cgroup.to_owned(),
            pids,
            thread_ids,
            main_pid,
            outside_main_tree,
            foreign_namespaces,
            descendants_elsewhere,
            unsupported_files,
            mount_sandbox,
            outside_unix_peers,
            shared_memory,
            resident_bytes,
            listening: sockets.listening,
            established: sockets.established,
            stdio_socket_inodes: sockets.stdio_socket_inodes,
            other_sockets: sockets.other_sockets,
        })
    }

    /// The summed `VmRSS` of `pids` (`/proc/<pid>/status`), in bytes.
    /// Processes that exit meanwhile, and kernel threads (no `VmRSS`), count
    /// nothing.
    pub fn resident_bytes(&self, pids: &[i32]) -> Result<u64, InventoryError> {
        let mut total = 0u64;
        for &pid in pids {
            let path = self.root.join(format!("proc/{pid}/status"));
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path, "cannot read")(e)),
            };
            let Some((index, line)) = text
                .lines()
                .enumerate()
                .find(|(_, l)| l.starts_with("VmRSS:"))
            else {
                continue;
            };
            let kib = line
                .trim_start_matches("VmRSS:")
                .trim()
                .strip_suffix("kB")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .ok_or_else(|| InventoryError::Parse {
                    path: path.clone(),
                    line: index + 1,
                    detail: "expected `VmRSS: <n> kB`".into(),
                })?;
            total = total.saturating_add(kib.saturating_mul(1024));
        }
        Ok(total)
    }

    /// For each kind of namespace, the first of `pids` whose namespace of
    /// that kind is not PID 1's (`readlink /proc/<pid>/ns/<kind>` differs).
    /// Kinds this kernel does not have (no link at PID 1) and processes that
    /// exit meanwhile are left out.
    pub fn foreign_namespaces(
        &self,
        pids: &[i32],
    ) -> Result<Vec<ForeignNamespace>, InventoryError> {
        let mut found = Vec::new();
        for kind in NAMESPACE_KINDS {
            let init = self.root.join(format!("proc/1/ns/{kind}"));
            let Ok(init) = fs::read_link(&init) else {
                continue;
            };
            for &pid in pids {
                let path = self.root.join(format!("proc/{pid}/ns/{kind}"));
                match fs::read_link(&path) {
                    Ok(ns) if ns != init => {
                        found.push(ForeignNamespace {
                            kind: kind.to_owned(),
                            pid,
                        });
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path, "cannot read")(e)),
                }
            }
        }
        Ok(found)
    }

    /// The open files among `pids`' that CRIU cannot checkpoint, in pid and
    /// fd order. Processes that exit meanwhile are left out.
    pub fn unsupported_files(&self, pids: &[i32]) -> Result<Vec<UnsupportedFile>, InventoryError> {
        let mut found = Vec::new();
        for &pid in pids {
            for (fd, target) in self.fd_links(pid)?.unwrap_or_default() {
                let target = target.to_string_lossy();
                if let Some((_, kind)) = UNSUPPORTED_FILE_LINKS.iter().find(|(l, _)| *l == target) {
                    found.push(UnsupportedFile {
                        pid,
                        fd,
                        kind: (*kind).to_string(),
                    });
                }
            }
        }
        Ok(found)
    }

    /// The connected unix sockets of `pids` (streams, and datagram sockets
    /// connected with connect(2), as syslog(3) keeps one to `/dev/log`)
    /// whose other end no process of `pids` holds, leaving out the journal
    /// streams (`exempt`, declared external to CRIU). CRIU 4.1 fails on
    /// either kind ("External socket is used"). Processes that exit
    /// meanwhile are left out.
    pub fn outside_unix_peers(
        &self,
        pids: &[i32],
        exempt: &[u64],
    ) -> Result<Vec<OutsideUnixPeer>, InventoryError> {
        let mut held: Vec<(i32, u64)> = Vec::new();
        for &pid in pids {
            for (_, target) in self.fd_links(pid)?.unwrap_or_default() {
                if let Some(inode) = socket_inode(&target.to_string_lossy()) {
                    held.push((pid, inode));
                }
            }
        }
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let listed;
        let sockets = match &self.unix_sockets {
            Some(sockets) => sockets,
            None if self.root == Path::new("/") => {
                listed = unix_peers::unix_sockets().map_err(InventoryError::SockDiag)?;
                &listed
            }
            None => return Ok(Vec::new()),
        };
        let ours: BTreeSet<u64> = held.iter().map(|(_, inode)| *inode).collect();
        let by_inode: HashMap<u64, &unix_peers::UnixSocket> =
            sockets.iter().map(|s| (u64::from(s.inode), s)).collect();
        let mut found = Vec::new();
        let mut seen = BTreeSet::new();
        for (pid, inode) in held {
            let Some(socket) = by_inode.get(&inode) else {
                continue;
            };
            let Some(peer) = socket.peer.map(u64::from) else {
                continue;
            };
            if ours.contains(&peer) || exempt.contains(&inode) || !seen.insert(inode) {
                continue;
            }
            found.push(OutsideUnixPeer {
                pid,
                inode,
                peer_holder: self.holder_of_socket(peer),
            });
        }
        Ok(found)
    }

    /// `pid (comm)` of a process holding socket `inode`, scanning `/proc`.
    fn holder_of_socket(&self, inode: u64) -> Option<String> {
        let wanted = format!("socket:[{inode}]");
        for (pid, dir) in self.proc_pids().ok()? {
            let Ok(Some(links)) = self.fd_links(pid) else {
                continue;
            };
            if links.iter().any(|(_, t)| t.as_os_str() == wanted.as_str()) {
                let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
                return Some(format!("{pid} (`{}`)", comm.trim()));
            }
        }
        None
    }

    /// Every process's pid and `/proc/<pid>` directory, in listing order.
    fn proc_pids(&self) -> Result<Vec<(i32, PathBuf)>, InventoryError> {
        let proc = self.root.join("proc");
        let entries = fs::read_dir(&proc).map_err(io_err(&proc, "cannot list"))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&proc, "cannot list"))?;
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            {
                found.push((pid, entry.path()));
            }
        }
        Ok(found)
    }

    /// The descendants of `main_pid` (followed through every process's
    /// `/proc/<pid>/stat`) that are not among `pids`, the unit's cgroup
    /// members, with their cgroups. Processes that exit meanwhile are left
    /// out.
    pub fn descendants_elsewhere(
        &self,
        main_pid: i32,
        pids: &[i32],
    ) -> Result<Vec<DescendantElsewhere>, InventoryError> {
        // parent -> [(child, comm)]
        let mut children: BTreeMap<i32, Vec<(i32, String)>> = BTreeMap::new();
        for (pid, dir) in self.proc_pids()? {
            let Ok(text) = fs::read_to_string(dir.join("stat")) else {
                continue; // exited meanwhile
            };
            if let Some((comm, ppid)) = parse_stat(&text) {
                children.entry(ppid).or_default().push((pid, comm));
            }
        }
        let members: BTreeSet<i32> = pids.iter().copied().collect();
        let mut found = Vec::new();
        let mut queue = vec![main_pid];
        let mut seen = BTreeSet::new();
        while let Some(parent) = queue.pop() {
            for (pid, comm) in children.get(&parent).into_iter().flatten() {
                if !seen.insert(*pid) {
                    continue;
                }
                queue.push(*pid);
                if !members.contains(pid) {
                    let cgroup = fs::read_to_string(self.root.join(format!("proc/{pid}/cgroup")))
                        .ok()
                        .and_then(|t| {
                            t.lines()
                                .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
                        })
                        .unwrap_or_else(|| "another cgroup".to_owned());
                    found.push(DescendantElsewhere {
                        pid: *pid,
                        comm: comm.clone(),
                        cgroup,
                    });
                }
            }
        }
        found.sort_by_key(|d| d.pid);
        Ok(found)
    }

    /// The processes among `pids` that are neither `main_pid` nor below it.
    /// A process's ancestors are followed through `/proc/<pid>/stat` within
    /// `pids` (a descendant of the main process is in the unit's cgroup or
    /// one below it, all of which `pids` lists). Processes that exit
    /// meanwhile are left out.
    pub fn outside_main_tree(
        &self,
        main_pid: i32,
        pids: &[i32],
    ) -> Result<Vec<OutsideProcess>, InventoryError> {
        // pid -> (parent pid, command name)
        let mut parents: BTreeMap<i32, (i32, String)> = BTreeMap::new();
        for &pid in pids.iter().filter(|&&pid| pid != main_pid) {
            let path = self.root.join(format!("proc/{pid}/stat"));
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path, "cannot read")(e)),
            };
            let (comm, ppid) = parse_stat(&text).ok_or_else(|| InventoryError::Parse {
                path: path.clone(),
                line: 1,
                detail: "expected `pid (comm) state ppid ...`".into(),
            })?;
            parents.insert(pid, (ppid, comm));
        }
        let mut outside = Vec::new();
        for (&pid, (ppid, comm)) in &parents {
            let ppid = *ppid;
            let mut ancestor = ppid;
            // Each step moves to a listed parent; a cycle cannot happen in
            // the kernel's tree, the bound only guards against a bad read.
            for _ in 0..=parents.len() {
                if ancestor == main_pid {
                    break;
                }
                match parents.get(&ancestor) {
                    Some((next, _)) => ancestor = *next,
                    None => break,
                }
            }
            if ancestor != main_pid {
                outside.push(OutsideProcess {
                    pid,
                    ppid,
                    comm: comm.clone(),
                });
            }
        }
        Ok(outside)
    }

    /// Thread ids of the cgroup (and its sub-cgroups) that are not one of
    /// `pids`. A kernel without `cgroup.threads` gives none.
    pub fn cgroup_thread_ids(
        &self,
        unit: &str,
        cgroup: &str,
        pids: &[i32],
    ) -> Result<Vec<i32>, InventoryError> {
        let dir = self.cgroup_dir(unit, cgroup)?;
        if !dir.join("cgroup.threads").exists() {
            return Ok(Vec::new());
        }
        let mut threads = BTreeSet::new();
        collect_cgroup_ids(&dir, "cgroup.threads", true, &mut threads)?;
        Ok(threads.into_iter().filter(|t| !pids.contains(t)).collect())
    }

    /// The cgroup directory of `cgroup` below the root.
    fn cgroup_dir(&self, unit: &str, cgroup: &str) -> Result<PathBuf, InventoryError> {
        let bad = || InventoryError::BadCgroupPath {
            unit: unit.to_owned(),
            cgroup: cgroup.to_owned(),
        };
        let relative = cgroup.strip_prefix('/').ok_or_else(bad)?;
        let mut dir = self.root.join(CGROUP_MOUNT);
        let mut depth = 0;
        for component in Path::new(relative).components() {
            match component {
                Component::Normal(part) => {
                    dir.push(part);
                    depth += 1;
                }
                Component::CurDir => {}
                _ => return Err(bad()),
            }
        }
        // The root cgroup would be the whole machine.
        if depth == 0 {
            return Err(bad());
        }
        Ok(dir)
    }

    /// Every pid in `cgroup` and its sub-cgroups, sorted, without duplicates.
    pub fn cgroup_pids(&self, unit: &str, cgroup: &str) -> Result<Vec<i32>, InventoryError> {
        let dir = self.cgroup_dir(unit, cgroup)?;
        match fs::symlink_metadata(&dir) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(InventoryError::NoCgroup {
                    unit: unit.to_owned(),
                    path: dir,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(InventoryError::NoCgroup {
                    unit: unit.to_owned(),
                    path: dir,
                });
            }
            Err(e) => return Err(io_err(&dir, "cannot stat")(e)),
        }
        let mut pids = BTreeSet::new();
        collect_cgroup_pids(&dir, true, &mut pids)?;
        if pids.is_empty() {
            return Err(InventoryError::EmptyCgroup {
                unit: unit.to_owned(),
                cgroup: cgroup.to_owned(),
            });
        }
        Ok(pids.into_iter().collect())
    }

    /// The sockets held by `pids`, looked up in the socket tables of each
    /// pid's network namespace (read through the first pid of each namespace).
    pub fn sockets_of_pids(&self, pids: &[i32]) -> Result<SocketInventory, InventoryError> {
        if let Some(&pid) = pids.iter().find(|&&pid| pid <= 0) {
            return Err(InventoryError::BadPid(pid));
        }
        let mut inventory = SocketInventory::default();
        let mut tables: BTreeMap<String, NetTables> = BTreeMap::new();
        // inode -> (netns key, held on fd 1 or 2)
        let mut held: BTreeMap<u64, (String, bool)> = BTreeMap::new();
        let mut seen_pids = BTreeSet::new();
        for &pid in pids {
            if !seen_pids.insert(pid) {
                continue;
            }
            let Some(fds) = self.socket_fds(pid)? else {
                tracing::debug!(pid, "process exited before its fds were read");
                inventory.gone_pids.push(pid);
                continue;
            };
            if fds.is_empty() {
                continue;
            }
            let netns = self.netns_key(pid);
            if !tables.contains_key(&netns) {
                tables.insert(netns.clone(), self.read_tables(pid)?);
            }
            for (fd, inode) in fds {
                let entry = held.entry(inode).or_insert_with(|| (netns.clone(), false));
                entry.1 |= fd == 1 || fd == 2;
            }
        }

        let mut listening = BTreeSet::new();
        let mut established = BTreeSet::new();
        let mut stdio = BTreeSet::new();
        let counts = &mut inventory.other_sockets;
        for (inode, (netns, on_stdio)) in held {
            let Some(table) = tables.get(&netns) else {
                continue;
            };
            if let Some(socket) = table.tcp.get(&inode) {
                match socket.state {
                    TCP_LISTEN => {
                        listening.insert(socket.local);
                    }
                    TCP_ESTABLISHED => {
                        established.insert(TcpConnection {
                            local: socket.local,
                            remote: socket.remote,
                        });
                    }
                    _ => counts.tcp_other_state += 1,
                }
            } else if let Some(socket) = table.unix.get(&inode) {
                if on_stdio && socket.sock_type == UNIX_SOCK_STREAM {
                    stdio.insert(inode);
                } else {
                    counts.unix += 1;
                }
            } else if table.udp.contains(&inode) {
                counts.udp += 1;
            } else {
                counts.other += 1;
            }
        }
        inventory.listening = listening.into_iter().collect();
        inventory.established = established.into_iter().collect();
        inventory.stdio_socket_inodes = stdio.into_iter().collect();
        Ok(inventory)
    }

    /// `(fd, inode)` of every socket `pid` has open, or `None` if the process
    /// no longer exists.
    fn socket_fds(&self, pid: i32) -> Result<Option<Vec<(u32, u64)>>, InventoryError> {
        Ok(self.fd_links(pid)?.map(|links| {
            links
                .into_iter()
                .filter_map(|(fd, target)| {
                    target
                        .to_str()
                        .and_then(socket_inode)
                        .map(|inode| (fd, inode))
                })
                .collect()
        }))
    }

    /// `(fd, link target)` of every fd `pid` has open, in fd order, or `None`
    /// if the process no longer exists. Fds closed meanwhile are left out.
    pub(crate) fn fd_links(&self, pid: i32) -> Result<Option<Vec<(u32, PathBuf)>>, InventoryError> {
        let dir = self.root.join(format!("proc/{pid}/fd"));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&dir, "cannot list open files of")(e)),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&dir, "cannot list open files of"))?;
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            match fs::read_link(entry.path()) {
                Ok(target) => links.push((fd, target)),
                // Closed since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&entry.path(), "cannot read link")(e)),
            }
        }
        links.sort_by_key(|(fd, _)| *fd);
        Ok(Some(links))
    }

    /// Identifies `pid`'s network namespace; pids whose namespace link cannot
    /// be read get a namespace of their own.
    fn netns_key(&self, pid: i32) -> String {
        let link = self.root.join(format!("proc/{pid}/ns/net"));
        match fs::read_link(&link) {
            Ok(target) => target.to_string_lossy().into_owned(),
            Err(_) => format!("pid:{pid}"),
        }
    }

    fn read_tables(&self, pid: i32) -> Result<NetTables, InventoryError> {
        let net = self.root.join(format!("proc/{pid}/net"));
        let mut tables = NetTables::default();
        for (name, family, required) in [
            ("tcp", Family::V4, true),
            ("tcp6", Family::V6, false),
            ("udp", Family::V4, false),
            ("udp6", Family::V6, false),
        ] {
            let path = net.join(name);
            let Some(text) = read_table(&path, required)? else {
                continue;
            };
            for socket in procnet::parse_inet_table(&text, family, &path)? {
                if socket.inode == 0 {
                    continue;
                }
                if name.starts_with("tcp") {
                    tables.tcp.insert(socket.inode, socket);
                } else {
                    tables.udp.insert(socket.inode);
                }
            }
        }
        let path = net.join("unix");
        if let Some(text) = read_table(&path, false)? {
            for socket in procnet::parse_unix_table(&text, &path)? {
                tables.unix.insert(socket.inode, socket);
            }
        }
        Ok(tables)
    }
}

/// Reads a table; a missing optional one (IPv6 disabled, no unix support) is
/// `None`.
fn read_table(path: &Path, required: bool) -> Result<Option<String>, InventoryError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !required => Ok(None),
        Err(e) => Err(io_err(path, "cannot read")(e)),
    }
}

/// The command name and parent pid in `/proc/<pid>/stat`. The name is in
/// parentheses and may itself contain spaces and parentheses, so it ends at
/// the last `)`.
fn parse_stat(text: &str) -> Option<(String, i32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut fields = text.get(close + 1..)?.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((comm, ppid))
}

/// The inode in a `socket:[<inode>]` link target.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Adds the pids of `dir`'s `cgroup.procs` and of every sub-cgroup. A
/// sub-cgroup removed meanwhile is skipped; the top one must be readable.
fn collect_cgroup_pids(
    dir: &Path,
    top: bool,
    pids: &mut BTreeSet<i32>,
) -> Result<(), InventoryError> {
    collect_cgroup_ids(dir, "cgroup.procs", top, pids)
}

/// Adds the ids listed in `file` (`cgroup.procs` or `cgroup.threads`) of
/// `dir` and of every sub-cgroup.
fn collect_cgroup_ids(
    dir: &Path,
    file: &str,
    top: bool,
    pids: &mut BTreeSet<i32>,
) -> Result<(), InventoryError> {
    let procs = dir.join(file);
    let text = match fs::read_to_string(&procs) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !top => return Ok(()),
        Err(e) => return Err(io_err(&procs, "cannot read")(e)),
    };
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match line.parse::<i32>() {
            Ok(pid) if pid > 0 => {
                pids.insert(pid);
            }
            _ => {
                return Err(InventoryError::Parse {
                    path: procs.clone(),
                    line: index + 1,
                    detail: format!("{line:?} is not a pid"),
                });
            }
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !top => return Ok(()),
        Err(e) => return Err(io_err(dir, "cannot list")(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir, "cannot list"))?;
        let is_dir = entry
            .file_type()
            .map(|t| t.is_dir())
            .map_err(io_err(&entry.path(), "cannot stat"))?;
        if is_dir {
            collect_cgroup_ids(&entry.path(), file, false, pids)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
