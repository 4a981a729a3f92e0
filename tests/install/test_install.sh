#!/usr/bin/env bash
# Installs the build into a temporary prefix, builds docs/usage.md's library
# example against it with pkg-config as a user would, runs it and checks the PNG
# grid it writes. The example is the C block after the line
# `<!-- tests/install/example.c -->`; it must equal example.c, the copy a user
# can take from here.
# Usage: test_install.sh BUILD_DIR CC [EXTRA_CFLAGS]
set -euo pipefail
build=$1 cc=$2 extra=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
pc=$(find "$prefix" -name ddpm.pc)
[ -n "$pc" ] || { echo "no ddpm.pc installed under $prefix"; exit 1; }
[ -f "$prefix/include/ddpm/run.h" ] || { echo "headers not installed"; exit 1; }
[ -x "$prefix/bin/ddpm" ] || { echo "ddpm binary not installed"; exit 1; }
readme=$here/../../docs/usage.md
awk '/^<!-- tests\/install\/example.c -->$/ { found = 1; next }
     found == 1 && /^```c$/ { found = 2; next }
     found == 2 && /^```$/ { exit }
     found == 2 { print }' "$readme" >"$prefix/example.c"
[ -s "$prefix/example.c" ] || { echo "docs/usage.md has no C block after <!-- tests/install/example.c -->"; exit 1; }
if ! diff -u "$here/example.c" "$prefix/example.c"; then
    echo "docs/usage.md's library example differs from tests/install/example.c (diff above)"
    exit 1
fi
export PKG_CONFIG_PATH=$(dirname "$pc")
# shellcheck disable=SC2046 # word splitting of the flags is intended
"$cc" -std=c11 -Wall -Wextra -Werror $extra "$prefix/example.c" $(pkg-config --cflags --libs ddpm) \
    -o "$prefix/example"
"$prefix/example" "$prefix/grid.png"
# PNG: 8-byte signature, IHDR length and type, then width and height big-endian
read -r w h < <(od -An -tu1 -j16 -N8 "$prefix/grid.png" |
    awk '{print ($1*16777216 + $2*65536 + $3*256 + $4), ($5*16777216 + $6*65536 + $7*256 + $8)}')
want=$((2 * 8 + 3 * 2)) # 2x2 cells of 8 pixels, pad 2
if [ "$w" != "$want" ] || [ "$h" != "$want" ]; then
    echo "grid.png is ${w}x${h}, expected ${want}x${want}"
    exit 1
fi
"$prefix/bin/ddpm" --version >/dev/null
echo "ok: installed, built with pkg-config, grid ${w}x${h}"
