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
  [curl]=curl
  # The stock services' own clients in the compatibility matrix.
  [psql]=postgresql-client
  [mosquitto_pub]=mosquitto-clients
  [mosquitto_sub]=mosquitto-clients
)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Packages that must come from one release: qemu-system-x86 and qemu-utils
# depend on each other's exact version, and a machine may carry one of them
# from another release (a backport). Installing one alone then makes apt
# remove the other, so they are installed in one call at one version that
# apt has for both: the installed one's where it can, else the version apt
# offers for qemu-system-x86.
qemu_pair=(qemu-system-x86 qemu-utils)

installed_version() {
  dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$1" 2>/dev/null | awk '$1 == "ii" {print $2}' || true
}
candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2}' || true; }
# Whether apt can install version $2 of package $1 (or has it installed).
has_version() {
  [ "$(installed_version "$1")" = "$2" ] ||
    apt-cache madison "$1" 2>/dev/null | awk -F' [|] ' -v v="$2" '$2 == v {found = 1} END {exit !found}'
}

qemu_pair_version() {
  local version pkg ok
  for version in $(for pkg in "${qemu_pair[@]}"; do installed_version "$pkg"; done) \
    "$(candidate_version qemu-system-x86)"; do
    ok=1
    for pkg in "${qemu_pair[@]}"; do has_version "$pkg" "$version" || ok=0; done
    if [ "$ok" = 1 ]; then echo "$version"; return; fi
  done
}

missing_commands() {
  local cmd
  for cmd in "${!needed[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || echo "$cmd"
  done | sort
}

install_host_packages() {
  local missing=() packages=() cmd pkg version
  mapfile -t missing < <(missing_commands)
  if [ "${#missing[@]}" -gt 0 ]; then
    for cmd in "${missing[@]}"; do packages+=("${needed[$cmd]}"); done
    mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
    as_root apt-get update -q
    if printf '%s\n' "${packages[@]}" | grep -qx -e qemu-system-x86 -e qemu-utils; then
      version=$(qemu_pair_version)
      if [ -z "$version" ]; then
        echo "run.sh: apt has no version of ${qemu_pair[*]} that it can install for both; add a Debian release that has them to apt's sources" >&2
        exit 1
      fi
      mapfile -t packages < <(printf '%s\n' "${packages[@]}" | grep -vx -e qemu-system-x86 -e qemu-utils)
      for pkg in "${qemu_pair[@]}"; do packages+=("$pkg=$version"); done
    fi
    echo "run.sh: installing ${packages[*]}" >&2
    # --no-remove: never take away a package this machine already has; apt
    # stops with an error instead, and nothing changes.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      --no-remove --allow-downgrades "${packages[@]}"
  fi
  # Whatever apt did, every command must be there now.
  mapfile -t missing < <(missing_commands)
  if [ "${#missing[@]}" -gt 0 ]; then
    for cmd in "${missing[@]}"; do
      echo "run.sh: command $cmd is still missing after installing packages (Debian package ${needed[$cmd]})" >&2
    done
    exit 1
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
