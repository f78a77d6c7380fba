//! The cached guest base image: built once per recipe, verified on every use.
//!
//! An entry lives in `<cache>/base-<recipe hash>/` and is only ever created by
//! renaming a finished build directory into place, after its manifest (the
//! size and SHA-256 of every file) was written and synced. So a build that was
//! killed midway leaves only a `.partial` directory, which the next build
//! removes, and an entry whose files no longer match their manifest (a disk
//! error, a hand edit, a truncated copy) is deleted and rebuilt, never booted.
//! Builds are serialised by a lock file so two test runs cannot race.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::mirror::host_mirror;
use crate::process::run;
use crate::recipe::{CUSTOMIZE_SCRIPT, Recipe};

const MANIFEST: &str = "manifest.json";
const DISK: &str = "base.qcow2";
const SSH_KEY: &str = "lab_key";

/// One kernel of the guest, copied out of its /boot so QEMU can boot it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelFiles {
    /// `uname -r` of this kernel, e.g. `6.12.57+deb13-amd64`.
    pub release: String,
    /// File names inside the entry's directory.
    pub vmlinuz: String,
    pub initrd: String,
}

/// What a finished cache entry contains; written last, checked on every use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheManifest {
    pub recipe_hash: String,
    pub suite: String,
    pub packages: Vec<String>,
    pub built_unix: u64,
    /// The kernel the guest boots first (the suite's own).
    pub kernel_a: KernelFiles,
    /// The update target, a different real kernel.
    pub kernel_b: KernelFiles,
    /// Every file of the entry but the manifest: name -> size and SHA-256.
    pub files: BTreeMap<String, FileDigest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: String,
}

/// A verified base image, ready to boot through an overlay.
#[derive(Debug, Clone)]
pub struct BaseImage {
    pub dir: PathBuf,
    pub manifest: CacheManifest,
}

impl BaseImage {
    /// The qcow2 disk overlays are created on; never written to.
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }
    /// The private key that logs in as root.
    pub fn ssh_key(&self) -> PathBuf {
        self.dir.join(SSH_KEY)
    }
    pub fn kernel_path(&self, kernel: &KernelFiles) -> (PathBuf, PathBuf) {
        (
            self.dir.join(&kernel.vmlinuz),
            self.dir.join(&kernel.initrd),
        )
    }
}

/// Where the cache lives: `SEAMLESS_LAB_CACHE`, else the user's cache dir.
pub fn default_cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("SEAMLESS_LAB_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("seamless-reboot-lab")
}

/// Returns the verified base image for `recipe`, building it when the cache
/// has no entry or the entry fails verification.
pub fn ensure_base_image(cache_root: &Path, recipe: &Recipe) -> Result<BaseImage> {
    fs::create_dir_all(cache_root)
        .with_context(|| format!("cannot create the image cache {}", cache_root.display()))?;
    let lock_path = cache_root.join(".build.lock");
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;

    let hash = recipe.hash();
    let entry = cache_root.join(format!("base-{hash}"));
    if entry.exists() {
        match verify_entry(&entry, &hash) {
            Ok(manifest) => {
                return Ok(BaseImage {
                    dir: entry,
                    manifest,
                });
            }
            Err(problem) => {
                eprintln!(
                    "lab: cached image {} is not usable ({problem:#}); rebuilding",
                    entry.display()
                );
                fs::remove_dir_all(&entry)
                    .with_context(|| format!("cannot remove {}", entry.display()))?;
            }
        }
    }
    build_entry(cache_root, &entry, recipe)?;
    let manifest = verify_entry(&entry, &hash).context("the image just built does not verify")?;
    Ok(BaseImage {
        dir: entry,
        manifest,
    })
}

/// Checks an entry against its manifest: the manifest parses, names this
/// recipe, and every file has the recorded size and SHA-256.
pub fn verify_entry(entry: &Path, recipe_hash: &str) -> Result<CacheManifest> {
    let manifest_path = entry.join(MANIFEST);
    let text = fs::read_to_string(&manifest_path)
        .with_context(|| format!("no readable manifest {}", manifest_path.display()))?;
    let manifest: CacheManifest = serde_json::from_str(&text)
        .with_context(|| format!("manifest {} does not parse", manifest_path.display()))?;
    if manifest.recipe_hash != recipe_hash {
        bail!(
            "manifest is for recipe {}, expected {recipe_hash}",
            manifest.recipe_hash
        );
    }
    for required in [
        DISK,
        SSH_KEY,
        &manifest.kernel_a.vmlinuz,
        &manifest.kernel_a.initrd,
        &manifest.kernel_b.vmlinuz,
        &manifest.kernel_b.initrd,
    ] {
        if !manifest.files.contains_key(required) {
            bail!("manifest does not list {required}");
        }
    }
    for (name, want) in &manifest.files {
        let got = digest_file(&entry.join(name))?;
        if got.size != want.size {
            bail!(
                "{name}: size {} but the manifest says {}",
                got.size,
                want.size
            );
        }
        if got.sha256 != want.sha256 {
            bail!("{name}: content does not match its SHA-256 in the manifest");
        }
    }
    Ok(manifest)
}

