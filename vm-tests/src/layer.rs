//! The fresh layer of files a test installs into its guest.
//!
//! The base image holds only Debian packages; this workspace's binaries and
//! files go into each test's own overlay, at the paths a package would use,
//! so every run tests the code as it is now and the base image never needs a
//! rebuild for a code change.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::guest::Guest;
use crate::process::run;

/// The lab's test service unit, installed as an operator's unit would be.
pub const LAB_SERVICE_UNIT: &str = include_str!("../guest/lab-service.service");
/// A second test unit whose checkpoint fails (see the unit file).
pub const LAB_BLOCKER_UNIT: &str = include_str!("../guest/lab-blocker.service");
/// A unit that takes a given pid early in the next boot (see the unit file).
pub const LAB_PID_SQUATTER_UNIT: &str = include_str!("../guest/lab-pid-squatter.service");
/// Where the test service binary lives in the guest.
pub const LAB_SERVICE_BIN: &str = "/usr/local/lib/seamless-lab/lab-service";

/// Where the product's command is installed.
pub const PRODUCT_BIN: &str = "/usr/bin/seamless-reboot";
/// The product's systemd generator: the same binary, dispatched by its name.
pub const PRODUCT_GENERATOR: &str = "/usr/lib/systemd/system-generators/seamless-reboot-generator";

/// The product's unit, D-Bus and polkit files, at their package paths.
pub const PRODUCT_FILES: &[(&str, &str)] = &[
    (
        "/usr/lib/systemd/system/seamless-reboot.service",
        include_str!("../../units/seamless-reboot.service"),
    ),
    (
        "/usr/share/dbus-1/system-services/org.seamlessreboot.Reboot1.service",
        include_str!("../../units/dbus-1/system-services/org.seamlessreboot.Reboot1.service"),
    ),
    (
        "/usr/share/dbus-1/system.d/org.seamlessreboot.Reboot1.conf",
        include_str!("../../units/dbus-1/system.d/org.seamlessreboot.Reboot1.conf"),
    ),
    (
        "/usr/share/polkit-1/actions/org.seamlessreboot.policy",
        include_str!("../../units/polkit-1/actions/org.seamlessreboot.policy"),
    ),
    (
        "/usr/share/polkit-1/rules.d/50-seamless-reboot.rules",
        include_str!("../../units/polkit-1/rules.d/50-seamless-reboot.rules"),
    ),
    (
        "/usr/lib/tmpfiles.d/seamless-reboot.conf",
        include_str!("../../units/tmpfiles.d/seamless-reboot.conf"),
    ),
];

/// A staging directory mirroring the guest's file system.
#[derive(Debug)]
pub struct Layer {
    stage: PathBuf,
}

impl Layer {
    /// Starts an empty layer staged in `stage` (created, emptied).
    pub fn new(stage: &Path) -> Result<Layer> {
        if stage.exists() {
            fs::remove_dir_all(stage)?;
        }
        fs::create_dir_all(stage)?;
        Ok(Layer {
            stage: stage.to_path_buf(),
        })
    }

