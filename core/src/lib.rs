//! The seamless reboot transaction: plan, checkpoint with CRIU, kexec, and
//! restore in the next boot.
//!
//! The pieces each own one contact with the system (CRIU's RPC, the kexec
//! syscalls, the snapshot manifest on disk, the inventory of a unit's
//! processes and connections), each behind an interface that tests can fake.

pub mod criu;
pub mod inventory;
pub mod kexec;
pub mod layout;
pub mod manifest;
pub mod netqueue;
pub mod nextboot;
pub mod pid_reserve;
pub mod platform;
#[cfg(test)]
mod proptests;
pub mod prune;
pub mod transaction;
