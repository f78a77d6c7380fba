//! CRIU's own image files, as far as this product reads them: the process
//! tree a dump saved (`pstree.img`).
//!
//! # Why
//!
//! The next boot must keep free every pid and thread id CRIU will restore.
//! The plan's inventory is taken seconds before the dump, so a thread started
//! in between would be missed and one that ended would be reserved for
//! nothing. The process tree CRIU wrote is exactly what it will restore, so
//! the snapshot takes its pids and thread ids from there.
//!
//! # Format (CRIU 4.1.1; facts from `criu/include/magic.h`,
//! `criu/protobuf.c`, `images/pstree.proto`, no code copied)
//!
//! * A file starts with two little-endian `u32`s: the common magic
//!   `0x54564319` and the image's own magic, `0x50273030` for the process
//!   tree.
//! * Then entries, each a little-endian `u32` length followed by that many
//!   bytes of one protobuf message, until the end of the file.
//! * A process-tree entry has `pid` (1), `ppid` (2), `pgid` (3), `sid` (4),
//!   all required `uint32`, and `threads` (5), a repeated `uint32` listing
//!   every thread id of the process, its main thread included. Pids are as
//!   seen in the dumped tree's pid namespace (ours: the host's).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use prost::Message;

/// Magic that starts every CRIU image except the inventory and service files.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// Magic of the process-tree image.
pub const PSTREE_MAGIC: u32 = 0x5027_3030;
/// File name of the process-tree image in an images directory.
pub const PSTREE_IMAGE: &str = "pstree.img";
/// Largest entry accepted: a process with a million threads is far below it.
const MAX_ENTRY_LEN: usize = 8 << 20;

/// One `pstree_entry` message, declared by hand (five fields).
#[derive(Clone, PartialEq, Message)]
struct PstreeEntry {
    #[prost(uint32, required, tag = "1")]
    pid: u32,
    #[prost(uint32, required, tag = "2")]
    ppid: u32,
    #[prost(uint32, required, tag = "3")]
    pgid: u32,
    #[prost(uint32, required, tag = "4")]
    sid: u32,
    #[prost(uint32, repeated, packed = "false", tag = "5")]
    threads: Vec<u32>,
}

/// One process of a saved tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedProcess {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid (0 for the tree's root).
    pub ppid: i32,
    /// Every thread id, the main thread (= `pid`) included.
    pub threads: Vec<i32>,
}

/// A process tree as CRIU saved it, root first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedProcessTree {
    /// The processes, in the image's order (CRIU writes the root first).
    pub processes: Vec<SavedProcess>,
}

impl SavedProcessTree {
    /// The root process's pid.
    pub fn root_pid(&self) -> i32 {
        self.processes.first().map_or(0, |p| p.pid)
    }

    /// Every pid, sorted.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.processes.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Those of `pids` that are not in the tree, in their order.
    pub fn unsaved(&self, pids: &[i32]) -> Vec<i32> {
        let saved = self.pids();
        pids.iter()
            .copied()
            .filter(|pid| saved.binary_search(pid).is_err())
            .collect()
    }

    /// Every thread id that is not also a pid, sorted.
    pub fn thread_ids(&self) -> Vec<i32> {
        let pids = self.pids();
        let mut threads: Vec<i32> = self
            .processes
            .iter()
            .flat_map(|p| p.threads.iter().copied())
            .filter(|t| pids.binary_search(t).is_err())
            .collect();
        threads.sort_unstable();
        threads.dedup();
        threads
    }
}

