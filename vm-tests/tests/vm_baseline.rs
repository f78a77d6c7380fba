//! The baseline scenario in a real guest: today's `systemctl kexec` replaces
//! the kernel and breaks every client connection.

use seamless_reboot_vm_tests::recipe::Recipe;
use seamless_reboot_vm_tests::scenario::{Lab, baseline_kexec};

#[test]
#[ignore = "boots a QEMU guest for minutes; run by `./run.sh test`"]
fn systemctl_kexec_changes_kernel_and_breaks_connections() {
    let lab = Lab::open(Recipe::default()).expect("the lab opens");
    let report = baseline_kexec(&lab).expect("the scenario runs");
    assert!(report.passed, "{}", report.summary());
    assert_ne!(
        report.kernel_after.as_deref(),
        Some(report.kernel_before.as_str())
    );
    assert!(report.timings.contains_key("kexec_to_ssh_s"));
}
