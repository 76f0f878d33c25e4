#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian/Ubuntu machine for e2train.
# Installs only what is missing and says what it did. As root it installs; otherwise it prints the
# exact command to run and exits non-zero.
set -euo pipefail

# Debian packages the build and tests need, with the reason for each.
PKGS=(
  verilator              # RTL simulation (Debian's 5.006 is the tested version)
  yosys                  # resource estimates (scripts/estimate.sh)
  dataset-fashion-mnist  # the default data set, /usr/share/datasets/fashion-mnist
  libudev-dev            # serialport crate (port enumeration)
  pkg-config             # serialport crate build
  g++                    # Verilated models are C++
  make
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all system packages present (${PKGS[*]})"
else
  cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing packages: ${missing[*]}" >&2
    echo "setup: run as root:  sudo sh -c '$cmd'" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: installed ${missing[*]}"
fi

# Verilator must be 5.x (the harness uses the Verilator 5 runtime layout).
vl=$(verilator --version 2>/dev/null | awk '{print $2}')
case "$vl" in
  5.*) echo "setup: verilator $vl" ;;
  *) echo "setup: verilator 5.x required, found '${vl:-none}'" >&2; exit 1 ;;
esac

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
echo "setup: done"
