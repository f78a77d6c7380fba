//! Atomic, durable replacement of a small file.
//!
//! The kexec follows the checkpoint within seconds and throws away the page
//! cache, so a file only exists for the next boot once its data *and* the
//! directory entry naming it are on disk. Writing under a temporary name and
//! renaming also means a reader never sees a half-written file under the final
//! name, even if the machine dies mid-write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where an atomic write failed: the path concerned, what was being done, and
/// the error.
pub(crate) type AtomicWriteError = (PathBuf, &'static str, io::Error);

/// Writes `bytes` to `dir/tmp_name`, syncs it, renames it to `dir/name` and
/// syncs `dir`. On failure the temporary file is removed (best effort).
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    tmp_name: &str,
    bytes: &[u8],
) -> Result<(), AtomicWriteError> {
    let tmp = dir.join(tmp_name);
    let target = dir.join(name);
    let result = write_and_rename(&tmp, &target, bytes);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(dir)
}

fn fail(path: &Path, context: &'static str) -> impl FnOnce(io::Error) -> AtomicWriteError {
    let path = path.to_owned();
    move |source| (path, context, source)
}

fn write_and_rename(tmp: &Path, target: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(fail(tmp, "cannot create"))?;
    file.write_all(bytes).map_err(fail(tmp, "cannot write"))?;
    file.sync_all().map_err(fail(tmp, "cannot fsync"))?;
    drop(file);
    fs::rename(tmp, target).map_err(fail(target, "cannot rename the temporary file to"))
}

/// `fsync`s a directory so that entries created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AtomicWriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| (dir.to_owned(), "cannot fsync directory", source))
}
