//! CRIU RPC client: drives `criu swrk` over a `SOCK_SEQPACKET` socketpair.
//!
//! * [`rpc`] — message types generated from the vendored `core/proto/rpc.proto`
//!   (CRIU v4.1.1 `images/rpc.proto`, MIT; see `core/proto/LICENSE`).
//! * [`Transport`] / [`exchange`] — the request → notify* → response protocol,
//!   independent of any process, so it is unit-tested with a scripted fake.
//! * [`Swrk`] — one `criu swrk` child process and its socket.
//! * [`images`] — the process tree a dump saved (`pstree.img`).
//! * [`Criu`] — high-level calls: [`Criu::version`], [`Criu::check`],
//!   [`Criu::dump`], [`Criu::restore`], built from [`DumpOptions`],
//!   [`RestoreOptions`] and [`CheckOptions`].
//!
//! # Facts this module relies on (CRIU 4.1.1; Debian trixie ships 4.1.1)
//!
//! Sources are files of <https://github.com/checkpoint-restore/criu> at tag
//! `v4.1.1` unless noted; they were read for facts only, no code was copied.
//!
//! **Protocol** (`criu/crtools.c`, `criu/cr-service.c`, `lib/c/criu.c`)
//! * `criu swrk <fd>`: `<fd>` is the number of an already-open socket in
//!   CRIU's own fd table (so it must survive `exec`). CRIU reads one
//!   serialized `criu_req` per packet and writes one `criu_resp` per packet;
//!   after the final response the worker exits unless `keep_open` was set,
//!   and `keep_open` is only honoured for PAGE_SERVER(_CHLD), CPUINFO_*,
//!   FEATURE_CHECK and VERSION. This client uses one `criu swrk` per request.
//! * With `opts.notify_scripts`, every action-script hook becomes a response
//!   of type NOTIFY carrying `notify.script` (names from
//!   `criu/action-scripts.c`: pre-stream, pre-dump, post-dump, pre-restore,
//!   post-restore, network-lock, network-unlock, setup-namespaces,
//!   post-setup-namespaces, pre-resume, post-resume, orphan-pts-master,
//!   status-ready, query-ext-files). CRIU blocks until it receives a request
//!   of type NOTIFY with `notify_success = true`; anything else makes the hook
//!   fail. `notify.pid` (the restored root task's pid) is only set for
//!   setup-namespaces and post-restore. orphan-pts-master attaches the pty
//!   master fd as SCM_RIGHTS; this client closes any received fds.
//!   network-lock/network-unlock hooks only fire when the dumped tree has its
//!   own network namespace (`criu/net.c`, `network_lock()`).
//! * post-dump comes after all images are written and before the tasks are
//!   killed; failing it makes CRIU roll back — tasks resumed, network
//!   unlocked — and the DUMP fails (`criu/cr-dump.c`, `cr_dump_finish`). It
//!   is the last point at which a dump can be abandoned.
//! * Errors: a failed request answers with `success = false`, `cr_errno` (if
//!   non-zero) and `cr_errmsg` (CRIU's first logged error). An invalid or
//!   out-of-sequence request is answered with type EMPTY, `success = false`.
//!   Bad options give `cr_errno = EBADRQC` (`test/others/rpc/errno.py`).
//! * `images_dir_fd` (and `work_dir_fd`) are *not* CRIU's fds: CRIU opens
//!   `/proc/<peer pid>/fd/<n>` where the peer pid is `SO_PEERCRED` of the RPC
//!   socket — for a socketpair, the process that created it, i.e. us. So the
//!   directory fd only has to stay open in this process during the request.
//!   `log_file` is a plain name (no `/`, else EBADRQC) created in the work dir,
//!   which defaults to the images dir; without it the log is `criu.log`.
//! * `inherit_fd` entries, by contrast, are fds in CRIU's own process (it
//!   `fstat`s them at option parsing, `criu/files.c` `inherit_fd_add`), so
//!   they must be inherited across `exec`; `inherit_fd` and `rst_sibling` are
//!   rejected unless CRIU runs as `swrk`.
//! * CHECK needs `opts` with an images/work dir (the options parser opens it
//!   and initialises the log there before checking; see CRIU issue #2758 and
//!   PR #2789, which relaxes this after 4.1.1). VERSION needs no `opts`.
//! * Restore over RPC is always detached (`restore_detach`). Without
//!   `rst_sibling` the restored root task is a child of `criu swrk` and is
//!   re-parented to the nearest subreaper (or PID 1) when CRIU exits. With
//!   `rst_sibling = true` the root is cloned with `CLONE_PARENT`
//!   (`criu/cr-restore.c`, `maybe_clone_parent`), i.e. it becomes a child of
//!   the *caller*, which must then reap it. `criu_restore_resp.pid` is the
//!   root task's pid (−1 on failure). RPC cannot set `--pidfile` (no field
//!   in `criu_opts`; only through `config_file`), so the caller writes a pid
//!   file from that pid itself.
//!
//! **Sockets and network** (`criu/sk-unix.c`, `criu/files.c`,
//! `criu/net.c`, `criu/netfilter.c`, `criu/sk-inet.c`,
//! `Documentation/criu.txt` incl. criu-dev commit 2cf8f13c)
//! * A unix socket whose peer is outside the dumped tree (e.g. a service's
//!   stdout/stderr stream to journald) is allowed by the external key
//!   `unix[<ino>]`, `<ino>` being the inode of the *dumped task's own*
//!   socket (as in `/proc/PID/fd/N -> socket:[<ino>]`); this works for stream
//!   sockets too. The deprecated `ext_unix_sk` + `unix_sk_ino` fields map to
//!   the same key; `ext_unix_sk` alone is not needed when the key is given.
//! * At restore such a socket is supplied with an `inherit_fd` whose key is
//!   `socket:[<ino>]` (same inode, note the colon) and whose fd is an open fd
//!   in CRIU's process. The CLI spelling is `--inherit-fd fd[N]:socket:[ino]`.
//! * TCP: `tcp_established` must be set at dump *and* at restore (restore
//!   fails with "Connected TCP socket in image" otherwise). The
//!   `network_lock` default is IPTABLES. With NFTABLES and no separate netns,
//!   dump creates table `inet CRIU-<run id>` with sets `conns4`/`conns6`
//!   dropping each dumped connection; it stays in place after a dump that
//!   does not leave the tasks running. Restore does *not* lock connections;
//!   it assumes the lock from dump is still there and at the end deletes
//!   table `inet CRIU-<dump run id>` (the id stored in the images' inventory);
//!   a failure of that delete is only logged. After kexec that table does
//!   not exist in the new kernel, so packets from peers would meet RSTs until
//!   restore: the new boot must drop them itself before networking starts
//!   (for instance by recreating that table, which CRIU then removes).
//!   With SKIP, CRIU neither locks nor unlocks.

mod client;
mod error;
pub mod images;
mod options;
mod protocol;
pub mod rpc;
mod swrk;
mod transport;

pub use client::{Criu, Restored};
pub use error::CriuError;
pub use options::{
    CheckOptions, DumpOptions, InheritFd, RestoreOptions, external_unix_socket_key,
    inherit_socket_key,
};
pub use protocol::{Notification, NotifyFn, exchange, scripts};
pub use rpc::{CriuCgMode as CgroupMode, CriuNetworkLockMethod as NetworkLock};
pub use swrk::Swrk;
pub use transport::{MAX_PACKET, SeqpacketTransport, Transport};
