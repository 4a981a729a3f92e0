#!/usr/bin/env bash
# Builds Release in build-bench/ and runs `ddpm bench` on the default model and on
# a larger one (32x32x3, ch 64, attention at 16), printing a markdown table.
# Usage: scripts/bench.sh [extra ddpm bench flags, e.g. --seconds 5 --threads 2]
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j "$(nproc)" --target ddpm >/dev/null
bin=build-bench/ddpm

# field OBJECT KEY JSON [FORMAT]: the number KEY inside the flat object OBJECT
# ("" for the top level), printed with FORMAT (default %.1f)
field() {
    local s=$3
    if [ -n "$1" ]; then
        s=${s#*\"$1\":\{}
        s=${s%%\}*}
    fi
    s=${s#*\"$2\":}
    s=${s%%[,\}]*}
    printf "${4:-%.1f}" "$s"
}

models=("default (28x28x1, ch 32, attn 14)|"
        "32x32x3, ch 64, attn 16|--size 32 --channels 3 --ch 64 --attn 16")
echo "| model | batch | threads | train ms/step | train images/s | train GFLOP/s | sample ms/step | sample images/s | sample GFLOP/s | sgemm 1024^3 GFLOP/s | train/sgemm | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
core=""
for m in "${models[@]}"; do
    name=${m%%|*}
    flags=${m#*|}
    # shellcheck disable=SC2086
    j=$("$bin" bench $flags --json "$@")
    core=${j#*\"openblas_coretype\":\"}
    core=${core%%\"*}
    echo "| $name | $(field "" batch "$j" %d) | $(field "" threads "$j" %d) | $(field train ms_per_step "$j") |" \
         "$(field train images_per_sec "$j") | $(field train gflops "$j") | $(field sample_forward ms_per_step "$j") |" \
         "$(field sample_forward images_per_sec "$j") | $(field sample_forward gflops "$j") |" \
         "$(field sgemm gflops_1024 "$j") | $(field "" train_vs_sgemm "$j" %.2f) |" \
         "$(field "" peak_rss_mb "$j") |"
done
echo
echo "OPENBLAS_CORETYPE: ${core:-(OpenBLAS default)}; command: scripts/bench.sh $*"
