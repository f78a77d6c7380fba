//! Retention of the image store: `seamless-reboot prune`.
//!
//! A transaction directory holds the services' memory until its units are
//! back (the restore wipes the images then, keeping CRIU's logs and the
//! records), and for ever after a failure (the snapshot is the only copy of
//! a unit's state). Pruning removes whole transaction directories, oldest
//! first, keeping the newest `keep`, and never one that may still be
//! needed: one with an undo journal (an update under way, or one a
//! recovery must still undo), or one checkpointed in this boot and not yet
//! restored (its kexec is still to come).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::layout::TransactionDir;
use crate::manifest::{Manifest, read_outcomes};
use crate::transaction::journal::JOURNAL_FILE;

/// What a prune did with one transaction directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pruned {
    /// Removed.
    Removed(PathBuf),
    /// Kept: one of the newest `keep`.
    Kept(PathBuf),
    /// Kept although old, and why.
    Needed(PathBuf, String),
}

/// The transaction directories in `image_root`, oldest first (by the
/// creation time in their id: `t<millis>-<pid>`).
pub fn transactions(image_root: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(image_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", image_root.display()));
        }
    };
    let mut found: Vec<(u128, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", image_root.display()))?;
        let path = entry.path();
        let Ok(layout) = TransactionDir::at(&path) else {
            continue;
        };
        let millis = layout
            .id()
            .strip_prefix('t')
            .and_then(|rest| rest.split('-').next())
            .and_then(|m| m.parse().ok());
        if let (Some(millis), true) = (millis, path.is_dir()) {
            found.push((millis, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Why `dir` must stay whatever its age, if it must.
fn still_needed(dir: &Path, boot_id: &str) -> Option<String> {
    if dir.join(JOURNAL_FILE).exists() {
        return Some(
            "it has an undo journal: an update is under way, or `seamless-reboot recover` \
             must still undo it"
                .into(),
        );
    }
    let manifest = Manifest::read_from(dir).ok()?;
    let restored_nothing = read_outcomes(dir).map(|o| o.is_empty()).unwrap_or(true);
    (manifest.source_boot_id == boot_id && restored_nothing)
        .then(|| "it was checkpointed in this boot and its kexec is still to come".into())
}

/// Removes all but the newest `keep` transaction directories of
/// `image_root` that are not [still needed](still_needed) in the boot
/// `boot_id`. Returns what became of each, oldest first.
pub fn prune(image_root: &Path, keep: usize, boot_id: &str) -> Result<Vec<Pruned>> {
    let all = transactions(image_root)?;
    let old = all.len().saturating_sub(keep);
    let mut done = Vec::new();
    for (index, dir) in all.into_iter().enumerate() {
        if index >= old {
            done.push(Pruned::Kept(dir));
        } else if let Some(why) = still_needed(&dir, boot_id) {
            done.push(Pruned::Needed(dir, why));
        } else {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
            done.push(Pruned::Removed(dir));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{OutcomeKind, UnitOutcome, write_outcome};
    use crate::nextboot::tests::{BOOT_A, transaction};

    #[test]
    fn the_newest_are_kept_and_what_may_still_be_needed_stays() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        for id in ["t1000-1", "t4000-1", "t900-9", "not-a-transaction"] {
            fs::create_dir(root.join(id)).expect("mkdir");
        }
        // One to recover, and an update of this boot whose kexec is to come.
        fs::write(root.join("t1000-1").join(JOURNAL_FILE), "{}").expect("journal");
        transaction(root, "t2000-1", &["a.service"]);
        // This boot's too, but restored already (after a reload): removable.
        let restored = transaction(root, "t3000-1", &["a.service"]);
        write_outcome(
            &restored,
            &UnitOutcome {
                unit: "a.service".into(),
                outcome: OutcomeKind::Restored,
                detail: String::new(),
                recorded_unix: 1,
                duration_ms: 1,
                downtime_ms: None,
            },
        )
        .expect("outcome");
        let done = prune(root, 1, BOOT_A).expect("prunes");
        let path = |id: &str| root.join(id);
        assert_eq!(
            done,
            vec![
                Pruned::Removed(path("t900-9")),
                Pruned::Needed(
                    path("t1000-1"),
                    "it has an undo journal: an update is under way, or `seamless-reboot \
                     recover` must still undo it"
                        .into()
                ),
                Pruned::Needed(
                    path("t2000-1"),
                    "it was checkpointed in this boot and its kexec is still to come".into()
                ),
                Pruned::Removed(path("t3000-1")),
                Pruned::Kept(path("t4000-1")),
            ]
        );
        assert!(!path("t900-9").exists() && !path("t3000-1").exists());
        assert!(path("t1000-1").exists() && path("not-a-transaction").exists());
        // Keeping more than there are removes nothing; a missing store is empty.
        assert!(
            prune(root, 10, BOOT_A)
                .expect("prunes")
                .iter()
                .all(|p| matches!(p, Pruned::Kept(_)))
        );
        assert_eq!(prune(&root.join("missing"), 1, "b").expect("empty"), vec![]);
    }
}
