//! One QEMU guest: booted from a copy-on-write overlay of the base image,
//! its serial console logged with host timestamps, ended when dropped.
//!
//! QEMU is started under `setpriv --pdeathsig KILL`, so if the test process is
//! killed (Ctrl-C, a CI timeout, SIGKILL) the kernel ends its QEMU too; and a
//! run directory keeps a pid file, so the next run also ends any QEMU left by
//! a previous one (checking that the pid still belongs to that run's QEMU).
//! Only QEMUs started by this lab, in the lab's runs directory, are touched.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::guest::{BootInfo, Guest};
use crate::image::{BaseImage, KernelFiles};
use crate::netns::Netns;
use crate::process::{run, tail, wait_deadline};

/// How long a fresh boot may take to answer ssh under TCG (measured: ~30 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const PID_FILE: &str = "qemu.pid";
/// The lab process that started a run's QEMU; while it lives, the run is not
/// a leftover (two lab runs may share a runs directory).
const OWNER_FILE: &str = "owner.pid";
/// A run's second disk, when it has one: a sparse raw file.
const DATA_DISK: &str = "data-disk.raw";
/// The label of the filesystem on the second disk.
pub const DATA_DISK_LABEL: &str = "labdata";
/// The kernel command line of the first boot; kexec reuses it.
pub const BASE_CMDLINE: &str = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1";

/// How to start a guest.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub memory_mib: u32,
    pub cpus: u32,
    /// Guest TCP ports reachable from the host through 127.0.0.1:<picked port>.
    pub forwards: Vec<u16>,
    /// Extra kernel command line arguments for the first boot.
    pub append: String,
    /// Run QEMU in a namespace of its own with a second guest NIC on a TAP
    /// there, so a Linux TCP stack can be the peer (see [`crate::netns`]).
    pub linux_peer: bool,
    /// A second virtio disk (`/dev/vdb` in the guest) of this many MiB,
    /// holding an empty ext4 filesystem labelled [`DATA_DISK_LABEL`], made
    /// on the host for this run (see [`crate::var_disk`]).
    pub data_disk_mib: Option<u32>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: 2048,
            cpus: 2,
            forwards: Vec::new(),
            append: String::new(),
            linux_peer: false,
            data_disk_mib: None,
        }
    }
}

/// A running guest. Dropping it ends its QEMU.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    /// Held open so QEMU's stdio chardev never sees end of input.
    _stdin: Option<ChildStdin>,
    pub run_dir: PathBuf,
    pub guest: Guest,
    forwards: BTreeMap<u16, u16>,
    console: Arc<Mutex<VecDeque<String>>>,
    pub started: Instant,
    /// What the guest said when it first answered.
    pub first_boot: BootInfo,
    /// From starting QEMU to the guest answering ssh.
    pub boot_s: f64,
    /// The namespace QEMU runs in, when it has a Linux peer; dropped (and
    /// deleted) after QEMU has ended.
    pub netns: Option<Netns>,
}

impl Vm {
    /// Boots `kernel` of `image` with a fresh overlay in `run_dir` and waits
    /// until the guest answers ssh. Retries with other ports when a port
    /// picked for forwarding was taken meanwhile.
    pub fn boot(
        image: &BaseImage,
        kernel: &KernelFiles,
        run_dir: &Path,
        config: &VmConfig,
    ) -> Result<Vm> {
        fs::create_dir_all(run_dir)?;
        let overlay = run_dir.join("overlay.qcow2");
        run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(image.disk())
                .arg(&overlay),
            Duration::from_secs(60),
        )?
        .ok("qemu-img create (overlay)")?;
        let data_disk = match config.data_disk_mib {
            Some(mib) => Some(make_data_disk(run_dir, mib)?),
            None => None,
        };