/// Why a process-tree image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image file could not be read.
    #[error("{}: cannot read", .path.display())]
    Io {
        /// The image file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the expected magic numbers.
    #[error("not a CRIU process-tree image (magic {found:#010x} {found_image:#010x})")]
    BadMagic {
        /// The first magic found.
        found: u32,
        /// The second magic found.
        found_image: u32,
    },
    /// The file ends inside an entry.
    #[error("process-tree image is cut short at byte {offset}")]
    Truncated {
        /// Where the missing bytes start.
        offset: usize,
    },
    /// An entry claims an implausible length.
    #[error("process-tree image entry at byte {offset} claims {len} bytes")]
    EntryTooLong {
        /// Where the entry starts.
        offset: usize,
        /// The length it claims.
        len: usize,
    },
    /// An entry is not a valid `pstree_entry` message.
    #[error("process-tree image entry {index} is not a valid message")]
    Decode {
        /// 0-based index of the entry.
        index: usize,
        /// Why.
        #[source]
        source: prost::DecodeError,
    },
    /// A pid or thread id does not fit a positive `i32`.
    #[error("process-tree image entry {index} has an invalid id {id}")]
    BadId {
        /// 0-based index of the entry.
        index: usize,
        /// The id.
        id: u32,
    },
    /// The image holds no process.
    #[error("process-tree image holds no process")]
    Empty,
}

/// Reads `pstree.img` of an images directory.
pub fn read_process_tree(images_dir: &Path) -> Result<SavedProcessTree, ImageError> {
    let path = images_dir.join(PSTREE_IMAGE);
    let bytes = fs::read(&path).map_err(|source| ImageError::Io { path, source })?;
    parse_process_tree(&bytes)
}

