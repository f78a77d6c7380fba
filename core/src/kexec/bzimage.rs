//! Validating an x86 bzImage before anything is frozen.
//!
//! `kexec_file_load` would reject a file that is not a bzImage64, but only
//! after the services have been checkpointed; worse, it does not notice a
//! kernel whose compressed payload was cut short (a full `/boot` during a
//! package install), which would load fine and then fail to decompress in
//! the next boot, with the services' only copy frozen on disk. So the setup
//! header is checked here first, with the same tests as the kernel's
//! `bzImage64_probe` plus a length check, and the release string is read
//! from it to find the matching initrd.
//!
//! # Facts relied on
//! From `Documentation/arch/x86/boot.rst`, `arch/x86/include/uapi/asm/bootparam.h`,
//! `arch/x86/kernel/kexec-bzimage64.c` (`bzImage64_probe`, `bzImage64_load`),
//! `arch/x86/boot/header.S` and `arch/x86/boot/tools/build.c`; all fields
//! are little-endian:
//!
//! | offset | size | field | use here |
//! |---|---|---|---|
//! | 0x1F1 | 1 | `setup_sects` | setup area is `(setup_sects or 4, if 0) + 1` sectors of 512 bytes |
//! | 0x1F4 | 4 | `syssize` | protected-mode code in 16-byte paragraphs (2.04+) |
//! | 0x1FE | 2 | `boot_flag` | must be 0xAA55 |
//! | 0x202 | 4 | `header` | must be `"HdrS"` |
//! | 0x206 | 2 | `version` | `(major << 8) + minor`; the kexec loader needs ≥ 0x020C |
//! | 0x20E | 2 | `kernel_version` | version string at this value + 0x200, below `0x200 * setup_sects` |
//! | 0x211 | 1 | `loadflags` | bit 0 `LOADED_HIGH` must be set (else a zImage) |
//! | 0x236 | 2 | `xloadflags` | bit 0 `XLF_KERNEL_64`, bit 1 `XLF_CAN_BE_LOADED_ABOVE_4G` required; bit 5 `XLF_5LEVEL` |
//! | 0x238 | 4 | `cmdline_size` | max command line length (2.06+); `COMMAND_LINE_SIZE - 1` = 2047 on x86 |
//!
//! `bzImage64_probe` refuses files shorter than two sectors, without
//! "HdrS", without 0xAA55, with protocol < 2.12, without `LOADED_HIGH`,
//! without `XLF_KERNEL_64` or `XLF_CAN_BE_LOADED_ABOVE_4G`, and (when the
//! running kernel uses 5-level paging) without `XLF_5LEVEL`; that last test
//! depends on the running machine and is left to the kernel (it answers
//! `ENOEXEC`), but the flag is reported. `bzImage64_load` refuses a file
//! shorter than the setup area. `build.c` writes exactly
//! `(setup_sects + 1) * 512 + syssize * 16` bytes (the CRC included);
//! signed images carry their signature after that, so a shorter file is
//! truncated.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::boot_file::{BootFileError, BootFileKind, OwnerPolicy, open_boot_file};

const OFF_SETUP_SECTS: usize = 0x1F1;
const OFF_SYSSIZE: usize = 0x1F4;
const OFF_BOOT_FLAG: usize = 0x1FE;
const OFF_HEADER: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_KERNEL_VERSION: usize = 0x20E;
const OFF_LOADFLAGS: usize = 0x211;
const OFF_XLOADFLAGS: usize = 0x236;
const OFF_CMDLINE_SIZE: usize = 0x238;
/// First byte after the fields read here.
const HEADER_END: usize = OFF_CMDLINE_SIZE + 4;

const BOOT_FLAG: u16 = 0xAA55;
const HDRS: &[u8; 4] = b"HdrS";
/// Lowest boot protocol `bzImage64_probe` accepts (2.12).
pub const MIN_PROTOCOL: u16 = 0x020C;
const LOADED_HIGH: u8 = 1 << 0;
const XLF_KERNEL_64: u16 = 1 << 0;
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
const XLF_5LEVEL: u16 = 1 << 5;
const SECTOR: usize = 512;

/// The largest setup area a header can describe: `setup_sects` is one
/// byte, so at most 255 + 1 sectors. Reading this much covers the version
/// string, which lies inside the setup area.
pub const MAX_SETUP_BYTES: usize = 256 * SECTOR;

