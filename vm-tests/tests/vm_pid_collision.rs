//! A pid collision in the next boot is detected: the unit cold-starts, the
//! status says why, and the clients are told instead of left hanging; in
//! the same kexec, with `/var` on a second disk mounted from `/etc/fstab`,
//! a unit without a fault is restored with its connection.

use seamless_reboot_vm_tests::recipe::Recipe;
use seamless_reboot_vm_tests::scenario::{Lab, pid_collision};

#[test]
#[ignore = "boots a QEMU guest for minutes; run by `./run.sh test`"]
fn pid_collision_falls_back_to_a_cold_start() {
    let lab = Lab::open(Recipe::default()).expect("the lab opens");
    let report = pid_collision(&lab).expect("the scenario runs");
    assert!(report.passed, "{}", report.summary());
}
