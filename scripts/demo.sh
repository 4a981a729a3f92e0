#!/usr/bin/env bash
# The demo, from a fresh clone: install what is missing, build, fetch
# Fashion-MNIST, train the default model for a bounded time, sample an 8x8 grid.
# Re-running reuses the build, the data and a finished run (rm -rf runs/demo to
# train again).
#
#   scripts/demo.sh                 # 10 minutes of training (DEMO_MINUTES to change)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${DEMO_MINUTES:-10}"
run=runs/demo

scripts/setup.sh
# Debian's OpenBLAS 0.3.21 picks its Haswell kernels on AVX-512 CPUs; its
# SkylakeX kernels nearly double sgemm there (see docs/speed.md). ddpm selects
# them itself when OPENBLAS_CORETYPE is unset; the demo also overrides a preset.
if grep -qw avx512f /proc/cpuinfo 2>/dev/null && [ "${OPENBLAS_CORETYPE:-}" != SkylakeX ]; then
    echo "demo: AVX-512 CPU: using OpenBLAS's SkylakeX kernels (OPENBLAS_CORETYPE was '${OPENBLAS_CORETYPE:-unset}')"
    export OPENBLAS_CORETYPE=SkylakeX
fi
if [ ! -x build/ddpm ] || [ -n "$(find src include CMakeLists.txt -newer build/ddpm -print -quit)" ]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build -j "$(nproc)" --target ddpm
fi
scripts/fetch-fashion-mnist.sh

if [ -f "$run/checkpoint.safetensors" ]; then
    echo "demo: $run already holds a trained model; sampling from it (rm -rf $run to retrain)"
else
    echo "demo: training the default model for $minutes minutes on $(nproc) cores"
    build/ddpm train data/fashion-mnist/train --out "$run" --minutes "$minutes" \
        --save-every 200 --sample-every 200 --preview-n 16
fi
build/ddpm sample "$run" --n 64 --nrow 8 --sampler ddim --steps 100 --eta 1 --seed 1 \
    --out "$run/grid.png" --trajectory "$run/trajectory.png" --quiet
echo "demo: samples: $run/grid.png (progressive generation: $run/trajectory.png)"
