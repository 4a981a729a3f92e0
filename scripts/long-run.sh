#!/usr/bin/env bash
# One default Fashion-MNIST run, trained in links by a step budget, keeping the
# EMA weights at each link's end (runs/fm/ema-STEP.safetensors), with the
# held-out loss and the fast bound in log.jsonl every 200 steps. Training is
# deterministic whatever --threads is and across --resume (docs/reliability.md),
# so a link's weights are the same whether the run was cut there or not, and
# the budgets are steps, not minutes: a busy machine only delays it.
#
#   scripts/long-run.sh [RUN_DIR] [STEP ...]     # default runs/fm 800 1600 4800
#
# The bits/dim rows of docs/experiments.md evaluate these files with ddpm eval.
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/fm}"
shift || true
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(800 1600 4800)
ddpm="${DDPM:-build/ddpm}"
data=data/fashion-mnist
flags=(--save-every 200 --sample-every 400 --preview-n 16
       --eval-dir "$data/test" --eval-every 200 --eval-n 256 --eval-mc 4 --quiet)

for s in "${steps[@]}"; do
    if [ -f "$run/ema-$s.safetensors" ]; then
        echo "long-run: $run/ema-$s.safetensors exists"
        continue
    fi
    start=$(date +%s)
    if [ -f "$run/checkpoint.safetensors" ]; then
        "$ddpm" train "$data/train" --out "$run" --resume --steps "$s" "${flags[@]}"
    else
        "$ddpm" train "$data/train" --out "$run" --steps "$s" "${flags[@]}"
    fi
    "$ddpm" export "$run" "$run/ema-$s.safetensors"
    echo "long-run: step $s, link took $(( $(date +%s) - start )) s: $run/ema-$s.safetensors"
done
