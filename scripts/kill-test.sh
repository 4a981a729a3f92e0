#!/usr/bin/env bash
# Kill test: SIGKILLs a tiny training run at random times, N times, and checks
# that nothing is ever lost.
#
#   scripts/kill-test.sh [N] [DDPM]     (N kills, default 100; DDPM default build/ddpm)
#
# Each run trains to STEPS (default 200) steps, checkpointing and logging every
# step, and is killed (kill -9) after a random 0.05-0.6 s, then started again
# with --resume. After every kill the checkpoint must load (ddpm info) and never
# hold fewer steps than before. When a run reaches STEPS, its folder must hold no
# temporary file and its log.jsonl every step 1..STEPS exactly once, with the
# same step, loss, lr and grad_norm as an uninterrupted run of the same flags
# (same seed and --threads: the same numbers, so nothing was lost or repeated);
# then a new run starts. Exits non-zero at the first violation.
set -euo pipefail
N=${1:-100}
DDPM=$(realpath "${2:-build/ddpm}")
STEPS=${STEPS:-200}
TEST=kill-test
. "$(dirname "$0")/tiny-run.sh"

"$DDPM" train data --out reference "${model[@]}" "${flags[@]}"
numbers reference/log.jsonl > reference.txt
[ "$(wc -l < reference.txt)" -eq "$STEPS" ] || fail "the reference run logged $(wc -l < reference.txt) steps"

start=$(date +%s)
kills=0 runs=1 last=0 stale_seen=0
while [ "$kills" -lt "$N" ]; do
    if [ -e run/checkpoint.safetensors ]; then resume=(--resume); else resume=("${model[@]}"); fi
    "$DDPM" train data --out run "${resume[@]}" "${flags[@]}" &
    pid=$!
    sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.3f", 0.05 + 0.55 * rand() }')"
    if kill -9 "$pid" 2>/dev/null; then
        kills=$((kills + 1))
    fi
    wait "$pid" 2>/dev/null || true
    stale_seen=$((stale_seen + $(find run -name '*.tmp.*' 2>/dev/null | wc -l)))
    if [ -e run/checkpoint.safetensors ]; then
        step=$(ckpt_step run) || fail "after kill $kills the checkpoint does not load"
        [ "$step" -ge "$last" ] || fail "after kill $kills the checkpoint went back from step $last to $step"
        last=$step
    fi
    if [ "$last" -ge "$STEPS" ]; then
        # finished: one more start finds it done and cleans up after the last kill
        "$DDPM" train data --out run --resume "${flags[@]}" || fail "the finished run does not resume"
        [ -z "$(find run -name '*.tmp.*')" ] || fail "temporary files left: $(find run -name '*.tmp.*')"
        numbers run/log.jsonl > run.txt
        cmp -s run.txt reference.txt || fail "run $runs: log differs from the uninterrupted run: $(diff run.txt reference.txt | head -5)"
        rm -rf run
        runs=$((runs + 1)) last=0
    fi
done
# the run in progress: finish it and check it too (the last kill may have come
# before its first checkpoint, or before its folder existed: start it as the
# loop does then)
if [ -e run/checkpoint.safetensors ]; then resume=(--resume); else resume=("${model[@]}"); fi
"$DDPM" train data --out run "${resume[@]}" "${flags[@]}" || fail "the last run does not finish"
[ -z "$(find run -name '*.tmp.*')" ] || fail "temporary files left after the last run"
numbers run/log.jsonl > run.txt
cmp -s run.txt reference.txt || fail "the last run's log differs from the uninterrupted run"
echo "kill-test: $kills SIGKILLs over $runs runs of $STEPS steps in $(( $(date +%s) - start )) s:" \
     "every checkpoint loaded, every run resumed to the same numbers as an uninterrupted one," \
     "no temporary file or repeated log step remained ($stale_seen left by kills, removed on restart)"
