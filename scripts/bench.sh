#!/usr/bin/env bash
# Side-by-side speed and memory: `ddpm bench` against the same network in PyTorch
# (bench/torch_bench.py, Debian's python3-torch), on the same machine, in the same
# invocation, alternating ddpm and PyTorch (A B A B ...) so that a drift in the
# machine's speed affects both. Prints one row per round and a summary of medians,
# with the ratios taken round by round.
#
# --isa native (the default) runs both programs as a user of this machine would:
# ddpm built with -march=native, OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed
# from the environment of both (env -u), so that OpenBLAS picks its kernels
# itself (SkylakeX on an AVX-512 CPU) and PyTorch uses oneDNN at the CPU's best.
# --isa avx2 runs both as on a CPU with AVX2 and FMA but no AVX-512 (Intel client
# CPUs since 2021, AMD before Zen 4): ddpm built in build-bench-avx2 with
# -DDDPM_NATIVE=OFF -DCMAKE_C_FLAGS=-march=haswell (checked to hold no zmm
# instruction) and both programs with OPENBLAS_CORETYPE=Haswell; PyTorch with
# ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 (DNNL_MAX_CPU_ISA for
# older oneDNN). The output states the setting.
#
# Usage: scripts/bench.sh [--isa native|avx2] [--precision fp32|bf16] [--rounds N]
#                         [--seconds S] [--threads N] [--models LIST] [--no-torch]
#   --isa I        native (default) or avx2, as above
#   --precision P  fp32 (default) or bf16: ddpm's training and sampling with bf16
#                  products (ddpm bench --precision bf16; needs AVX512_BF16);
#                  PyTorch stays float32 (Debian's PyTorch 1.13 under
#                  torch.autocast("cpu", bfloat16) stops in this network's
#                  GroupNorm: "expected scalar type BFloat16 but found Float")
#   --rounds N     ddpm/PyTorch pairs per model (default 3)
#   --seconds S    timed seconds per phase in each program (default 5)
#   --threads N    threads for both (default 2)
#   --models LIST  comma list of: default, rgb32, rgb64 (default: all three)
#   --no-torch     ddpm only (also when python3-torch is not installed)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 seconds=5 threads=2 models=default,rgb32,rgb64 torch=1 isa=native precision=fp32
while [ $# -gt 0 ]; do
    case $1 in
        --isa) isa=$2; shift 2 ;;
        --precision) precision=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --models) models=$2; shift 2 ;;
        --no-torch) torch=0; shift ;;
        *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

case $isa in
    native)
        bdir=build-bench
        cmake -S . -B $bdir -DCMAKE_BUILD_TYPE=Release -DDDPM_NATIVE=ON >/dev/null
        # both programs: OpenBLAS and oneDNN pick their kernels for this CPU
        run_ddpm() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@"; }
        run_torch() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@"; }
        setting="native: ddpm -march=native; OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for both programs (OpenBLAS and oneDNN choose for this CPU)" ;;
    avx2)
        bdir=build-bench-avx2
        cmake -S . -B $bdir -DCMAKE_BUILD_TYPE=Release -DDDPM_NATIVE=OFF -DCMAKE_C_FLAGS=-march=haswell >/dev/null
        run_ddpm() { env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=Haswell "$@"; }
        run_torch() {
            env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
                DNNL_MAX_CPU_ISA=AVX2 "$@"
        }
        setting="avx2 (a CPU without AVX-512): ddpm -DDDPM_NATIVE=OFF -march=haswell, OPENBLAS_CORETYPE=Haswell; PyTorch ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell" ;;
    *) echo "bench.sh: unknown --isa $isa (native, avx2)" >&2; exit 2 ;;
esac
case $precision in
    fp32|bf16) ;;
    *) echo "bench.sh: unknown --precision $precision (fp32, bf16)" >&2; exit 2 ;;
esac
cmake --build $bdir -j "$(nproc)" --target ddpm >/dev/null
bin=$bdir/ddpm
zmm=$(objdump -d "$bin" | grep -c '%zmm' || true)
if [ "$isa" = avx2 ] && [ "$zmm" != 0 ]; then
    echo "bench.sh: $bin holds $zmm AVX-512 instructions: not an AVX2 build" >&2
    exit 1
fi
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

echo "Same machine, same invocation; setting $setting."
[ "$precision" = bf16 ] && echo "ddpm: bf16 products in training and sampling (--precision bf16); PyTorch: float32"
echo "ddpm binary: $zmm zmm (AVX-512) instructions; load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
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
        j=$(run_ddpm "$bin" bench $flags --precision "$precision" --threads "$threads" --seconds "$seconds" --json)
        dt=$(field train images_per_sec "$j"); ds=$(field sample_forward images_per_sec "$j")
        dm=$(field "" peak_rss_mb "$j"); core=$(j=${j#*\"openblas_coretype\":\"}; echo "${j%%\"*}")
        kern=$(j=${j#*\"kernels\":\"}; echo "${j%%\"*}")
        echo "$dt" >>"$tmp/dt"; echo "$ds" >>"$tmp/ds"; echo "$dm" >>"$tmp/dm"
        pt=- ps=- pm=-
        if [ "$torch" = 1 ]; then
            # shellcheck disable=SC2086
            p=$(run_torch "$py" bench/torch_bench.py $flags --threads "$threads" --seconds "$seconds")
            pt=$(field train images_per_sec "$p"); ps=$(field sample_forward images_per_sec "$p")
            pm=$(field "" peak_rss_mb "$p")
            tcap=$(p=${p#*\"cpu_capability\":\"}; echo "${p%%\"*}")
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
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$torch" = 1 ] && echo "PyTorch's ATen CPU capability in use: ${tcap:-?}"
echo "ddpm's conv kernels: ${kern:-?}; OpenBLAS kernels: ${core:-(OpenBLAS default)}; command: scripts/bench.sh --isa $isa --precision $precision --rounds $rounds --seconds $seconds --threads $threads --models $models$([ "$torch" = 1 ] || echo ' --no-torch')"
