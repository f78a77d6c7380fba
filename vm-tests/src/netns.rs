//! A network namespace of the lab's own, for tests with a Linux TCP peer.
//!
//! QEMU's user network (slirp) is a peculiar TCP peer: it never negotiates
//! window scaling and has its own retransmission timer. To measure a real
//! Linux peer, the guest gets a second NIC on a TAP device, and that TAP, the
//! QEMU process, ssh and the clients all live in a namespace the lab creates
//! and removes, so no test traffic leaves it.

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::run;

/// The host (peer) side of the TAP link, inside the namespace.
pub const PEER_ADDR: &str = "10.77.0.1";
/// The guest's address on its second NIC (`eth1`).
pub const GUEST_PEER_ADDR: &str = "10.77.0.2";
/// Name prefix of the lab's namespaces: `srlab-<creator pid>-<n>`.
const PREFIX: &str = "srlab-";

/// A network namespace with loopback up and a TAP device `tap0` carrying
/// [`PEER_ADDR`]; deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `srlab-<our pid>-<n>` for the first free n.
    pub fn create() -> Result<Netns> {
        let pid = std::process::id();
        let name = (0..100)
            .map(|n| format!("{PREFIX}{pid}-{n}"))
            .find(|n| !std::path::Path::new("/run/netns").join(n).exists())
            .ok_or_else(|| anyhow::anyhow!("no free namespace name"))?;
        run(
            Command::new("ip").args(["netns", "add", &name]),
            Duration::from_secs(20),
        )?
        .ok("ip netns add")?;
        let netns = Netns { name };
        let setup = format!(
            "ip link set lo up && ip tuntap add dev tap0 mode tap && \
             ip addr add {PEER_ADDR}/24 dev tap0 && ip link set tap0 up"
        );
        run(
            netns.command("sh").args(["-c", &setup]),
            Duration::from_secs(20),
        )?
        .ok("namespace setup")?;
        Ok(netns)
    }

    /// The prefix that runs a command inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Deletes namespaces left by lab processes that no longer run.
pub fn reap_stale_netns() -> usize {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = creator_pid(&name)
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            removed += 1;
        }
    }
    removed
}

/// The pid in a lab namespace name, `srlab-<pid>-<n>`.
pub fn creator_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_pid_only_for_lab_names() {
        assert_eq!(creator_pid("srlab-1234-0"), Some(1234));
        assert_eq!(creator_pid("srlab-x-0"), None);
        assert_eq!(creator_pid("other-1234-0"), None);
    }
}
