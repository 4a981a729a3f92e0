#!/usr/bin/env bash
# The op tests on the AVX2 + FMA kernels, as a CPU without AVX-512 runs them:
# configures a second build tree with -march=haswell (-DDDPM_NATIVE=OFF), builds
# the test_ops_* programs only, checks that none of them holds an AVX-512
# instruction (a zmm register), and runs each. test_ops_conv3x3 also checks that
# the AVX2 path, not the plain-C one, was compiled.
# Usage: tests/haswell_ops.sh SOURCE_DIR BUILD_DIR   (ctest runs it as haswell_ops)
set -euo pipefail
src=$1 bin=$2
cmake -S "$src" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DDDPM_NATIVE=OFF -DCMAKE_C_FLAGS=-march=haswell \
    -DDDPM_FUZZ=OFF -DDDPM_MPI=OFF -DDDPM_HASWELL_TEST=OFF >/dev/null
targets=$(cd "$src/tests" && ls test_ops_*.c | sed 's/\.c$//')
# shellcheck disable=SC2086
cmake --build "$bin" -j 2 --target $targets >/dev/null
for t in $targets; do
    if objdump -d "$bin/$t" | grep -q '%zmm'; then
        echo "haswell_ops: $t holds AVX-512 instructions: not an AVX2 build" >&2
        exit 1
    fi
    OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE "$bin/$t"
done
