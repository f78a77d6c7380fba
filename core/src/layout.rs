//! Where a transaction keeps its files: one type for the layout and the id.
//!
//! The old boot writes a transaction directory and the next boot finds it
//! again from nothing but the command line's transaction id, so both sides
//! must agree on every name in it. [`TransactionDir`] is that agreement: the
//! directory's name is the transaction id, each unit's snapshot is a
//! subdirectory named after the unit, and the files in them have fixed
//! names.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::kexec::TransactionId;

/// The unit's planned snapshot (its `UnitSnapshot`, JSON), written before
/// its dump: what an undo restores from when there is no manifest yet.
pub const UNIT_SNAPSHOT_FILE: &str = "unit.json";
/// CRIU's lock table of the unit's connections, saved at its dump (`nft`
/// text): the flows the next boot holds, and the table an undo deletes.
pub const HOLD_RULES_FILE: &str = "hold.nft";

/// A transaction's directory in the image store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionDir {
    path: PathBuf,
    id: String,
}

impl TransactionDir {
    /// The directory of transaction `id` in the store `image_root`.
    pub fn in_store(image_root: &Path, id: &TransactionId) -> Self {
        TransactionDir {
            path: image_root.join(id.as_str()),
            id: id.as_str().to_string(),
        }
    }

    /// The transaction directory at `path`, whose name is its id.
    pub fn at(path: &Path) -> Result<Self> {
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no transaction id as its name", path.display()))?;
        if !TransactionId::is_valid(id) {
            bail!("{}: {id:?} is not a transaction id", path.display());
        }
        Ok(TransactionDir {
            path: path.to_path_buf(),
            id: id.to_string(),
        })
    }

    /// The transaction directory holding the unit snapshot directory
    /// `snapshot_dir` (what the restore helper is given).
    pub fn of_snapshot(snapshot_dir: &Path) -> Result<Self> {
        let parent = snapshot_dir.parent().with_context(|| {
            format!(
                "the snapshot directory {} has no parent",
                snapshot_dir.display()
            )
        })?;
        Self::at(parent)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The transaction id (the directory's name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The directory of `unit`'s snapshot.
    pub fn unit_dir(&self, unit: &str) -> PathBuf {
        self.path.join(unit_dir_name(unit))
    }

    /// `unit`'s saved CRIU lock table.
    pub fn hold_rules(&self, unit: &str) -> PathBuf {
        self.unit_dir(unit).join(HOLD_RULES_FILE)
    }

    /// `unit`'s planned snapshot record.
    pub fn unit_record(&self, unit: &str) -> PathBuf {
        self.unit_dir(unit).join(UNIT_SNAPSHOT_FILE)
    }

    /// The manifest, written at the hand-over.
    pub fn manifest_file(&self) -> PathBuf {
        self.path.join(crate::manifest::MANIFEST_FILE)
    }
}

/// The name of one unit's snapshot directory inside the transaction
/// directory.
pub fn unit_dir_name(unit: &str) -> String {
    // systemd unit names are [A-Za-z0-9:_.\\@-]; none of them is a path separator.
    format!("unit-{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_named_from_the_id_and_the_unit() {
        let id = TransactionId::new("t1-1").expect("id");
        let dir = TransactionDir::in_store(Path::new("/var/lib/x"), &id);
        assert_eq!(dir.path(), Path::new("/var/lib/x/t1-1"));
        assert_eq!(dir.id(), "t1-1");
        assert_eq!(
            dir.hold_rules("a@b.service"),
            Path::new("/var/lib/x/t1-1/unit-a@b.service/hold.nft")
        );
        assert_eq!(
            dir.unit_record("a.service"),
            Path::new("/var/lib/x/t1-1/unit-a.service/unit.json")
        );
        assert_eq!(
            TransactionDir::of_snapshot(&dir.unit_dir("a.service")).expect("parent"),
            dir
        );
        assert_eq!(TransactionDir::at(dir.path()).expect("at"), dir);
    }

    #[test]
    fn a_directory_not_named_by_a_transaction_id_is_refused() {
        for bad in ["/", "/var/lib/x/Not_An_Id", "/var/lib/x/a b"] {
            let err = TransactionDir::at(Path::new(bad)).expect_err(bad);
            assert!(format!("{err:#}").contains(bad.rsplit('/').next().unwrap_or(bad)));
        }
        TransactionDir::of_snapshot(Path::new("/")).expect_err("no parent");
    }
}
