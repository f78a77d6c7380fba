//! `seamless-lab`: builds the guest image and runs the lab's scenarios from
//! the command line, printing a readable summary (the README's main job).

use std::process::ExitCode;

use anyhow::Result;
use seamless_reboot_vm_tests::image::{default_cache_root, ensure_base_image};
use seamless_reboot_vm_tests::recipe::Recipe;
use seamless_reboot_vm_tests::scenario::{Lab, baseline_kexec};

const USAGE: &str = "usage: seamless-lab <command>
commands:
  image      build the guest image if the cache has none, verify it, print what it holds
  baseline   boot kernel A, connect clients, `systemctl kexec` into kernel B (connections break)
  demo       the main job: currently the baseline scenario";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["image"] => image(),
        ["baseline"] | ["demo"] => scenario(),
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

fn scenario() -> Result<bool> {
    let lab = Lab::open(Recipe::default())?;
    // The session prints the summary itself, on stderr, as every scenario does.
    let report = baseline_kexec(&lab)?;
    Ok(report.passed)
}
