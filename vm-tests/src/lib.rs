//! The guest lab: everything needed to prove, in a machine that really
//! reboots, what seamless-reboot claims.
//!
//! A Debian guest with two kernels is built once per recipe and cached outside
//! the repository ([`image`]); every test boots a copy-on-write overlay of it
//! under QEMU ([`vm`]), installs this workspace's binaries into that fresh
//! layer ([`layer`]), drives it over ssh ([`guest`]) and measures live TCP
//! clients on the host ([`clients`], [`traffic`]) while the guest kexecs.
//! Each scenario ([`scenario`], [`faults`]) writes a JSON report ([`report`]);
//! one runs its guest with `/var` on a second disk ([`var_disk`]).

pub mod clients;
pub mod debian_clients;
pub mod faults;
pub mod guest;
pub mod image;
pub mod layer;
pub mod matrix;
pub mod mirror;
pub mod netns;
pub mod process;
pub mod recipe;
pub mod report;
pub mod scenario;
pub mod services;
pub mod traffic;
pub mod var_disk;
pub mod vm;
