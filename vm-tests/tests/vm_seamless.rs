//! The product in a real guest: `seamless-reboot --kernel` into kernel B with
//! live clients; every connection and the service's state survive.

use seamless_reboot_vm_tests::recipe::Recipe;
use seamless_reboot_vm_tests::scenario::{Lab, seamless_update};

#[test]
#[ignore = "boots a QEMU guest for minutes; run by `./run.sh test`"]
fn seamless_update_keeps_connections_and_state() {
    let lab = Lab::open(Recipe::default()).expect("the lab opens");
    let report = seamless_update(&lab).expect("the scenario runs");
    assert!(report.passed, "{}", report.summary());
}