fn read_u32(bytes: &[u8], offset: usize) -> Result<u32, ImageError> {
    bytes
        .get(offset..offset + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(ImageError::Truncated { offset })
}

/// Parses the bytes of a process-tree image.
pub fn parse_process_tree(bytes: &[u8]) -> Result<SavedProcessTree, ImageError> {
    let found = read_u32(bytes, 0)?;
    let found_image = read_u32(bytes, 4)?;
    if found != IMG_COMMON_MAGIC || found_image != PSTREE_MAGIC {
        return Err(ImageError::BadMagic { found, found_image });
    }
    let mut offset = 8;
    let mut processes = Vec::new();
    while offset < bytes.len() {
        let len = read_u32(bytes, offset)? as usize;
        if len > MAX_ENTRY_LEN {
            return Err(ImageError::EntryTooLong { offset, len });
        }
        let start = offset + 4;
        let body = bytes.get(start..start + len).ok_or(ImageError::Truncated {
            offset: bytes.len(),
        })?;
        let index = processes.len();
        let entry =
            PstreeEntry::decode(body).map_err(|source| ImageError::Decode { index, source })?;
        let id = |id: u32| {
            i32::try_from(id)
                .ok()
                .filter(|&i| i > 0)
                .ok_or(ImageError::BadId { index, id })
        };
        let ppid = i32::try_from(entry.ppid).map_err(|_| ImageError::BadId {
            index,
            id: entry.ppid,
        })?;
        processes.push(SavedProcess {
            pid: id(entry.pid)?,
            ppid,
            threads: entry
                .threads
                .iter()
                .map(|&t| id(t))
                .collect::<Result<_, _>>()?,
        });
        offset = start + len;
    }
    if processes.is_empty() {
        return Err(ImageError::Empty);
    }
    Ok(SavedProcessTree { processes })
}

/// Writes a process-tree image as CRIU would: for tests of everything that
/// reads one.
#[cfg(test)]
pub(crate) fn encode_process_tree(processes: &[SavedProcess]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
    bytes.extend_from_slice(&PSTREE_MAGIC.to_le_bytes());
    for p in processes {
        let entry = PstreeEntry {
            pid: p.pid as u32,
            ppid: p.ppid as u32,
            pgid: p.pid as u32,
            sid: p.pid as u32,
            threads: p.threads.iter().map(|&t| t as u32).collect(),
        };
        let body = entry.encode_to_vec();
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32, ppid: i32, threads: &[i32]) -> SavedProcess {
        SavedProcess {
            pid,
            ppid,
            threads: threads.to_vec(),
        }
    }

    fn sample() -> Vec<SavedProcess> {
        vec![process(562, 0, &[562, 570, 571]), process(580, 562, &[580])]
    }

    #[test]
    fn a_written_tree_reads_back_with_pids_and_other_threads() {
        let tree = parse_process_tree(&encode_process_tree(&sample())).expect("parses");
        assert_eq!(tree.processes, sample());
        assert_eq!(tree.root_pid(), 562);
        assert_eq!(tree.pids(), vec![562, 580]);
        assert_eq!(tree.thread_ids(), vec![570, 571]);
        assert_eq!(tree.unsaved(&[580, 599, 562, 570]), vec![599, 570]);
        assert!(tree.unsaved(&[562, 580]).is_empty());
    }

    #[test]
    fn bytes_as_criu_writes_them_parse() {
        // Hand-assembled: magics, then one entry of 12 bytes:
        // pid=5 ppid=1 pgid=5 sid=5 threads=[5, 7] (unpacked, as proto2 does).
        let mut bytes = vec![0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50, 12, 0, 0, 0];
        bytes.extend_from_slice(&[0x08, 5, 0x10, 1, 0x18, 5, 0x20, 5, 0x28, 5, 0x28, 7]);
        let tree = parse_process_tree(&bytes).expect("parses");
        assert_eq!(tree.processes, vec![process(5, 1, &[5, 7])]);
        assert_eq!(tree.thread_ids(), vec![7]);
    }

    #[test]
    fn packed_threads_parse_too() {
        let mut body = vec![0x08, 5, 0x10, 1, 0x18, 5, 0x20, 5];
        body.extend_from_slice(&[0x2a, 2, 5, 9]);
        let mut bytes = encode_process_tree(&[]);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
        let tree = parse_process_tree(&bytes).expect("parses");
        assert_eq!(tree.processes, vec![process(5, 1, &[5, 9])]);
    }

    #[test]
    fn another_image_is_refused_by_its_magic() {
        let mut bytes = encode_process_tree(&sample());
        bytes[4..8].copy_from_slice(&0x5505_3847u32.to_le_bytes());
        assert!(matches!(
            parse_process_tree(&bytes),
            Err(ImageError::BadMagic {
                found_image: 0x5505_3847,
                ..
            })
        ));
        assert!(matches!(
            parse_process_tree(&[0x19, 0x43]),
            Err(ImageError::Truncated { offset: 0 })
        ));
    }

    #[test]
    fn a_cut_image_is_refused_wherever_it_is_cut() {
        let bytes = encode_process_tree(&sample());
        for end in 0..bytes.len() {
            if end == 8 {
                // Just the magics: a tree with no process.
                assert!(matches!(
                    parse_process_tree(&bytes[..end]),
                    Err(ImageError::Empty)
                ));
                continue;
            }
            let cut = parse_process_tree(&bytes[..end]);
            let first_entry_end = 8 + 4 + bytes[8] as usize;
            if end == first_entry_end {
                // Cut exactly after the first entry: a valid, smaller tree.
                assert_eq!(cut.expect("one entry").processes.len(), 1);
            } else {
                assert!(
                    matches!(
                        cut,
                        Err(ImageError::Truncated { .. } | ImageError::Decode { .. })
                    ),
                    "cut at {end}: {cut:?}"
                );
            }
        }
    }

    #[test]
    fn implausible_lengths_and_ids_are_refused() {
        let mut bytes = encode_process_tree(&[]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_process_tree(&bytes),
            Err(ImageError::EntryTooLong { offset: 8, .. })
        ));
        for bad in [process(0, 1, &[0]), process(5, 1, &[5, -3])] {
            assert!(matches!(
                parse_process_tree(&encode_process_tree(&[bad])),
                Err(ImageError::BadId { index: 0, .. })
            ));
        }
    }

    #[test]
    fn a_missing_image_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_process_tree(dir.path()).expect_err("no image");
        assert!(err.to_string().contains("pstree.img"), "{err}");
        fs::write(
            dir.path().join(PSTREE_IMAGE),
            encode_process_tree(&sample()),
        )
        .expect("write");
        assert_eq!(
            read_process_tree(dir.path()).expect("reads").pids(),
            vec![562, 580]
        );
    }
}
