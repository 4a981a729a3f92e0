#!/usr/bin/env bash
# The op tests on the AVX2 + FMA kernels, as a CPU without AVX-512 runs them:
# configures a second build tree with -march=haswell (-DDDPM_NATIVE=OFF), builds
# the test_ops_* programs and test_rng (the vector Philox) only, checks that none
# of them holds an AVX-512 instruction (a zmm register), and runs each. test_ops_conv3x3 also checks that
# the AVX2 path, not the plain-C one, was compiled; with gcc, the loops of the
# sigmoid (SiLU, GroupNorm + SiLU, the softmax's exp) are checked to be vector
# code: they compile to scalar code with branches when gcc cannot if-convert them
# (CMakeLists.txt, -fno-trapping-math).
# Usage: tests/haswell_ops.sh SOURCE_DIR BUILD_DIR   (ctest runs it as haswell_ops)
set -euo pipefail
src=$1 bin=$2
cmake -S "$src" -B "$bin" -DCMAKE_BUILD_TYPE=Release -DDDPM_NATIVE=OFF -DCMAKE_C_FLAGS=-march=haswell \
    -DDDPM_FUZZ=OFF -DDDPM_MPI=OFF -DDDPM_HASWELL_TEST=OFF >/dev/null
targets="$(cd "$src/tests" && ls test_ops_*.c | sed 's/\.c$//') test_rng"
# shellcheck disable=SC2086
cmake --build "$bin" -j 2 --target $targets >/dev/null
# vector_loop BINARY FUNCTION INSTRUCTION: FUNCTION's body holds INSTRUCTION on a
# ymm register (the scalar loop has the ss form instead).
vector_loop() {
    local body
    body=$(objdump -d --no-show-raw-insn "$bin/$1" | awk -v f="<$2>:" '$2 == f { p = 1; next } /^$/ { p = 0 } p')
    if ! grep -q "$3.*%ymm" <<<"$body"; then
        echo "haswell_ops: $2 in $1 has no $3 on ymm: its loop was not vectorised" >&2
        exit 1
    fi
}
if grep -q 'CMAKE_C_COMPILER_ID "GNU"' "$bin"/CMakeFiles/*/CMakeCCompiler.cmake; then
    vector_loop test_ops_silu ddpm_silu_forward._omp_fn.0 vdivps
    vector_loop test_ops_silu ddpm_silu_backward._omp_fn.0 vdivps
    vector_loop test_ops_silu ddpm_silu_backward._omp_fn.1 vdivps
    vector_loop test_ops_groupnorm ddpm_groupnorm_silu_forward._omp_fn.0 vdivps
    vector_loop test_ops_attention ddpm_attention_forward_precision._omp_fn.0 vcvttps2dq
fi
for t in $targets; do
    # (grep -c reads to the end: grep -q would stop objdump with SIGPIPE, and
    # pipefail would turn a match into a failed test of the if)
    if [ "$(objdump -d "$bin/$t" | grep -c '%zmm')" != 0 ]; then
        echo "haswell_ops: $t holds AVX-512 instructions: not an AVX2 build" >&2
        exit 1
    fi
    OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE "$bin/$t"
done
