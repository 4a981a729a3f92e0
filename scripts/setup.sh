#!/usr/bin/env bash
# Installs the Debian packages that building and testing ddpm needs, only those
# missing. Works as root or through sudo; fast when everything is installed.
# clang and libomp-dev build the libFuzzer harnesses in tests/fuzz/ (ctest runs
# each briefly; CMake skips them when clang is absent).
set -euo pipefail
packages=(build-essential cmake pkg-config libopenblas-dev libopenblas-openmp-dev
          libstb-dev libcjson-dev libcmocka-dev zlib1g-dev openmpi-bin libopenmpi-dev clang libclang-rt-14-dev libomp-dev "$@")
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
