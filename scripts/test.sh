#!/usr/bin/env bash
# The test command: install what is missing, configure, build, run every test.
# Usage: scripts/test.sh [--sanitize]   (ASan + UBSan build in build-sanitize/)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build=build
opts=(-DCMAKE_BUILD_TYPE=Release)
if [ "${1:-}" = "--sanitize" ]; then
    build=build-sanitize
    opts=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DDDPM_SANITIZE=ON)
fi
cmake -S . -B "$build" "${opts[@]}" >/dev/null
cmake --build "$build" -j "$(nproc)"
cd "$build"
ctest --output-on-failure -j "$(nproc)"
