#!/usr/bin/env bash
# The figures of docs/speed.md on MPI scaling and on
# --micro-batch, measured in one invocation with `ddpm train` on a data folder:
#   1. training speed of one process with T threads against T processes with one
#      thread each (mpirun --bind-to none, so the one process may use every core),
#      alternating the two for --rounds rounds; steps/s from log.jsonl, the first
#      logged interval (start-up) left out;
#   2. peak RSS (/usr/bin/time -v) of a short `ddpm train` at --batch 64 with and
#      without --micro-batch 16;
#   3. the bytes one step's all-reduce moves for the default model and a 32x32x3
#      ch 64 model, and what a ring all-reduce of them would take over 10 and
#      100 Gbit/s links (a model: 2 (N-1)/N x bytes / bandwidth, no latency).
#
# Usage: scripts/bench-mpi.sh DATA_DIR [--threads T] [--steps N] [--rounds R]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: scripts/bench-mpi.sh DATA_DIR [--threads T] [--steps N] [--rounds R]}
shift
threads=2 steps=12 rounds=2
while [ $# -gt 0 ]; do
    case $1 in
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "bench-mpi.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j "$(nproc)" --target ddpm >/dev/null
bin=$PWD/build-bench/ddpm
work=$(mktemp -d /tmp/ddpm-bench-mpi-XXXXXX)
trap 'rm -rf "$work"' EXIT
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
common=(--steps "$steps" --log-every 4 --save-every 0 --preview-n 0 --quiet)

# steps/s over the logged intervals after the first: (steps) / (elapsed difference)
rate() {
    awk -F'[:,]' '{for (i = 1; i < NF; i++) { if ($i ~ /"step"/) s = $(i+1); if ($i ~ /"elapsed"/) e = $(i+1) }
                   if (NR == 1) { s0 = s; e0 = e } } END { printf "%.3f", (s - s0) / (e - e0) }' "$1"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine: figures are noisy)"
echo
echo "1. default model, batch 64, $steps steps: steps/s"
for r in $(seq 1 "$rounds"); do
    mpirun "${root[@]}" --bind-to none -np 1 "$bin" train "$data" --out "$work/a$r" --threads "$threads" "${common[@]}"
    mpirun "${root[@]}" --bind-to none --oversubscribe -np "$threads" "$bin" train "$data" --out "$work/b$r" \
        --threads 1 "${common[@]}"
    printf "   round %d: -np 1 --threads %d: %s steps/s   -np %d --threads 1: %s steps/s\n" "$r" "$threads" \
        "$(rate "$work/a$r/log.jsonl")" "$threads" "$(rate "$work/b$r/log.jsonl")"
done

echo
echo "2. peak RSS of ddpm train, batch 64, 3 steps, $threads threads"
for mb in 0 16; do
    flag=()
    [ "$mb" -gt 0 ] && flag=(--micro-batch "$mb")
    /usr/bin/time -v "$bin" train "$data" --out "$work/rss$mb" --threads "$threads" --batch 64 --steps 3 \
        --save-every 0 --preview-n 0 --quiet "${flag[@]}" 2>"$work/time$mb.txt"
    kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/time$mb.txt")
    printf "   %-18s %6.0f MiB\n" "${flag[*]:-whole batch}" "$(echo "$kb / 1024" | bc -l)"
done

echo
echo "3. all-reduce per step (n_params x 4 bytes + 4 x 4 bytes of step scalars)"
for model in "default 28x28x1|--size 28 --channels 1" "32x32x3 ch 64|--size 32 --channels 3 --ch 64 --attn 16"; do
    name=${model%%|*}
    flags=${model#*|}
    # shellcheck disable=SC2086
    n=$("$bin" bench --json --seconds 0.01 --batch 1 $flags 2>/dev/null | grep -o '"params":[0-9]*' | cut -d: -f2)
    bytes=$((n * 4 + 16))
    awk -v name="$name" -v n="$n" -v b="$bytes" 'BEGIN {
        printf "   %-16s %9d params  %5.2f MB/step", name, n, b / 1e6
        for (k = 0; k < 2; k++) { gbit = k ? 100 : 10
            printf "   ring (model), %3d Gbit/s: N=2 %5.2f ms, N=8 %5.2f ms", gbit, 2 * 1 / 2 * b * 8 / (gbit * 1e9) * 1e3,
                   2 * 7 / 8 * b * 8 / (gbit * 1e9) * 1e3 }
        printf "\n" }'
done