    /// Adds a file with `contents` at absolute guest path `dest`.
    pub fn add_bytes(&mut self, dest: &str, contents: &[u8], mode: u32) -> Result<()> {
        let target = self.target(dest)?;
        fs::write(&target, contents).with_context(|| format!("cannot stage {dest}"))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Adds a host file (a built binary) at guest path `dest`.
    pub fn add_file(&mut self, dest: &str, source: &Path, mode: u32) -> Result<()> {
        let target = self.target(dest)?;
        fs::copy(source, &target)
            .with_context(|| format!("cannot stage {} as {dest}", source.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Adds a symbolic link at guest path `dest` pointing to `points_to`.
    pub fn add_symlink(&mut self, dest: &str, points_to: &str) -> Result<()> {
        let target = self.target(dest)?;
        std::os::unix::fs::symlink(points_to, &target)
            .with_context(|| format!("cannot stage link {dest}"))
    }

    /// The product, at the paths its package uses: the command, and the
    /// same binary as the next boot's systemd generator.
    pub fn with_product(mut self, bin_dir: &Path) -> Result<Layer> {
        self.add_file(
            PRODUCT_BIN,
            &required_binary(bin_dir, "seamless-reboot")?,
            0o755,
        )?;
        self.add_symlink(PRODUCT_GENERATOR, PRODUCT_BIN)?;
        for (dest, contents) in PRODUCT_FILES {
            self.add_bytes(dest, contents.as_bytes(), 0o644)?;
        }
        Ok(self)
    }

    fn target(&self, dest: &str) -> Result<PathBuf> {
        let relative = dest
            .strip_prefix('/')
            .with_context(|| format!("guest path {dest} is not absolute"))?;
        let target = self.stage.join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        Ok(target)
    }

    /// The lab's own layer: the test service and its unit.
    pub fn with_lab_service(mut self, bin_dir: &Path) -> Result<Layer> {
        self.add_file(
            LAB_SERVICE_BIN,
            &required_binary(bin_dir, "lab-service")?,
            0o755,
        )?;
        self.add_bytes(
            "/etc/systemd/system/lab-service.service",
            LAB_SERVICE_UNIT.as_bytes(),
            0o644,
        )?;
        self.add_bytes(
            "/etc/systemd/system/lab-blocker.service",
            LAB_BLOCKER_UNIT.as_bytes(),
            0o644,
        )?;
        self.add_bytes(
            "/etc/systemd/system/lab-pid-squatter.service",
            LAB_PID_SQUATTER_UNIT.as_bytes(),
            0o644,
        )?;
        // The second NIC, present when the guest has a Linux peer.
        self.add_bytes(
            "/etc/systemd/network/20-eth1.network",
            format!(
                "[Match]\nName=eth1\n\n[Network]\nAddress={}/24\n",
                crate::netns::GUEST_PEER_ADDR
            )
            .as_bytes(),
            0o644,
        )?;
        Ok(self)
    }

    /// Packs the layer and unpacks it over the guest's root, then makes
    /// systemd read the new units.
    pub fn install(&self, guest: &Guest) -> Result<()> {
        let tar = self.stage.with_extension("tar");
        run(
            Command::new("tar")
                .args(["--owner=0", "--group=0", "-C"])
                .arg(&self.stage)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            Duration::from_secs(60),
        )?
        .ok("tar (layer)")?;
        guest.sh_with_input(
            "tar --keep-directory-symlink --no-overwrite-dir -xf - -C / && systemctl daemon-reload",
            &tar,
            Duration::from_secs(120),
        )?;
        Ok(())
    }
}

/// The directory holding this workspace's built binaries: `SEAMLESS_LAB_BIN_DIR`,
/// else the directory of the running executable (or its parent, for test
/// executables in `deps/`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SEAMLESS_LAB_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// A built binary of this workspace, or an error saying how to build it.
pub fn required_binary(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let path = bin_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        anyhow::bail!(
            "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
            path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_files_at_guest_paths_with_modes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut layer = Layer::new(&tmp.path().join("stage")).expect("layer");
        layer
            .add_bytes("/etc/systemd/system/x.service", b"[Service]\n", 0o644)
            .expect("add");
        let staged = tmp.path().join("stage/etc/systemd/system/x.service");
        assert_eq!(fs::read(&staged).expect("read"), b"[Service]\n");
        assert_eq!(
            fs::metadata(&staged).expect("meta").permissions().mode() & 0o777,
            0o644
        );
        assert!(layer.add_bytes("relative/path", b"", 0o644).is_err());
    }

    #[test]
    fn product_layer_has_the_binary_generator_units_and_policy() {
        let tmp = tempfile::tempdir().expect("tmp");
        let bin = tmp.path().join("bin");
        fs::create_dir_all(&bin).expect("mkdir");
        fs::write(bin.join("seamless-reboot"), b"#!/bin/true\n").expect("write");
        let stage = tmp.path().join("stage");
        Layer::new(&stage)
            .expect("layer")
            .with_product(&bin)
            .expect("product");
        let staged = |p: &str| stage.join(p.trim_start_matches('/'));
        assert!(staged(PRODUCT_BIN).is_file());
        assert_eq!(
            fs::read_link(staged(PRODUCT_GENERATOR)).expect("link"),
            Path::new(PRODUCT_BIN)
        );
        for (dest, contents) in PRODUCT_FILES {
            assert_eq!(
                &fs::read_to_string(staged(dest)).expect(dest),
                contents,
                "{dest}"
            );
        }
        assert_eq!(PRODUCT_FILES.len(), 6);
    }

    #[test]
    fn missing_binary_says_how_to_build() {
        let tmp = tempfile::tempdir().expect("tmp");
        let err = required_binary(tmp.path(), "lab-service").expect_err("missing");
        assert!(
            format!("{err}").contains("cargo build --workspace --bins"),
            "{err}"
        );
    }
}
