//! `seamless-lab`: builds the guest image and runs the lab's scenarios from
//! the command line, printing a readable summary (the README's main job).

use std::process::ExitCode;

use anyhow::Result;
use seamless_reboot_vm_tests::image::{default_cache_root, ensure_base_image};
use seamless_reboot_vm_tests::recipe::Recipe;
use seamless_reboot_vm_tests::report::ScenarioReport;
use seamless_reboot_vm_tests::scenario::{
    LAB_SERVICE_PORT, Lab, baseline_kexec, failed_checkpoint, pid_collision, seamless_update,
    seamless_update_linux_peer,
};
use seamless_reboot_vm_tests::vm::VmConfig;

const USAGE: &str = "usage: seamless-lab <command>
commands:
  image      build the guest image if the cache has none, verify it, print what it holds
  baseline   boot kernel A, connect clients, `systemctl kexec` into kernel B (connections break)
  seamless   the same with `seamless-reboot --kernel B`, with a Linux TCP peer beside the
             slirp one and Debian's nginx serving a download: connections and state survive
  seamless-linux-peer
             the update started through D-Bus (busctl), without nginx
  failed-checkpoint
             the CRIU dumping a second unit is killed halfway: nothing changes
  pid-collision
             another process takes the service's pid early in the next boot: it cold-starts;
             in a guest whose /var is on a second disk (fstab), a unit without a fault is restored
  demo       the main job: the seamless scenario
  boot       boot a guest with the lab service running and keep it until Enter or end of input,
             printing how to reach it (for working by hand)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["image"] => image(),
        ["baseline"] => scenario(baseline_kexec),
        ["seamless"] | ["demo"] => scenario(seamless_update),
        ["seamless-linux-peer"] => scenario(seamless_update_linux_peer),
        ["failed-checkpoint"] => scenario(failed_checkpoint),
        ["pid-collision"] => scenario(pid_collision),
        ["boot"] => boot(),
        ["-h"] | ["--help"] | ["help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("seamless-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn image() -> Result<bool> {
    let recipe = Recipe::default();
    let image = ensure_base_image(&default_cache_root(), &recipe)?;
    let m = &image.manifest;
    println!("image     {}", image.dir.display());
    println!(
        "recipe    {} ({} packages, suite {})",
        m.recipe_hash,
        m.packages.len(),
        m.suite
    );
    println!("kernel A  {}", m.kernel_a.release);
    println!("kernel B  {}", m.kernel_b.release);
    Ok(true)
}

fn scenario(run: fn(&Lab) -> Result<ScenarioReport>) -> Result<bool> {
    let lab = Lab::open(Recipe::default())?;
    // The session prints the summary itself, on stderr, as every scenario does.
    let report = run(&lab)?;
    Ok(report.passed)
}

fn boot() -> Result<bool> {
    let lab = Lab::open(Recipe::default())?;
    let config = VmConfig {
        forwards: vec![LAB_SERVICE_PORT],
        ..VmConfig::default()
    };
    let mut session = lab.session("boot", config)?;
    session.start_lab_service()?;
    println!(
        "guest up: ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p {} root@127.0.0.1",
        lab.image.ssh_key().display(),
        session.guest().port
    );
    println!("lab service: {}", session.service_target()?);
    println!("kernel B: /boot/{}", lab.kernel_b().vmlinuz);
    println!("console: {}/console.log", session.vm.run_dir.display());
    println!("press Enter (or close standard input) to end the guest");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    session.report.check("booted by hand", true, "");
    session.finish(Ok(()));
    Ok(true)
}