/// Smallest kernel file accepted: 512 KiB. Not a kernel rule (the probe
/// needs only two sectors) but a sanity floor that catches placeholder and
/// badly truncated files with a plain message; real x86-64 distribution
/// kernels are 8–16 MiB, and even a minimal 64-bit relocatable kernel is
/// well above this.
pub const MIN_KERNEL_FILE_SIZE: u64 = 512 * 1024;

/// What the setup header says about a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BzImageInfo {
    /// Boot protocol version (major, minor), e.g. (2, 15).
    pub protocol_version: (u8, u8),
    /// The kernel release, the first word of the version string, e.g.
    /// `6.12.57+deb13-amd64`; the same text `uname -r` will print.
    pub release: String,
    /// The whole version string (release, builder, build number, date).
    pub version_string: String,
    /// `XLF_KERNEL_64`: has the 64-bit entry point `kexec_file_load` uses.
    pub supports_64bit_entry: bool,
    /// `XLF_CAN_BE_LOADED_ABOVE_4G`.
    pub can_load_above_4g: bool,
    /// `XLF_5LEVEL`: can be entered with 5-level paging enabled.
    pub supports_5level_paging: bool,
    /// Maximum command line length the kernel accepts (without the NUL).
    pub cmdline_size: u32,
    /// Effective number of setup sectors (0 in the header means 4).
    pub setup_sects: u8,
    /// `syssize`: protected-mode code size in 16-byte paragraphs.
    pub syssize: u32,
}

impl BzImageInfo {
    /// Size of the real-mode part: boot sector plus setup sectors.
    pub fn setup_bytes(&self) -> u64 {
        (u64::from(self.setup_sects) + 1) * SECTOR as u64
    }

    /// The file size `build.c` produces for this header; a file shorter
    /// than this is truncated (a signed image is longer).
    pub fn expected_min_file_size(&self) -> u64 {
        self.setup_bytes() + u64::from(self.syssize) * 16
    }

    /// Longest command line (in bytes, without the NUL) that this kernel's
    /// `kexec_file_load` loader accepts; see
    /// [`super::cmdline::max_cmdline_len`].
    pub fn max_cmdline_len(&self) -> usize {
        super::cmdline::max_cmdline_len(self.cmdline_size)
    }
}

/// Why a buffer is not a bootable x86-64 bzImage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BzImageError {
    /// Too short to hold a setup header.
    #[error("too short to be a bzImage ({len} bytes)")]
    TooShort { len: usize },
    /// No 0xAA55 boot flag at 0x1FE: not an x86 boot image.
    #[error("no x86 boot sector (boot flag at 0x1FE is {found:#06x}, expected 0xaa55)")]
    NoBootFlag { found: u16 },
    /// No "HdrS" signature at 0x202: not a Linux bzImage.
    #[error("not a Linux bzImage (no \"HdrS\" signature at 0x202)")]
    NoHdrS,
    /// The boot protocol is older than kexec_file_load's bzImage64 loader
    /// accepts.
    #[error("boot protocol {major}.{minor:02} is too old: kexec_file_load needs at least 2.12")]
    ProtocolTooOld { major: u8, minor: u8 },
    /// `LOADED_HIGH` is clear: a zImage, not a bzImage.
    #[error("a zImage, not a bzImage (LOADED_HIGH is not set)")]
    NotLoadedHigh,
    /// `XLF_KERNEL_64` is clear: no 64-bit entry point.
    #[error("not a 64-bit kernel (XLF_KERNEL_64 is not set)")]
    Not64Bit,
    /// `XLF_CAN_BE_LOADED_ABOVE_4G` is clear (not relocatable above 4 GiB).
    #[error("cannot be loaded above 4 GiB (XLF_CAN_BE_LOADED_ABOVE_4G is not set)")]
    NotLoadableAbove4G,
    /// The header has no kernel version string pointer.
    #[error("the header has no kernel version string")]
    NoVersionString,
    /// The version string pointer leads outside the setup area, or the
    /// string is not NUL-terminated inside it.
    #[error("the kernel version string at {offset:#x} is outside the setup area or unterminated")]
    BadVersionString { offset: usize },
    /// The release (first word of the version string) is empty or has
    /// characters that cannot appear in a release / file name.
    #[error("the kernel release {release:?} is not a valid release name")]
    BadRelease { release: String },
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// A release is used to build file names (`initrd.img-<release>`), so it
/// must be a plain name: ASCII letters, digits and `.+-_~`, not starting
/// with a dot.
pub(crate) fn is_valid_release(release: &str) -> bool {
    !release.is_empty()
        && release.len() <= 256
        && !release.starts_with('.')
        && release
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".+-_~".contains(&c))
}

