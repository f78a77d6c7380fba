//! SHA-256 digests of a unit's CRIU image files.
//!
//! CRIU image files start with a magic number but carry no checksum of their
//! content: a flipped bit in a pages image would restore silently as a
//! corrupted heap. The images sit on disk across
//! a kexec (and sometimes a crash), so they are hashed right after the dump
//! and verified before the restore, when falling back to a cold start is
//! still clean. Files are listed sorted by name so the manifest is
//! reproducible; the images directory is flat, so anything but a regular file
//! in it is an error rather than something to skip silently.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ImageDigest;

/// Why image digests could not be computed or do not match.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// An expected image file does not exist.
    #[error("image {} is missing", .path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// An image file has another size than recorded.
    #[error("image {} has {actual} bytes, {expected} recorded", .path.display())]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Size in the manifest.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// An image file's content differs from what was recorded.
    #[error("image {} is corrupt: sha256 {actual}, {expected} recorded", .path.display())]
    ShaMismatch {
        /// The file.
        path: PathBuf,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the content.
        actual: String,
    },
    /// Something other than a regular file is in the images directory.
    #[error("{} in an images directory is not a regular file", .path.display())]
    NotRegularFile {
        /// The entry.
        path: PathBuf,
    },
    /// A file name is not UTF-8 and cannot be recorded.
    #[error("image file name {} is not UTF-8", .path.display())]
    NonUtf8Name {
        /// The entry.
        path: PathBuf,
    },
    /// Listing or reading failed.
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

fn io_err(path: &Path, context: &'static str) -> impl FnOnce(io::Error) -> DigestError {
    let path = path.to_owned();
    move |source| DigestError::Io {
        path,
        context,
        source,
    }
}

/// Digests of every file in `images_dir`, sorted by name.
pub fn compute_digests(images_dir: &Path) -> Result<Vec<ImageDigest>, DigestError> {
    let mut digests = Vec::new();
    for entry in fs::read_dir(images_dir).map_err(io_err(images_dir, "cannot list"))? {
        let entry = entry.map_err(io_err(images_dir, "cannot list"))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_err(&path, "cannot stat"))?;
        if !file_type.is_file() {
            return Err(DigestError::NotRegularFile { path });
        }
        let Ok(name) = entry.file_name().into_string() else {
            return Err(DigestError::NonUtf8Name { path });
        };
        let (size, sha256) = hash_file(&path)?;
        digests.push(ImageDigest { name, size, sha256 });
    }
    digests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(digests)
}

/// Checks that every file in `expected` exists in `images_dir` with the
/// recorded size and SHA-256. Files not listed (such as CRIU's logs) are
/// ignored.
pub fn verify_digests(images_dir: &Path, expected: &[ImageDigest]) -> Result<(), DigestError> {
    for image in expected {
        let path = images_dir.join(&image.name);
        let metadata = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DigestError::Missing { path });
            }
            Err(e) => return Err(io_err(&path, "cannot stat")(e)),
        };
        if !metadata.is_file() {
            return Err(DigestError::NotRegularFile { path });
        }
        if metadata.len() != image.size {
            return Err(DigestError::SizeMismatch {
                path,
                expected: image.size,
                actual: metadata.len(),
            });
        }
        let (size, sha256) = hash_file(&path)?;
        if size != image.size {
            return Err(DigestError::SizeMismatch {
                path,
                expected: image.size,
                actual: size,
            });
        }
        if sha256 != image.sha256 {
            return Err(DigestError::ShaMismatch {
                path,
                expected: image.sha256.clone(),
                actual: sha256,
            });
        }
    }
    Ok(())
}

/// Size and lowercase hex SHA-256 of a file's content.
fn hash_file(path: &Path) -> Result<(u64, String), DigestError> {
    let mut file = File::open(path).map_err(io_err(path, "cannot open"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path, "cannot read")(e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, to_hex(&hasher.finalize())))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}
