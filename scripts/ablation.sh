#!/usr/bin/env bash
# The DDPM paper's Table 2 ablation (what the network predicts, what it is
# trained on) at a fixed step budget: one `ddpm train` per row on the training
# folder, then a held-out evaluation of the row's EMA weights on the test folder,
# and a markdown table of the results.
#
# Rows (Ho et al. 2020, Table 2; learned diagonal Sigma is Nichol & Dhariwal's
# interpolation between beta_t and beta~_t, docs/experiments.md):
#   mu~ prediction, L (true bound), learned diagonal Sigma: --prediction mu  --loss vlb --learn-sigma
#   mu~ prediction, L (true bound), fixed isotropic Sigma:  --prediction mu  --loss vlb
#   mu~ prediction, MSE to mu~:                             --prediction mu  --loss simple
#   eps prediction, L, learned diagonal Sigma:              --prediction eps --loss vlb --learn-sigma
#   eps prediction, L, fixed isotropic Sigma:               --prediction eps --loss vlb
#   eps prediction, MSE to eps (L_simple):                  --prediction eps --loss simple
# and with --extra the later ones: x0, v, eps with min-SNR-5, hybrid (fixed and
# learned Sigma).
#
# Held-out numbers come from `ddpm eval` (the variational bound in bits/dim and
# L_simple of the eps the output converts to, on --eval-n test images) when this
# ddpm has it; otherwise the table has the training loss of the last logged
# steps only, and says so.
#
# Usage: scripts/ablation.sh [--data DIR] [--steps N] [--out DIR] [--eval-n N]
#                            [--mc K] [--extra] [--rows A,B] [--threads N] [-- TRAIN_FLAGS...]
#   --data DIR    folder with train/ and test/ (default data/fashion-mnist,
#                 scripts/fetch-fashion-mnist.sh writes it)
#   --steps N     training steps per row (default 2000)
#   --out DIR     runs and the table: DIR/<row>/, DIR/table.md (default runs/ablation)
#   --eval-n N    held-out images (default 500)
#   --mc K        ddpm eval --mc K (an unbiased estimate of the bound from K
#                 steps per image; default 50; 0: the exact bound over all T)
#   --extra       also the x0, v, min-SNR and hybrid rows
#   --rows A,B    only these rows (their names: the folders under --out)
#   --threads N   threads of each ddpm call (default: all cores)
#   TRAIN_FLAGS   passed to every `ddpm train` (e.g. a smaller model: --ch 16)
# A row whose run folder already holds a checkpoint is not trained again, and
# its evaluation is reused when eval.json is newer than the checkpoint and was
# made with the same --eval-n and --mc; so an interrupted ablation continues,
# and a second call with --extra adds rows to the same table.
set -euo pipefail
cd "$(dirname "$0")/.."

data=data/fashion-mnist steps=2000 out=runs/ablation eval_n=500 mc=50 extra=0 threads=0 only=
while [ $# -gt 0 ]; do
    case $1 in
        --data) data=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --eval-n) eval_n=$2; shift 2 ;;
        --mc) mc=$2; shift 2 ;;
        --extra) extra=1; shift ;;
        --rows) only=",$2,"; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "ablation.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
train_flags=("$@")
for d in "$data/train" "$data/test"; do
    [ -d "$d" ] || { echo "ablation.sh: $d: no such folder (scripts/fetch-fashion-mnist.sh)" >&2; exit 1; }
done

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target ddpm >/dev/null
bin=build/ddpm
thread_flag=() mc_flag=() mc_text="exact, all T terms"
[ "$threads" != 0 ] && thread_flag=(--threads "$threads")
[ "$mc" != 0 ] && mc_flag=(--mc "$mc") mc_text="--mc $mc"
have_eval=0
"$bin" eval --help >/dev/null 2>&1 && have_eval=1

