#!/usr/bin/env bash
# The repository's two entry points (see README.md):
#   ./run.sh demo   the main job: a kernel update of a QEMU guest with live TCP
#                   clients, ending in a readable summary
#   ./run.sh test   every test: lints, unit and integration tests, then the VM tests
# Both install what they need on a fresh Debian machine (apt packages; the guest
# image is built on first use and cached in ~/.cache/seamless-reboot-lab).
set -euo pipefail
cd "$(dirname "$0")"

# command -> Debian package providing it
declare -A needed=(
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [mmdebstrap]=mmdebstrap
  [mkfs.ext4]=e2fsprogs
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
  [setpriv]=util-linux
  [tar]=tar
  [dbus-daemon]=dbus-daemon
  [dbus-send]=dbus-bin
)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

install_host_packages() {
  local missing=()
  for cmd in "${!needed[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${needed[$cmd]}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "run.sh: installing ${missing[*]}" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      $(printf '%s\n' "${missing[@]}" | sort -u)
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo is missing; install a Rust toolchain (rustup, Rust >= 1.88) first" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "run.sh: building the guest image (mmdebstrap) and its tests need root; run as root" >&2
    exit 1
  fi
}

build() {
  cargo build --workspace --bins --locked
}

case "${1:-}" in
  demo)
    install_host_packages
    build
    exec ./target/debug/seamless-lab demo
    ;;
  test)
    install_host_packages
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    build
    cargo test --workspace --locked
    # The VM tests: real QEMU guests, one at a time (2 cores).
    cargo test --workspace --locked -- --ignored --test-threads=1
    ;;
  *)
    echo "usage: ./run.sh demo|test" >&2
    exit 2
    ;;
esac