/// Parses and validates the setup header at the start of a bzImage.
///
/// `bytes` is a prefix of the file; it must cover the header and the
/// version string (the first [`MAX_SETUP_BYTES`] bytes always do).
pub fn parse_bzimage_header(bytes: &[u8]) -> Result<BzImageInfo, BzImageError> {
    // bzImage64_probe: "kernel should be at least two sectors long".
    if bytes.len() < 2 * SECTOR || bytes.len() < HEADER_END {
        return Err(BzImageError::TooShort { len: bytes.len() });
    }
    if &bytes[OFF_HEADER..OFF_HEADER + 4] != HDRS {
        return Err(BzImageError::NoHdrS);
    }
    let boot_flag = u16_at(bytes, OFF_BOOT_FLAG);
    if boot_flag != BOOT_FLAG {
        return Err(BzImageError::NoBootFlag { found: boot_flag });
    }
    let version = u16_at(bytes, OFF_VERSION);
    let [major, minor] = version.to_be_bytes();
    if version < MIN_PROTOCOL {
        return Err(BzImageError::ProtocolTooOld { major, minor });
    }
    if bytes[OFF_LOADFLAGS] & LOADED_HIGH == 0 {
        return Err(BzImageError::NotLoadedHigh);
    }
    let xloadflags = u16_at(bytes, OFF_XLOADFLAGS);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BzImageError::Not64Bit);
    }
    if xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G == 0 {
        return Err(BzImageError::NotLoadableAbove4G);
    }
    let setup_sects = match bytes[OFF_SETUP_SECTS] {
        0 => 4,
        n => n,
    };

    let kv = usize::from(u16_at(bytes, OFF_KERNEL_VERSION));
    if kv == 0 {
        return Err(BzImageError::NoVersionString);
    }
    let offset = kv + 0x200;
    // boot.rst: the pointer "should be less than (0x200*setup_sects)", i.e.
    // the string lies inside the setup area.
    let setup_end = (usize::from(setup_sects) + 1) * SECTOR;
    let limit = setup_end.min(bytes.len());
    if kv >= usize::from(setup_sects) * SECTOR || offset >= limit {
        return Err(BzImageError::BadVersionString { offset });
    }
    let tail = &bytes[offset..limit];
    let nul = tail
        .iter()
        .position(|&c| c == 0)
        .ok_or(BzImageError::BadVersionString { offset })?;
    let version_string = String::from_utf8_lossy(&tail[..nul]).into_owned();
    let release = version_string
        .split_ascii_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    if !is_valid_release(&release) {
        return Err(BzImageError::BadRelease { release });
    }

    Ok(BzImageInfo {
        protocol_version: (major, minor),
        release,
        version_string,
        supports_64bit_entry: true,
        can_load_above_4g: true,
        supports_5level_paging: xloadflags & XLF_5LEVEL != 0,
        cmdline_size: u32_at(bytes, OFF_CMDLINE_SIZE),
        setup_sects,
        syssize: u32_at(bytes, OFF_SYSSIZE),
    })
}

/// Why a kernel file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KernelFileError {
    /// The file failed the ownership, permission, type or size checks.
    #[error(transparent)]
    File(#[from] BootFileError),
    /// The file is not a bzImage that `kexec_file_load` can load.
    #[error("kernel {path} is not a bootable x86-64 bzImage: {source}")]
    NotBzImage {
        path: PathBuf,
        #[source]
        source: BzImageError,
    },
    /// The file is shorter than its header says: a truncated copy.
    #[error(
        "kernel {path} is truncated: {size} bytes, but its header describes at least {expected}"
    )]
    Truncated {
        path: PathBuf,
        size: u64,
        expected: u64,
    },
}

/// A vetted kernel file, kept open so that what was checked is exactly
/// what gets loaded.
#[derive(Debug)]
pub struct KernelImage {
    fd: OwnedFd,
    path: PathBuf,
    resolved_path: PathBuf,
    size: u64,
    info: BzImageInfo,
}

