# Sourced by scripts/kill-test.sh and scripts/write-fail-test.sh: the tiny run
# they torment. Expects DDPM (the binary), STEPS and TEST (the script's name for
# its messages); makes a work folder (removed on exit) holding `data` (8 images
# of 8 x 8 through ddpm convert) and cds into it; defines `model` and `flags`
# (checkpoint and log every step, one thread) and fail, numbers (the step, loss,
# lr and grad_norm of each log line; the rest is timing) and ckpt_step.
work=$(mktemp -d "/tmp/ddpm-$TEST-XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
{
    printf '\x00\x00\x08\x03\x00\x00\x00\x08\x00\x00\x00\x08\x00\x00\x00\x08'
    awk 'BEGIN { for (i = 0; i < 512; i++) printf "%c", (i * 37 + int(i / 64) * 91) % 256 }'
} > images.idx
LC_ALL=C "$DDPM" convert images.idx data --quiet
model=(--ch 8 --ch-mult 1,2 --res-blocks 1 --attn '' --groups 4 --timesteps 50 --batch 2 --size 8)
flags=(--threads 1 --save-every 1 --log-every 1 --preview-n 0 --steps "$STEPS" --quiet)

fail() { echo "$TEST: FAIL: $*" >&2; exit 1; }
numbers() { sed 's/,"images_per_sec".*//' "$1"; }
ckpt_step() { "$DDPM" info "$1" --json | awk -F'[:,]' '/"step":/ { gsub(/[ \t]/, "", $2); print $2; exit }'; }