        let mut netns = if config.linux_peer {
            Some(Netns::create()?)
        } else {
            None
        };
        let mut last_error = None;
        for _attempt in 0..3 {
            let disks = (overlay.as_path(), data_disk.as_deref());
            match Self::start(image, kernel, run_dir, disks, config, &mut netns) {
                Ok(vm) => return Ok(vm),
                Err(e) => {
                    let text = format!("{e:#}");
                    if text.contains("host forwarding") || text.contains("Could not set up") {
                        last_error = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("QEMU did not start")))
    }

    fn start(
        image: &BaseImage,
        kernel: &KernelFiles,
        run_dir: &Path,
        (overlay, data_disk): (&Path, Option<&Path>),
        config: &VmConfig,
        netns: &mut Option<Netns>,
    ) -> Result<Vm> {
        let ssh_port = free_port()?;
        let mut forwards = BTreeMap::new();
        let mut netdev = format!("user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22");
        for guest_port in &config.forwards {
            let host_port = free_port()?;
            forwards.insert(*guest_port, host_port);
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"));
        }
        let (vmlinuz, initrd) = image.kernel_path(kernel);
        let append = format!("{BASE_CMDLINE} {}", config.append)
            .trim()
            .to_string();
        let wrapper = netns.as_ref().map(Netns::wrapper).unwrap_or_default();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .args(&wrapper)
            .arg("qemu-system-x86_64")
            .args(["-name", "seamless-lab", "-nodefaults", "-no-user-config"])
            // One host thread for all vCPUs: multi-threaded TCG raced with the
            // guest kernel patching its own code (an int3 Oops in the network
            // receive path while nftables enabled its hooks).
            .args([
                "-accel",
                "tcg,thread=single",
                "-machine",
                "q35",
                "-cpu",
                "max",
            ])
            .args([
                "-m",
                &config.memory_mib.to_string(),
                "-smp",
                &config.cpus.to_string(),
            ])
            .args(["-display", "none", "-monitor", "none"])
            .args([
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
            ])
            .arg("-kernel")
            .arg(&vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                overlay.display()
            ))
            // After the root, so that the root stays /dev/vda.
            .args(data_disk.map_or_else(Vec::new, |data| {
                vec![
                    "-drive".to_string(),
                    format!("file={},if=virtio,format=raw,cache=unsafe", data.display()),
                ]
            }))
            .args(["-netdev", &netdev])
            .args([
                "-device",
                "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
            ])
            .args(["-device", "virtio-rng-pci"])
            .args(if netns.is_some() {
                vec![
                    "-netdev",
                    "tap,id=net1,ifname=tap0,script=no,downscript=no",
                    "-device",
                    "virtio-net-pci,netdev=net1,mac=52:54:00:12:34:57",
                ]
            } else {
                vec![]
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .context("cannot start qemu-system-x86_64 (is qemu-system-x86 installed?)")?;
        fs::write(run_dir.join(PID_FILE), child.id().to_string())?;
        fs::write(run_dir.join(OWNER_FILE), std::process::id().to_string())?;
        let console = Arc::new(Mutex::new(VecDeque::new()));
        log_console(
            child.stdout.take(),
            run_dir.join("console.log"),
            console.clone(),
            started,
        );
        log_stderr(child.stderr.take(), run_dir.join("qemu-stderr.log"));
        let stdin = child.stdin.take();
        let guest = Guest::new(ssh_port, &image.ssh_key()).with_wrapper(wrapper);

        let mut vm = Vm {
            child,
            _stdin: stdin,
            run_dir: run_dir.to_path_buf(),
            guest,
            forwards,
            console,
            started,
            first_boot: BootInfo {
                boot_id: String::new(),
                kernel: String::new(),
            },
            boot_s: 0.0,
            netns: None,
        };
        let deadline = started + BOOT_TIMEOUT;
        loop {
            if let Some(status) = vm.child.try_wait()? {
                let stderr =
                    fs::read_to_string(run_dir.join("qemu-stderr.log")).unwrap_or_default();
                bail!("QEMU exited during boot ({status}): {}", stderr.trim());
            }
            if let Ok(info) = vm.guest.boot_info() {
                vm.first_boot = info;
                vm.boot_s = started.elapsed().as_secs_f64();
                vm.netns = netns.take();
                return Ok(vm);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the guest did not answer ssh within {BOOT_TIMEOUT:?}; console tail:\n{}",
                    vm.console_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// The host port that reaches `guest_port`.
    pub fn host_port(&self, guest_port: u16) -> Result<u16> {
        self.forwards
            .get(&guest_port)
            .copied()
            .with_context(|| format!("guest port {guest_port} was not forwarded"))
    }

    /// The last `lines` lines the guest printed on its serial console.
    pub fn console_tail(&self, lines: usize) -> String {
        let console = self
            .console
            .lock()
            .map(|c| c.iter().cloned().collect::<Vec<_>>().join("\n"));
        tail(&console.unwrap_or_default(), lines)
    }

    /// Is QEMU still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_deadline(&mut self.child, Duration::from_secs(10));
        let _ = fs::remove_file(self.run_dir.join(PID_FILE));
        // The disks are the bulk of a run directory; the logs and report stay.
        let _ = fs::remove_file(self.run_dir.join("overlay.qcow2"));
        let _ = fs::remove_file(self.run_dir.join(DATA_DISK));
    }
}

/// Ends QEMUs left behind by earlier runs under `runs_root`. A pid counts as
/// ours only if its command line names that run's overlay, so a recycled pid
/// is never killed. Returns how many were ended.
pub fn reap_stale(runs_root: &Path) -> Result<usize> {
    let mut ended = 0;
    let Ok(dirs) = fs::read_dir(runs_root) else {
        return Ok(0);
    };
    for dir in dirs.filter_map(|d| d.ok()) {
        if owner_alive(&dir.path()) {
            continue;
        }
        let pid_file = dir.path().join(PID_FILE);
        let Ok(text) = fs::read_to_string(&pid_file) else {
            continue;
        };
        let overlay = dir.path().join("overlay.qcow2");
        if let Ok(pid) = text.trim().parse::<i32>() {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if is_our_qemu(&cmdline, &overlay) {
                eprintln!(
                    "lab: ending QEMU {pid} left by an earlier run in {}",
                    dir.path().display()
                );
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                ended += 1;
            }
        }
        let _ = fs::remove_file(&pid_file);
        let _ = fs::remove_file(&overlay);
        let _ = fs::remove_file(dir.path().join(DATA_DISK));
    }
    Ok(ended)
}

/// Makes `run_dir`'s second disk: a sparse file of `mib` MiB holding an
/// empty ext4 filesystem (mkfs.ext4 formats a regular file without root;
/// the guest has no mkfs of its own). Returns its path.
fn make_data_disk(run_dir: &Path, mib: u32) -> Result<PathBuf> {
    let disk = run_dir.join(DATA_DISK);
    let _ = fs::remove_file(&disk);
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", DATA_DISK_LABEL])
            .arg(&disk)
            .arg(format!("{mib}M")),
        Duration::from_secs(60),
    )?
    .ok("mkfs.ext4 (the second disk)")?;
    Ok(disk)
}

/// Is the lab process that started the run in `run_dir` still running (and
/// not this process, whose own earlier runs are over)?
fn owner_alive(run_dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(run_dir.join(OWNER_FILE)) else {
        return false;
    };
    match text.trim().parse::<u32>() {
        Ok(pid) if pid == std::process::id() => false,
        Ok(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}

/// Does a /proc/PID/cmdline belong to a QEMU booting `overlay`?
pub fn is_our_qemu(cmdline: &[u8], overlay: &Path) -> bool {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let needle = format!("file={},", overlay.display());
    args.iter().any(|a| a.contains("qemu-system")) && args.iter().any(|a| a.starts_with(&needle))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(listener.local_addr()?.port())
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Copies the serial console to `path`, each line prefixed with the host's
/// unix time and the seconds since QEMU started, and keeps the last lines for
/// error messages.
fn log_console(
    pipe: Option<impl std::io::Read + Send + 'static>,
    path: PathBuf,
    keep: Arc<Mutex<VecDeque<String>>>,
    started: Instant,
) {
    let Some(pipe) = pipe else { return };
    thread::spawn(move || {
        let Ok(mut out) = File::create(&path) else {
            return;
        };
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut raw) {
            if n == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            raw.clear();
            let stamped = format!(
                "[{:.3} +{:.3}s] {line}",
                now_unix(),
                started.elapsed().as_secs_f64()
            );
            let _ = writeln!(out, "{stamped}");
            if let Ok(mut keep) = keep.lock() {
                keep.push_back(stamped);
                while keep.len() > 200 {
                    keep.pop_front();
                }
            }
        }
    });
}

fn log_stderr(pipe: Option<impl std::io::Read + Send + 'static>, path: PathBuf) {
    let Some(mut pipe) = pipe else { return };
    thread::spawn(move || {
        if let Ok(mut out) = File::create(&path) {
            let _ = std::io::copy(&mut pipe, &mut out);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_its_own_qemu() {
        let overlay = Path::new("/runs/a/overlay.qcow2");
        let ours =
            b"qemu-system-x86_64\0-drive\0file=/runs/a/overlay.qcow2,if=virtio,format=qcow2\0";
        assert!(is_our_qemu(ours, overlay));
        let other_run = b"qemu-system-x86_64\0-drive\0file=/runs/b/overlay.qcow2,if=virtio\0";
        assert!(!is_our_qemu(other_run, overlay));
        let not_qemu = b"vim\0file=/runs/a/overlay.qcow2,\0";
        assert!(!is_our_qemu(not_qemu, overlay));
        assert!(!is_our_qemu(b"", overlay));
    }

    #[test]
    fn reap_skips_recycled_pids_and_cleans_pid_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run = tmp.path().join("old-run");
        fs::create_dir_all(&run).expect("mkdir");
        // Our own pid is certainly alive and certainly not that run's QEMU.
        fs::write(run.join(PID_FILE), std::process::id().to_string()).expect("write");
        assert_eq!(reap_stale(tmp.path()).expect("reap"), 0);
        assert!(!run.join(PID_FILE).exists());
    }

    /// A process whose command line looks like a QEMU booting `overlay`.
    fn stand_in_qemu(overlay: &Path) -> std::process::Child {
        Command::new("sh")
            .args(["-c", "sleep 30; true", "qemu-system-x86_64"])
            .arg(format!("file={},if=virtio", overlay.display()))
            .spawn()
            .expect("spawn")
    }

    #[test]
    fn reap_leaves_runs_of_a_living_lab_process_alone() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run = tmp.path().join("other-run");
        fs::create_dir_all(&run).expect("mkdir");
        let overlay = run.join("overlay.qcow2");
        let mut child = stand_in_qemu(&overlay);
        fs::write(run.join(PID_FILE), child.id().to_string()).expect("write");
        // The stand-in itself plays the owning lab process: it is alive.
        fs::write(run.join(OWNER_FILE), child.id().to_string()).expect("write");
        assert_eq!(reap_stale(tmp.path()).expect("reap"), 0);
        assert!(run.join(PID_FILE).exists(), "the run is left as it is");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn reap_ends_a_leftover_process_of_that_run() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run = tmp.path().join("old-run");
        fs::create_dir_all(&run).expect("mkdir");
        let overlay = run.join("overlay.qcow2");
        // A stand-in whose command line looks like that run's QEMU.
        let mut child = stand_in_qemu(&overlay);
        fs::write(run.join(PID_FILE), child.id().to_string()).expect("write");
        // spawn() returns once exec has released the parent, which can be
        // before the new argv shows in /proc: wait for it, as a real leftover
        // QEMU (minutes old) would have it.
        let cmdline_path = format!("/proc/{}/cmdline", child.id());
        crate::process::poll(
            "the stand-in's argv",
            Duration::from_secs(5),
            Duration::from_millis(5),
            || Ok((!fs::read(&cmdline_path)?.is_empty()).then_some(())),
        )
        .expect("argv visible");
        assert_eq!(reap_stale(tmp.path()).expect("reap"), 1);
        let status = wait_deadline(&mut child, Duration::from_secs(5)).expect("wait");
        assert!(status.is_some(), "the leftover was ended");
    }
}
