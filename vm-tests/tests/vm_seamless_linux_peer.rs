//! The product with a Linux TCP peer beside the slirp one: every connection
//! survives; the report compares how promptly each peer resumes.

use seamless_reboot_vm_tests::recipe::Recipe;
use seamless_reboot_vm_tests::scenario::{Lab, seamless_update_linux_peer};

#[test]
#[ignore = "boots a QEMU guest for minutes; run by `./run.sh test`"]
fn seamless_update_with_a_linux_peer() {
    let lab = Lab::open(Recipe::default()).expect("the lab opens");
    let report = seamless_update_linux_peer(&lab).expect("the scenario runs");
    assert!(report.passed, "{}", report.summary());
}
