#!/usr/bin/env bash
# Write-failure test: makes every file write of a tiny training run fail at a
# random byte, N times, and checks that nothing is ever lost.
#
#   scripts/write-fail-test.sh [N] [DDPM]     (N failures, default 100; DDPM default build/ddpm)
#
# Each attempt resumes the run under `prlimit --fsize=L` with L drawn between
# 1 byte and 1.2 checkpoints, checkpointing and logging every step, so a
# checkpoint or a log line hits the limit (a full disk looks the same to ddpm:
# a short write or an error). Every attempt must end with exit 1 and exactly
# one error line on stderr (warnings off) naming the file and "File too large" (or exit 0 when the
# limit let it finish); after it the checkpoint must load, never hold fewer
# steps than before, and no temporary file may remain. When the run reaches
# STEPS (default 60), its log.jsonl must hold every step exactly once with the
# same numbers as an uninterrupted run; then a new run starts. Exits non-zero
# at the first violation.
set -euo pipefail
N=${1:-100}
DDPM=$(realpath "${2:-build/ddpm}")
STEPS=${STEPS:-60}
command -v prlimit >/dev/null || { echo "write-fail-test: needs prlimit (util-linux)" >&2; exit 1; }
TEST=write-fail-test
. "$(dirname "$0")/tiny-run.sh"

"$DDPM" train data --out reference "${model[@]}" "${flags[@]}"
numbers reference/log.jsonl > reference.txt
ckpt_bytes=$(stat -c %s reference/checkpoint.safetensors)

start=$(date +%s)
failures=0 finished=0 runs=1 last=0 RANDOM=1
"$DDPM" train data --out run "${model[@]}" "${flags[@]}" --steps 1
while [ "$failures" -lt "$N" ]; do
    limit=$(( (RANDOM * 32768 + RANDOM) % (ckpt_bytes * 6 / 5) + 1 ))
    rc=0
    prlimit --fsize="$limit" "$DDPM" train data --out run --resume "${flags[@]}" --no-warnings 2> err.txt || rc=$?
    if [ "$rc" = 1 ]; then
        failures=$((failures + 1))
        [ "$(wc -l < err.txt)" = 1 ] || fail "limit $limit: stderr is not one line: $(cat err.txt)"
        grep -q '^ddpm: .*File too large' err.txt || fail "limit $limit: unexpected error: $(cat err.txt)"
    elif [ "$rc" = 0 ]; then
        finished=$((finished + 1))
    else
        fail "limit $limit: exit $rc: $(cat err.txt)"
    fi
    [ -z "$(find run -name '*.tmp.*')" ] || fail "limit $limit: temporary file left: $(find run -name '*.tmp.*')"
    step=$(ckpt_step run) || fail "limit $limit: the checkpoint does not load"
    [ "$step" -ge "$last" ] || fail "limit $limit: the checkpoint went back from step $last to $step"
    last=$step
    if [ "$last" -ge "$STEPS" ]; then
        numbers run/log.jsonl > run.txt
        cmp -s run.txt reference.txt || fail "run $runs: log differs from the uninterrupted run: $(diff run.txt reference.txt | head -5)"
        rm -rf run
        "$DDPM" train data --out run "${model[@]}" "${flags[@]}" --steps 1
        runs=$((runs + 1)) last=0
    fi
done
"$DDPM" train data --out run --resume "${flags[@]}"
numbers run/log.jsonl > run.txt
cmp -s run.txt reference.txt || fail "the last run's log differs from the uninterrupted run: $(diff run.txt reference.txt | head -5)"
echo "write-fail-test: $failures failed writes (file-size limits of 1 to $((ckpt_bytes * 6 / 5)) bytes;" \
     "$finished attempts finished under their limit) over $runs runs of $STEPS steps in $(( $(date +%s) - start )) s:" \
     "each one error line, every checkpoint loaded and never went back, no temporary file," \
     "every run's log equal to an uninterrupted run's"
