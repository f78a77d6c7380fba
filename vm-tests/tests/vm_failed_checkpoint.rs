//! A checkpoint that fails for the second of two units leaves both running
//! on the old kernel with their connections, and nothing loaded or left over.

use seamless_reboot_vm_tests::recipe::Recipe;
use seamless_reboot_vm_tests::scenario::{Lab, failed_checkpoint};

#[test]
#[ignore = "boots a QEMU guest for minutes; run by `./run.sh test`"]
fn failed_checkpoint_leaves_everything_running() {
    let lab = Lab::open(Recipe::default()).expect("the lab opens");
    let report = failed_checkpoint(&lab).expect("the scenario runs");
    assert!(report.passed, "{}", report.summary());
}
