//! Binding a snapshot to the one kernel transition it was made for.
//!
//! Two facts identify the boot that may restore a snapshot: it is *not* the
//! boot that was checkpointed (same boot id means the kexec never happened
//! and the checkpointed processes may still be alive, or were killed and the
//! machine is back where it started without a new kernel), and it runs the
//! kernel that was loaded for the kexec (a fallback boot into the old kernel,
//! or a bootloader that picked another entry, gets a cold start instead).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Manifest;

/// Location of the boot id below the root.
const BOOT_ID_PATH: &str = "proc/sys/kernel/random/boot_id";

/// Location of the running kernel's release below the root (same as `uname -r`).
const OSRELEASE_PATH: &str = "proc/sys/kernel/osrelease";

/// Why the running boot may not restore a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// The boot id is the checkpointed one: no reboot happened.
    #[error(
        "this is still the checkpointed boot {boot_id}: no reboot happened, refusing to restore"
    )]
    SameBoot {
        /// The (shared) boot id.
        boot_id: String,
    },
    /// The running kernel is not the one loaded for the kexec.
    #[error("booted {booted} but the snapshot was made for a kexec into {expected}")]
    WrongKernel {
        /// Release of the running kernel.
        booted: String,
        /// Release the snapshot was made for.
        expected: String,
    },
    /// The boot id or kernel release could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

pub(super) fn check_transition(
    manifest: &Manifest,
    current_boot_id: &str,
    current_kernel: &str,
) -> Result<(), BindingError> {
    let current_boot_id = current_boot_id.trim();
    if current_boot_id.eq_ignore_ascii_case(manifest.source_boot_id.trim()) {
        return Err(BindingError::SameBoot {
            boot_id: current_boot_id.to_owned(),
        });
    }
    let current_kernel = current_kernel.trim();
    if current_kernel != manifest.target_kernel.trim() {
        return Err(BindingError::WrongKernel {
            booted: current_kernel.to_owned(),
            expected: manifest.target_kernel.trim().to_owned(),
        });
    }
    Ok(())
}

/// Reads the running boot's id from `<root>/proc/sys/kernel/random/boot_id`.
pub fn read_boot_id(root: &Path) -> Result<String, BindingError> {
    read_trimmed(&root.join(BOOT_ID_PATH))
}

/// Reads the running kernel's release (`uname -r`) from
/// `<root>/proc/sys/kernel/osrelease`.
pub fn read_kernel_release(root: &Path) -> Result<String, BindingError> {
    read_trimmed(&root.join(OSRELEASE_PATH))
}

fn read_trimmed(path: &Path) -> Result<String, BindingError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| BindingError::Io {
            path: path.to_owned(),
            source,
        })
}
