//! What the guest base image is made of, and the hash that names it.
//!
//! The base image takes a minute to build, so it is cached outside the
//! repository; the cache entry is named by a hash of everything that shapes
//! the image (suite, packages, the customize script, the recipe format), so
//! changing any of them builds a new image and an unchanged recipe never
//! rebuilds. The mirror and the ssh key are not part of the hash: they change
//! where bytes come from and who may log in, not what the guest is.

use sha2::{Digest, Sha256};

/// Bumped when the way an image is assembled from a recipe changes in a way
/// the fields below do not show (file layout in the cache, disk format).
const FORMAT: u32 = 1;

/// The customize hook run inside the new root; its text is part of the hash.
pub const CUSTOMIZE_SCRIPT: &str = include_str!("../guest/customize.sh");

/// Packages every lab guest has: systemd, the checkpoint engine, the kexec
/// tools, the firewall, the trixie kernel the guest boots first, and stock
/// Debian services preserved as their package ships them (nginx: a root
/// master with unprivileged workers, `Type=forking` with a `PIDFile=`;
/// memcached: its own user in a sandbox with a mount namespace and a private
/// /tmp; redis: `Type=notify` and a sandbox with `PrivateUsers=`, which CRIU
/// cannot checkpoint).
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "polkitd",
    "criu",
    "kexec-tools",
    "nftables",
    "iproute2",
    "linux-image-amd64",
    "initramfs-tools",
    "openssh-server",
    "procps",
    "kmod",
    "python3",
    "nginx",
    "memcached",
    "redis-server",
    "postgresql",
    "mosquitto",
    "haproxy",
];

/// The recipe of a guest base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// Debian suite of the root, e.g. `trixie`.
    pub suite: String,
    /// Packages installed into the root (sorted and deduplicated when hashed).
    pub packages: Vec<String>,
    /// Size of the root filesystem in MiB.
    pub disk_mib: u32,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            suite: "trixie".into(),
            packages: BASE_PACKAGES.iter().map(|p| (*p).to_string()).collect(),
            disk_mib: 3072,
        }
    }
}

impl Recipe {
    /// The same recipe with extra Debian packages, for scenarios that need them.
    pub fn with_packages(mut self, extra: &[&str]) -> Self {
        self.packages.extend(extra.iter().map(|p| (*p).to_string()));
        self
    }

    /// Packages in a canonical order, without duplicates.
    pub fn canonical_packages(&self) -> Vec<String> {
        let mut packages = self.packages.clone();
        packages.sort();
        packages.dedup();
        packages
    }

    /// The hash naming this recipe's cache entry: 16 hex digits of SHA-256
    /// over a canonical, line-oriented rendering of every input.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |name: &str, value: &[u8]| {
            hasher.update(name.as_bytes());
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value);
        };
        field("format", &FORMAT.to_le_bytes());
        field("suite", self.suite.as_bytes());
        field("packages", self.canonical_packages().join(",").as_bytes());
        field("disk_mib", &self.disk_mib.to_le_bytes());
        field("customize", CUSTOMIZE_SCRIPT.as_bytes());
        let digest = hasher.finalize();
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_hex() {
        let a = Recipe::default().hash();
        let b = Recipe::default().hash();
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn package_order_and_duplicates_do_not_matter() {
        let mut shuffled = Recipe::default();
        shuffled.packages.reverse();
        shuffled.packages.push("criu".into());
        assert_eq!(shuffled.hash(), Recipe::default().hash());
    }

    #[test]
    fn every_input_changes_the_hash() {
        let base = Recipe::default().hash();
        assert_ne!(Recipe::default().with_packages(&["strace"]).hash(), base);
        let other_suite = Recipe {
            suite: "forky".into(),
            ..Recipe::default()
        };
        assert_ne!(other_suite.hash(), base);
        let bigger = Recipe {
            disk_mib: 4096,
            ..Recipe::default()
        };
        assert_ne!(bigger.hash(), base);
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // "ab" + "c" must not hash like "a" + "bc".
        let one = Recipe {
            packages: vec!["ab".into(), "c".into()],
            ..Recipe::default()
        };
        let two = Recipe {
            packages: vec!["a".into(), "bc".into()],
            ..Recipe::default()
        };
        assert_ne!(one.hash(), two.hash());
    }
}