# name;Table 2 row;flags
rows=(
    "mu-vlb-learned;mu~ prediction, L, learned diagonal Sigma;--prediction mu --loss vlb --learn-sigma"
    "mu-vlb;mu~ prediction, L, fixed isotropic Sigma;--prediction mu --loss vlb"
    "mu-mse;mu~ prediction, MSE(mu~, mu~_theta);--prediction mu --loss simple"
    "eps-vlb-learned;eps prediction, L, learned diagonal Sigma;--prediction eps --loss vlb --learn-sigma"
    "eps-vlb;eps prediction, L, fixed isotropic Sigma;--prediction eps --loss vlb"
    "eps-simple;eps prediction, MSE(eps, eps_theta) = L_simple;--prediction eps --loss simple"
)
if [ "$extra" = 1 ]; then
    rows+=(
        "x0-simple;x0 prediction, MSE(x0, x0_theta) (not in the paper);--prediction x0 --loss simple"
        "v-simple;v prediction, MSE(v, v_theta) (not in the paper);--prediction v --loss simple"
        "eps-minsnr5;eps prediction, L_simple with min-SNR-5 (not in the paper);--prediction eps --snr-weighting min-snr:5"
        "eps-hybrid;eps prediction, L_simple + 0.001 L (not in the paper);--prediction eps --loss hybrid"
        "eps-hybrid-learned;eps prediction, L_hybrid, learned diagonal Sigma (Nichol & Dhariwal, not in the paper);--prediction eps --loss hybrid --learn-sigma"
    )
fi

json_field() { # json_field KEY < json: the number of "KEY":number
    sed -n "s/.*\"$1\":\([-0-9.eE+naif]*\).*/\1/p" | head -n 1
}

mkdir -p "$out"
table="$out/table.md"
t_start=$(date +%s)
{
    echo "Budget: $steps steps per row; train flags: ${train_flags[*]:-(defaults)}; seed 0."
    if [ "$have_eval" = 1 ]; then
        echo "Held-out: ddpm eval on $eval_n images of $data/test (EMA weights; bound: $mc_text)."
        echo
        echo "| Table 2 row | flags | held-out L_simple | bits/dim (bound) | train s |"
        echo "|---|---|---|---|---|"
    else
        echo "This ddpm has no \`ddpm eval\`: the last column is the TRAINING objective of the last logged steps, not a held-out number."
        echo
        echo "| Table 2 row | flags | training objective (last 50 steps) | train s |"
        echo "|---|---|---|---|"
    fi
} > "$table"
for row in "${rows[@]}"; do
    IFS=';' read -r name label flags <<< "$row"
    [ -n "$only" ] && [[ "$only" != *",$name,"* ]] && continue
    run="$out/$name"
    if [ ! -f "$run/checkpoint.safetensors" ]; then
        echo "ablation.sh: training $name ($flags) for $steps steps" >&2
        t0=$(date +%s)
        # shellcheck disable=SC2086
        "$bin" train "$data/train" --out "$run" --steps "$steps" --seed 0 --preview-n 0 --save-every 0 \
            --log-every 50 --quiet "${thread_flag[@]}" $flags "${train_flags[@]}"
        echo $(( $(date +%s) - t0 )) > "$run/train_seconds"
    fi
    secs=$(cat "$run/train_seconds" 2>/dev/null || echo "?")
    if [ "$have_eval" = 1 ]; then
        key="n $eval_n mc $mc"
        if [ "$run/eval.json" -nt "$run/checkpoint.safetensors" ] && [ "$(cat "$run/eval.key" 2>/dev/null)" = "$key" ]; then
            ev=$(cat "$run/eval.json")
        else
            echo "ablation.sh: evaluating $name" >&2
            ev=$("$bin" eval "$run" "$data/test" --n "$eval_n" "${mc_flag[@]}" --seed 0 --json --quiet "${thread_flag[@]}")
            echo "$ev" > "$run/eval.json"
            echo "$key" > "$run/eval.key"
        fi
        ls=$(json_field l_simple <<< "$ev") bpd=$(json_field bpd_total <<< "$ev") se=$(json_field bpd_stderr <<< "$ev")
        printf '| %s | `%s` | %.4f | %.3f +- %.3f | %s |\n' "$label" "$flags" "$ls" "$bpd" "$se" "$secs" >> "$table"
    else
        loss=$(tail -n 1 "$run/log.jsonl" | json_field loss)
        printf '| %s | `%s` | %.4f | %s |\n' "$label" "$flags" "$loss" "$secs" >> "$table"
    fi
done
echo >> "$table"
echo "Total time: $(( $(date +%s) - t_start )) s on $(nproc) cores ($(date -u +%Y-%m-%d))." >> "$table"
cat "$table"
