#!/usr/bin/env bash
# Side-by-side speed and memory: `ddpm bench` against the same network in PyTorch
# (bench/torch_bench.py, Debian's python3-torch), on the same machine, in the same
# invocation, alternating ddpm and PyTorch (A B A B ...) so that a drift in the
# machine's speed affects both. Prints one row per round and a summary of medians,
# with the ratios taken round by round.
#
# Both programs run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from the
# environment (env -u): a user's machine sets neither. ddpm then picks its OpenBLAS
# kernels itself (SkylakeX on an AVX-512 CPU, see docs/speed.md); PyTorch uses
# oneDNN for its convolutions.
#
# Usage: scripts/bench.sh [--rounds N] [--seconds S] [--threads N] [--models LIST]
#                         [--no-torch]
#   --rounds N     ddpm/PyTorch pairs per model (default 3)
#   --seconds S    timed seconds per phase in each program (default 5)
#   --threads N    threads for both (default 2)
#   --models LIST  comma list of: default, rgb32, rgb64 (default: all three)
#   --no-torch     ddpm only (also when python3-torch is not installed)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 seconds=5 threads=2 models=default,rgb32,rgb64 torch=1
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --models) models=$2; shift 2 ;;
        --no-torch) torch=0; shift ;;
        *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-bench -j "$(nproc)" --target ddpm >/dev/null
bin=build-bench/ddpm
py=/usr/bin/python3
if [ "$torch" = 1 ] && ! "$py" -c 'import torch' 2>/dev/null; then
    echo "bench.sh: PyTorch not found (apt-get install python3-torch): timing ddpm alone"
    torch=0
fi

# field OBJECT KEY JSON: the number KEY inside the flat object OBJECT ("" for top level)
field() {
    local s=$3
    if [ -n "$1" ]; then
        s=${s#*\"$1\": \{}; s=${s#*\"$1\":\{}
        s=${s%%\}*}
    fi
    s=${s#*\"$2\":}
    s=${s# }
    s=${s%%[,\}]*}
    printf '%s' "$s"
}
median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

model_flags() {
    case $1 in
        default) echo "--batch 64" ;;
        rgb32) echo "--size 32 --channels 3 --ch 64 --attn 16 --batch 64" ;;
        rgb64) echo "--size 64 --channels 3 --ch 64 --attn 16 --batch 16" ;;
        *) echo "bench.sh: unknown model $1 (default, rgb32, rgb64)" >&2; exit 2 ;;
    esac
}
model_name() {
    case $1 in
        default) echo "default (28x28x1, ch 32, attn 14)" ;;
        rgb32) echo "32x32x3, ch 64, attn 16" ;;
        rgb64) echo "64x64x3, ch 64, attn 16" ;;
    esac
}

run_clean() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@"; }

echo "Same machine, same invocation; OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for both programs."
echo "$(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); threads $threads; $seconds s per phase; $rounds rounds (ddpm, PyTorch alternating)"
[ "$torch" = 1 ] && echo "PyTorch $("$py" -c 'import torch; print(torch.__version__)')"
echo
summary=()
IFS=, read -ra mlist <<<"$models"
for m in "${mlist[@]}"; do
    flags=$(model_flags "$m")
    tmp=$(mktemp -d)
    echo "### $(model_name "$m"), $flags"
    echo "| round | ddpm train img/s | PyTorch train img/s | ddpm sample img-steps/s | PyTorch sample img-steps/s | ddpm peak RSS MB | PyTorch peak RSS MB |"
    echo "|---|---|---|---|---|---|---|"
    for r in $(seq 1 "$rounds"); do
        # shellcheck disable=SC2086
        j=$(run_clean "$bin" bench $flags --threads "$threads" --seconds "$seconds" --json)
        dt=$(field train images_per_sec "$j"); ds=$(field sample_forward images_per_sec "$j")
        dm=$(field "" peak_rss_mb "$j"); core=$(j=${j#*\"openblas_coretype\":\"}; echo "${j%%\"*}")
        echo "$dt" >>"$tmp/dt"; echo "$ds" >>"$tmp/ds"; echo "$dm" >>"$tmp/dm"
        pt=- ps=- pm=-
        if [ "$torch" = 1 ]; then
            # shellcheck disable=SC2086
            p=$(run_clean "$py" bench/torch_bench.py $flags --threads "$threads" --seconds "$seconds")
            pt=$(field train images_per_sec "$p"); ps=$(field sample_forward images_per_sec "$p")
            pm=$(field "" peak_rss_mb "$p")
            echo "$pt" >>"$tmp/pt"; echo "$ps" >>"$tmp/ps"; echo "$pm" >>"$tmp/pm"
            awk -v a="$dt" -v b="$pt" 'BEGIN {print a / b}' >>"$tmp/rt"
            awk -v a="$ds" -v b="$ps" 'BEGIN {print a / b}' >>"$tmp/rs"
            awk -v a="$dm" -v b="$pm" 'BEGIN {print a / b}' >>"$tmp/rm"
        fi
        if [ "$torch" = 1 ]; then
            printf '| %d | %.1f | %.1f | %.1f | %.1f | %.0f | %.0f |\n' "$r" "$dt" "$pt" "$ds" "$ps" "$dm" "$pm"
        else
            printf '| %d | %.1f | - | %.1f | - | %.0f | - |\n' "$r" "$dt" "$ds" "$dm"
        fi
    done
    med() { if [ -s "$tmp/$1" ]; then printf "%.${2:-1}f%s" "$(median <"$tmp/$1")" "${3:-}"; else echo -; fi; }
    summary+=("$(printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |' \
        "$(model_name "$m")" "${flags##*--batch }" "$(med dt)" "$(med pt)" "$(med rt 2 x)" \
        "$(med ds)" "$(med ps)" "$(med rs 2 x)" "$(med dm 0)" "$(med pm 0)" "$(med rm 2 x)")")
    rm -rf "$tmp"
    echo
done
echo "### Medians over $rounds rounds (ratios: ddpm / PyTorch, taken round by round)"
echo "| model | batch | ddpm train img/s | PyTorch train img/s | train ratio | ddpm sample img-steps/s | PyTorch sample img-steps/s | sample ratio | ddpm peak RSS MB | PyTorch peak RSS MB | RSS ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
echo
echo "ddpm's OpenBLAS kernels: ${core:-(OpenBLAS default)}; command: scripts/bench.sh --rounds $rounds --seconds $seconds --threads $threads --models $models$([ "$torch" = 1 ] || echo ' --no-torch')"
