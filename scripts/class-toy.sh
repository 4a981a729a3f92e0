#!/bin/sh
# How far the class label moves a sample: the 2-class toy of docs/experiments.md
# (Class conditioning). Two folders of 16x16 gray images, "dark" (pixels around
# 50) and "bright" (around 200), each image a random smooth texture; a tiny
# class-conditional model per configuration, trained the same number of steps
# with the same seed; then N samples of each class at guidance 1 and 3 (the
# default sampler) and their mean brightness. The figures per configuration:
# the label's effect, (mean of bright samples - mean of dark samples) divided by
# the same difference in the data (1 = the samples follow the label fully, 0 =
# the label does nothing), and the accuracy, the share of samples on their
# class's side of the midpoint between the two data means.
#
# usage: scripts/class-toy.sh [OUT_DIR]   (env: DDPM, STEPS, N, SEED, CONFIGS)
set -eu
DDPM=${DDPM:-build/ddpm}
OUT=${1:-/tmp/ddpm-class-toy}
STEPS=${STEPS:-1000}
N=${N:-32}
SEED=${SEED:-0}
TINY="--ch 8 --ch-mult 1,2 --res-blocks 1 --attn '' --groups 4 --batch 16 --preview-n 0 --threads 1 --quiet"
# name and the flags that differ
CONFIGS=${CONFIGS:-"zero:--class-emb-init=zero normal:--class-emb-init=normal adagn-zero:--scale-shift-norm,--class-emb-init=zero adagn-normal:--scale-shift-norm,--class-emb-init=normal"}

mkdir -p "$OUT"
PY=/usr/bin/python3
if [ ! -d "$OUT/data" ]; then
    "$PY" - "$OUT/data" <<'PYEOF'
import sys, os
import numpy as np
from PIL import Image
out = sys.argv[1]
rng = np.random.default_rng(1)
for name, level in (("dark", 50.0), ("bright", 200.0)):
    os.makedirs(os.path.join(out, name))
    for k in range(256):
        # a smooth random texture: 4x4 noise upsampled bilinearly, +-40 gray levels
        coarse = rng.normal(0.0, 1.0, (4, 4)).astype(np.float32)
        tex = np.asarray(Image.fromarray(coarse, mode="F").resize((16, 16), Image.BILINEAR))
        px = np.clip(level + 40.0 * tex / max(1e-6, np.abs(tex).max()), 0, 255).astype(np.uint8)
        Image.fromarray(px, mode="L").save(os.path.join(out, name, f"{k:03d}.png"))
PYEOF
fi

mean_of() { # mean gray level of the PNGs in a folder [and the share of images whose mean is above $2]
    "$PY" -c 'import sys, glob, numpy as np; from PIL import Image
fs = sorted(glob.glob(sys.argv[1] + "/*.png"))
m = [np.asarray(Image.open(f), dtype=np.float64).mean() for f in fs]
print("%.2f" % np.mean(m) + ("" if len(sys.argv) < 3 else " %.3f" % np.mean(np.array(m) > float(sys.argv[2]))))' "$@"
}

data_dark=$(mean_of "$OUT/data/dark")
data_bright=$(mean_of "$OUT/data/bright")
mid=$("$PY" -c "print(($data_dark + $data_bright) / 2)")
echo "data: dark $data_dark bright $data_bright (16x16 gray, 256 images each); $STEPS steps; seed $SEED; $N samples per class"
echo "config        guidance  dark   bright  effect  accuracy  train_s"
for cfg in $CONFIGS; do
    name=${cfg%%:*}
    flags=$(echo "${cfg#*:}" | tr ',' ' ')
    run="$OUT/run-$name-seed$SEED"
    t0=$(date +%s)
    if [ ! -f "$run/checkpoint.safetensors" ]; then
        eval "\"$DDPM\" train \"$OUT/data\" --classes --out \"$run\" $TINY --steps $STEPS --seed $SEED $flags"
    fi
    t1=$(date +%s)
    for w in 1 3; do
        for cls in dark bright; do
            rm -rf "$run/s-$cls-$w"
            "$DDPM" sample "$run" --n "$N" --class "$cls" --guidance "$w" --seed 1 --out-dir "$run/s-$cls-$w" \
                --no-grid --threads 1 --quiet
        done
        set -- $(mean_of "$run/s-dark-$w" "$mid")
        d=$1 d_above=$2
        set -- $(mean_of "$run/s-bright-$w" "$mid")
        b=$1 b_above=$2
        effect=$("$PY" -c "print('%.3f' % (($b - $d) / ($data_bright - $data_dark)))")
        accuracy=$("$PY" -c "print('%.3f' % ((1 - $d_above + $b_above) / 2))")
        printf '%-13s %-9s %-6s %-7s %-7s %-9s %s\n' "$name" "$w" "$d" "$b" "$effect" "$accuracy" "$((t1 - t0))"
    done
done