/// Size and SHA-256 of a file.
pub fn digest_file(path: &Path) -> Result<FileDigest> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileDigest { size, sha256 })
}

fn build_entry(cache_root: &Path, entry: &Path, recipe: &Recipe) -> Result<()> {
    let started = Instant::now();
    let partial = entry.with_extension("partial");
    if partial.exists() {
        eprintln!("lab: removing the half-built {}", partial.display());
        fs::remove_dir_all(&partial)
            .with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    fs::create_dir_all(&partial)?;
    let mirror = host_mirror()?;
    eprintln!(
        "lab: building guest image {} ({} from {mirror}); this takes about a minute",
        entry.display(),
        recipe.suite
    );

    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "seamless-lab", "-f"])
            .arg(partial.join(SSH_KEY)),
        Duration::from_secs(30),
    )?
    .ok("ssh-keygen")?;

    let script = partial.join("customize.sh");
    fs::write(&script, CUSTOMIZE_SCRIPT)?;
    let root = partial.join("root");
    let hook = format!(
        "sh {} \"$1\" {} {}",
        script.display(),
        mirror,
        partial.join(format!("{SSH_KEY}.pub")).display()
    );
    let log = partial.join("mmdebstrap.log");
    let done = run(
        Command::new("mmdebstrap")
            .arg("--variant=minbase")
            .arg(format!(
                "--include={}",
                recipe.canonical_packages().join(",")
            ))
            .arg(format!("--customize-hook={hook}"))
            .arg(&recipe.suite)
            .arg(&root)
            .arg(format!("deb {mirror} {} main", recipe.suite)),
        Duration::from_secs(900),
    )?;
    fs::write(&log, done.output())?;
    done.ok("mmdebstrap (log in the .partial directory)")?;

    let (kernel_a, kernel_b) = pick_kernels(&root.join("boot"))?;
    for kernel in [&kernel_a, &kernel_b] {
        for name in [&kernel.vmlinuz, &kernel.initrd] {
            fs::copy(root.join("boot").join(name), partial.join(name))
                .with_context(|| format!("cannot copy {name} out of the guest root"))?;
        }
    }

    let raw = partial.join("root.raw");
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "labroot", "-d"])
            .arg(&root)
            .arg(&raw)
            .arg(format!("{}M", recipe.disk_mib)),
        Duration::from_secs(300),
    )?
    .ok("mkfs.ext4")?;
    fs::remove_dir_all(&root).context("cannot remove the staged root")?;
    run(
        Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(partial.join(DISK)),
        Duration::from_secs(300),
    )?
    .ok("qemu-img convert")?;
    fs::remove_file(&raw)?;
    fs::remove_file(&script)?;

    let mut files = BTreeMap::new();
    for dir_entry in fs::read_dir(&partial)? {
        let dir_entry = dir_entry?;
        let name = dir_entry.file_name().to_string_lossy().into_owned();
        files.insert(name, digest_file(&dir_entry.path())?);
    }
    let manifest = CacheManifest {
        recipe_hash: recipe.hash(),
        suite: recipe.suite.clone(),
        packages: recipe.canonical_packages(),
        built_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        kernel_a,
        kernel_b,
        files,
    };
    write_synced(
        &partial.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    fs::rename(&partial, entry)
        .with_context(|| format!("cannot move the finished image to {}", entry.display()))?;
    File::open(cache_root)?.sync_all()?;
    eprintln!(
        "lab: guest image ready in {:.0} s: kernels {} and {}",
        started.elapsed().as_secs_f64(),
        manifest.kernel_a.release,
        manifest.kernel_b.release
    );
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Finds the two kernels in a guest's /boot: the suite's own (A) and the
/// bookworm-backports update target (B, release ending in `+deb12-amd64`).
pub fn pick_kernels(boot: &Path) -> Result<(KernelFiles, KernelFiles)> {
    let mut names: Vec<String> = fs::read_dir(boot)
        .with_context(|| format!("cannot list {}", boot.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    kernels_from_names(&names)
}

/// The pure part of [`pick_kernels`]: from /boot's file names.
pub fn kernels_from_names(names: &[String]) -> Result<(KernelFiles, KernelFiles)> {
    let mut kernels = Vec::new();
    for name in names {
        let Some(release) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        let initrd = format!("initrd.img-{release}");
        if !names.contains(&initrd) {
            bail!("/boot has {name} but no {initrd}");
        }
        kernels.push(KernelFiles {
            release: release.to_string(),
            vmlinuz: name.clone(),
            initrd,
        });
    }
    let (b, a): (Vec<_>, Vec<_>) = kernels
        .into_iter()
        .partition(|k| k.release.ends_with("+deb12-amd64"));
    match (a.as_slice(), b.as_slice()) {
        ([a], [b]) => Ok((a.clone(), b.clone())),
        _ => bail!(
            "expected exactly one suite kernel and one +deb12 update kernel in /boot, found {:?} and {:?}",
            a.iter().map(|k| &k.release).collect::<Vec<_>>(),
            b.iter().map(|k| &k.release).collect::<Vec<_>>()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn picks_suite_and_update_kernels() {
        let (a, b) = kernels_from_names(&names(&[
            "System.map-6.12.117+deb13-amd64",
            "config-6.12.117+deb13-amd64",
            "initrd.img-6.12.117+deb13-amd64",
            "initrd.img-6.12.95+deb12-amd64",
            "vmlinuz-6.12.117+deb13-amd64",
            "vmlinuz-6.12.95+deb12-amd64",
        ]))
        .expect("two kernels");
        assert_eq!(a.release, "6.12.117+deb13-amd64");
        assert_eq!(b.release, "6.12.95+deb12-amd64");
        assert_eq!(b.initrd, "initrd.img-6.12.95+deb12-amd64");
    }

    #[test]
    fn missing_initrd_or_kernel_is_an_error() {
        let err =
            kernels_from_names(&names(&["vmlinuz-6.12.1+deb13-amd64"])).expect_err("no initrd");
        assert!(
            format!("{err}").contains("no initrd.img-6.12.1+deb13-amd64"),
            "{err}"
        );
        let err = kernels_from_names(&names(&[
            "vmlinuz-6.12.1+deb13-amd64",
            "initrd.img-6.12.1+deb13-amd64",
        ]))
        .expect_err("no update kernel");
        assert!(format!("{err}").contains("expected exactly one"), "{err}");
    }

    /// Writes a fake but self-consistent entry and returns its directory.
    fn fake_entry(root: &Path, hash: &str) -> PathBuf {
        let entry = root.join(format!("base-{hash}"));
        fs::create_dir_all(&entry).expect("mkdir");
        let kernel = |r: &str| KernelFiles {
            release: r.into(),
            vmlinuz: format!("vmlinuz-{r}"),
            initrd: format!("initrd.img-{r}"),
        };
        let (a, b) = (kernel("1+deb13-amd64"), kernel("2+deb12-amd64"));
        let mut files = BTreeMap::new();
        for name in [DISK, SSH_KEY, &a.vmlinuz, &a.initrd, &b.vmlinuz, &b.initrd] {
            fs::write(entry.join(name), format!("contents of {name}")).expect("write");
            files.insert(
                name.to_string(),
                digest_file(&entry.join(name)).expect("digest"),
            );
        }
        let manifest = CacheManifest {
            recipe_hash: hash.into(),
            suite: "trixie".into(),
            packages: vec![],
            built_unix: 0,
            kernel_a: a,
            kernel_b: b,
            files,
        };
        fs::write(
            entry.join(MANIFEST),
            serde_json::to_string(&manifest).expect("json"),
        )
        .expect("write manifest");
        entry
    }

    #[test]
    fn intact_entry_verifies() {
        let tmp = tempfile::tempdir().expect("tmp");
        let entry = fake_entry(tmp.path(), "abc");
        let manifest = verify_entry(&entry, "abc").expect("verifies");
        assert_eq!(manifest.kernel_b.release, "2+deb12-amd64");
    }

    #[test]
    fn corrupt_truncated_or_half_built_entries_are_rejected() {
        let tmp = tempfile::tempdir().expect("tmp");

        let entry = fake_entry(tmp.path(), "flip");
        fs::write(entry.join(DISK), "contents of base.qcowX").expect("corrupt");
        let err = verify_entry(&entry, "flip").expect_err("bit flip");
        assert!(
            format!("{err}").contains("does not match its SHA-256"),
            "{err}"
        );

        let entry = fake_entry(tmp.path(), "trunc");
        fs::write(entry.join(SSH_KEY), "short").expect("truncate");
        let err = verify_entry(&entry, "trunc").expect_err("truncated");
        assert!(format!("{err}").contains("size 5"), "{err}");

        let entry = fake_entry(tmp.path(), "half");
        fs::remove_file(entry.join(MANIFEST)).expect("rm");
        let err = verify_entry(&entry, "half").expect_err("no manifest");
        assert!(format!("{err}").contains("no readable manifest"), "{err}");

        let entry = fake_entry(tmp.path(), "other");
        let err = verify_entry(&entry, "different").expect_err("wrong recipe");
        assert!(format!("{err}").contains("expected different"), "{err}");

        let entry = fake_entry(tmp.path(), "garbled");
        fs::write(entry.join(MANIFEST), "{\"recipe_hash\": ").expect("garble");
        let err = verify_entry(&entry, "garbled").expect_err("garbled");
        assert!(format!("{err}").contains("does not parse"), "{err}");

        let entry = fake_entry(tmp.path(), "missing");
        fs::remove_file(entry.join(DISK)).expect("rm disk");
        let err = verify_entry(&entry, "missing").expect_err("missing file");
        assert!(format!("{err:#}").contains("cannot open"), "{err:#}");
    }
}