impl KernelImage {
    /// The open kernel file, to pass to `kexec_file_load`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The path the caller gave.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file actually opened (symlinks resolved).
    pub fn resolved_path(&self) -> &Path {
        &self.resolved_path
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What the setup header says.
    pub fn info(&self) -> &BzImageInfo {
        &self.info
    }

    /// The kernel release from the header.
    pub fn release(&self) -> &str {
        &self.info.release
    }
}

/// Opens and vets a kernel file: a regular file owned by root, not
/// writable by group or others, at least [`MIN_KERNEL_FILE_SIZE`] bytes,
/// whose header passes [`parse_bzimage_header`] and which is not shorter
/// than its header describes.
pub fn check_kernel_file(path: &Path) -> Result<KernelImage, KernelFileError> {
    check_kernel_file_with(path, OwnerPolicy::ROOT)
}

/// [`check_kernel_file`] with an explicit owner; production code uses
/// [`OwnerPolicy::ROOT`].
pub fn check_kernel_file_with(
    path: &Path,
    owner: OwnerPolicy,
) -> Result<KernelImage, KernelFileError> {
    check_kernel_file_inner(path, owner, MIN_KERNEL_FILE_SIZE)
}

pub(crate) fn check_kernel_file_inner(
    path: &Path,
    owner: OwnerPolicy,
    min_size: u64,
) -> Result<KernelImage, KernelFileError> {
    let opened = open_boot_file(path, BootFileKind::Kernel, owner, min_size)?;
    let want = usize::try_from(opened.size)
        .unwrap_or(usize::MAX)
        .min(MAX_SETUP_BYTES);
    let mut buf = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match opened.file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(BootFileError::Read {
                    kind: BootFileKind::Kernel,
                    path: path.to_owned(),
                    source,
                }
                .into());
            }
        }
    }
    buf.truncate(filled);
    let info = parse_bzimage_header(&buf).map_err(|source| KernelFileError::NotBzImage {
        path: path.to_owned(),
        source,
    })?;
    let expected = info.expected_min_file_size();
    if opened.size < expected {
        return Err(KernelFileError::Truncated {
            path: path.to_owned(),
            size: opened.size,
            expected,
        });
    }
    let size = opened.size;
    let resolved_path = opened.resolved_path.clone();
    Ok(KernelImage {
        fd: opened.into_fd(),
        path: path.to_owned(),
        resolved_path,
        size,
        info,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::boot_file::tests::{me, my_uid, write_file};
    use super::*;

    pub(crate) const TEST_VERSION: &str =
        "6.12.57+deb13-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian";

    /// Builds a synthetic header as a Debian 6.12 kernel has it: protocol
    /// 2.15, setup_sects 39, xloadflags 0x7f, cmdline_size 2047; the
    /// version string at 0x4300 + 0x200.
    pub(crate) fn synthetic_header(version: &str) -> Vec<u8> {
        let setup_sects: u8 = 39;
        let mut b = vec![0u8; (usize::from(setup_sects) + 1) * SECTOR];
        b[OFF_SETUP_SECTS] = setup_sects;
        b[OFF_BOOT_FLAG..OFF_BOOT_FLAG + 2].copy_from_slice(&0xAA55u16.to_le_bytes());
        b[OFF_HEADER..OFF_HEADER + 4].copy_from_slice(b"HdrS");
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&0x020Fu16.to_le_bytes());
        b[OFF_KERNEL_VERSION..OFF_KERNEL_VERSION + 2].copy_from_slice(&0x4300u16.to_le_bytes());
        b[OFF_LOADFLAGS] = 0x01;
        b[OFF_XLOADFLAGS..OFF_XLOADFLAGS + 2].copy_from_slice(&0x007Fu16.to_le_bytes());
        b[OFF_CMDLINE_SIZE..OFF_CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        let off = 0x4300 + 0x200;
        b[off..off + version.len()].copy_from_slice(version.as_bytes());
        b[off + version.len()] = 0;
        b
    }

    /// A whole synthetic kernel file: header plus `syssize` paragraphs.
    pub(crate) fn synthetic_kernel(version: &str, payload: usize) -> Vec<u8> {
        let mut b = synthetic_header(version);
        let syssize = u32::try_from(payload / 16).expect("small payload");
        b[OFF_SYSSIZE..OFF_SYSSIZE + 4].copy_from_slice(&syssize.to_le_bytes());
        b.resize(b.len() + payload, 0x90);
        b
    }

    #[test]
    fn parses_synthetic_debian_header() {
        let info = parse_bzimage_header(&synthetic_header(TEST_VERSION)).expect("valid");
        assert_eq!(info.protocol_version, (2, 15));
        assert_eq!(info.release, "6.12.57+deb13-amd64");
        assert_eq!(info.version_string, TEST_VERSION);
        assert!(info.supports_64bit_entry);
        assert!(info.can_load_above_4g);
        assert!(info.supports_5level_paging);
        assert_eq!(info.cmdline_size, 2047);
        assert_eq!(info.setup_sects, 39);
        assert_eq!(info.setup_bytes(), 40 * 512);
        assert_eq!(info.max_cmdline_len(), 2016);
    }

    fn mutate(f: impl FnOnce(&mut Vec<u8>)) -> Result<BzImageInfo, BzImageError> {
        let mut b = synthetic_header(TEST_VERSION);
        f(&mut b);
        parse_bzimage_header(&b)
    }

    #[test]
    fn rejects_short_buffer() {
        assert_eq!(
            parse_bzimage_header(&[0u8; 1023]),
            Err(BzImageError::TooShort { len: 1023 })
        );
    }

    #[test]
    fn rejects_missing_hdrs() {
        assert_eq!(mutate(|b| b[OFF_HEADER] = b'X'), Err(BzImageError::NoHdrS));
    }

    #[test]
    fn rejects_missing_boot_flag() {
        assert_eq!(
            mutate(|b| b[OFF_BOOT_FLAG] = 0),
            Err(BzImageError::NoBootFlag { found: 0xAA00 })
        );
    }

    #[test]
    fn rejects_old_protocol_and_accepts_2_12() {
        assert_eq!(
            mutate(|b| b[OFF_VERSION] = 0x0B),
            Err(BzImageError::ProtocolTooOld {
                major: 2,
                minor: 11
            })
        );
        let info = mutate(|b| b[OFF_VERSION] = 0x0C).expect("2.12 is enough");
        assert_eq!(info.protocol_version, (2, 12));
    }

    #[test]
    fn rejects_zimage() {
        assert_eq!(
            mutate(|b| b[OFF_LOADFLAGS] = 0),
            Err(BzImageError::NotLoadedHigh)
        );
    }

    #[test]
    fn rejects_missing_xloadflags() {
        assert_eq!(
            mutate(|b| b[OFF_XLOADFLAGS] = 0x7E),
            Err(BzImageError::Not64Bit)
        );
        assert_eq!(
            mutate(|b| b[OFF_XLOADFLAGS] = 0x7D),
            Err(BzImageError::NotLoadableAbove4G)
        );
        let info = mutate(|b| b[OFF_XLOADFLAGS] = 0x03).expect("minimal flags");
        assert!(!info.supports_5level_paging);
    }

    #[test]
    fn setup_sects_zero_means_four() {
        // With 4 setup sectors the version string must lie below 4 * 0x200.
        let info = mutate(|b| {
            b[OFF_SETUP_SECTS] = 0;
            b[OFF_KERNEL_VERSION..OFF_KERNEL_VERSION + 2].copy_from_slice(&0x0100u16.to_le_bytes());
            b[0x300..0x30C].copy_from_slice(b"6.1.0-9 x y\0");
        })
        .expect("valid");
        assert_eq!(info.setup_sects, 4);
        assert_eq!(info.release, "6.1.0-9");
    }

    #[test]
    fn rejects_bad_version_pointer() {
        assert_eq!(
            mutate(|b| b[OFF_KERNEL_VERSION..OFF_KERNEL_VERSION + 2].fill(0)),
            Err(BzImageError::NoVersionString)
        );
        // Pointer beyond the setup area (39 sectors).
        let err = mutate(|b| {
            b[OFF_KERNEL_VERSION..OFF_KERNEL_VERSION + 2]
                .copy_from_slice(&(39u16 * 512).to_le_bytes())
        });
        assert!(matches!(err, Err(BzImageError::BadVersionString { .. })));
        // Unterminated string running to the end of the buffer.
        let err = mutate(|b| {
            let off = 0x4300 + 0x200;
            let len = b.len();
            b[off..len].fill(b'a');
        });
        assert!(matches!(err, Err(BzImageError::BadVersionString { .. })));
    }

    #[test]
    fn rejects_bad_release() {
        // Leading blanks are skipped: the release is the first word.
        let b = synthetic_header(" 6.1.0-9-amd64 (builder) #1");
        assert_eq!(
            parse_bzimage_header(&b).expect("valid").release,
            "6.1.0-9-amd64"
        );
        assert_eq!(
            parse_bzimage_header(&synthetic_header("")),
            Err(BzImageError::BadRelease {
                release: String::new()
            })
        );
        assert_eq!(
            parse_bzimage_header(&synthetic_header("../../etc/x (evil)")),
            Err(BzImageError::BadRelease {
                release: "../../etc/x".into()
            })
        );
    }

    #[test]
    fn release_name_rules() {
        assert!(is_valid_release("6.12.57+deb13-amd64"));
        assert!(is_valid_release("6.8.0-45-generic"));
        assert!(is_valid_release("6.11.4-301.fc41.x86_64"));
        assert!(!is_valid_release(""));
        assert!(!is_valid_release(".hidden"));
        assert!(!is_valid_release("a/b"));
        assert!(!is_valid_release("a b"));
    }

    fn small_kernel_check(path: &Path) -> Result<KernelImage, KernelFileError> {
        check_kernel_file_inner(path, me(), 0)
    }

    #[test]
    fn checks_a_synthetic_kernel_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = synthetic_kernel(TEST_VERSION, 4096);
        let path = write_file(dir.path(), "vmlinuz-6.12.57+deb13-amd64", &data, 0o644);
        let image = small_kernel_check(&path).expect("valid kernel");
        assert_eq!(image.release(), "6.12.57+deb13-amd64");
        assert_eq!(image.size(), data.len() as u64);
        assert_eq!(image.path(), path);
        // The fd is the checked file.
        let meta = nix::sys::stat::fstat(image.fd()).expect("fstat");
        assert_eq!(meta.st_size as u64, image.size());
    }

    #[test]
    fn signed_image_longer_than_header_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = synthetic_kernel(TEST_VERSION, 4096);
        data.extend_from_slice(&[0xAB; 1472]); // an appended signature
        let path = write_file(dir.path(), "k", &data, 0o600);
        small_kernel_check(&path).expect("valid kernel");
    }

    #[test]
    fn detects_truncated_kernel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = synthetic_kernel(TEST_VERSION, 4096);
        data.truncate(data.len() - 100);
        let path = write_file(dir.path(), "k", &data, 0o644);
        let err = small_kernel_check(&path).expect_err("truncated");
        assert!(matches!(err, KernelFileError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn refuses_non_bzimage_file_with_path_in_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(dir.path(), "notakernel", &[0x7f; 4096], 0o644);
        let err = small_kernel_check(&path).expect_err("not a bzImage");
        assert!(
            matches!(
                err,
                KernelFileError::NotBzImage {
                    source: BzImageError::NoHdrS,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("notakernel"), "{err}");
    }

    #[test]
    fn kernel_file_owner_and_mode_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = synthetic_kernel(TEST_VERSION, 4096);
        let path = write_file(dir.path(), "k", &data, 0o644);
        let other = OwnerPolicy {
            uid: my_uid().wrapping_add(1),
        };
        let err = check_kernel_file_inner(&path, other, 0).expect_err("wrong owner");
        assert!(
            matches!(err, KernelFileError::File(BootFileError::WrongOwner { .. })),
            "{err}"
        );
        let path = write_file(dir.path(), "k2", &data, 0o666);
        let err = small_kernel_check(&path).expect_err("world writable");
        assert!(
            matches!(err, KernelFileError::File(BootFileError::Writable { .. })),
            "{err}"
        );
    }

    #[test]
    fn enforces_minimum_kernel_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = synthetic_kernel(TEST_VERSION, 4096);
        let path = write_file(dir.path(), "k", &data, 0o644);
        let err = check_kernel_file_with(&path, me()).expect_err("below 512 KiB");
        assert!(
            matches!(err, KernelFileError::File(BootFileError::TooSmall { .. })),
            "{err}"
        );
    }

    /// Real kernels: every `/boot/vmlinuz-*` on this machine, plus the file
    /// named by `SEAMLESS_REBOOT_TEST_KERNEL` if set. Nothing to do if there
    /// are none (the synthetic tests above cover the rules).
    #[test]
    fn parses_real_kernels_if_present() {
        let mut paths: Vec<PathBuf> = std::fs::read_dir("/boot")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .collect();
        if let Some(p) = std::env::var_os("SEAMLESS_REBOOT_TEST_KERNEL") {
            paths.push(PathBuf::from(p));
        }
        for path in paths {
            let image = match check_kernel_file_with(&path, OwnerPolicy { uid: 0 }) {
                Ok(image) => image,
                // Distributions may make kernels readable by root only;
                // a non-root test run cannot look at them.
                Err(KernelFileError::File(BootFileError::Open { source, .. }))
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    continue;
                }
                Err(e) => panic!("{}: {e}", path.display()),
            };
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(rel) = name.strip_prefix("vmlinuz-") {
                assert_eq!(image.release(), rel, "{}", path.display());
            }
            assert!(image.info().protocol_version >= (2, 12));
        }
    }
}
