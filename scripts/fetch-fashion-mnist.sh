#!/usr/bin/env bash
# Writes Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) as PNG folders for `ddpm train`:
#   data/fashion-mnist/train/  60,000 28x28 gray PNGs (00000.png ...)
#   data/fashion-mnist/test/   10,000
# from the Debian package dataset-fashion-mnist (installed if missing, through
# scripts/setup.sh: as root or with sudo). Builds build/ddpm if it is missing.
# A folder that already holds the right number of PNGs is left alone; each folder
# is written under a temporary name and renamed when complete, so an interrupted
# run leaves no half folder behind.
#
# Usage: scripts/fetch-fashion-mnist.sh [--labels]
#   --labels  write data/fashion-mnist/by-label/{train,test}/<label>/NNNNN.png instead
#             (labels 0..9: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal,
#             Shirt, Sneaker, Bag, Ankle boot)
set -euo pipefail
cd "$(dirname "$0")/.."

labels=0
case "${1:-}" in
    "") ;;
    --labels) labels=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fetch-fashion-mnist: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac

src=/usr/share/datasets/fashion-mnist
dest=data/fashion-mnist
[ "$labels" = 1 ] && dest=data/fashion-mnist/by-label

if [ ! -f "$src/train-images-idx3-ubyte.gz" ] || [ ! -f "$src/t10k-images-idx3-ubyte.gz" ]; then
    scripts/setup.sh dataset-fashion-mnist
fi
if ! build/ddpm convert --help >/dev/null 2>&1; then # missing, or built before convert existed
    scripts/setup.sh
    echo "fetch-fashion-mnist: building build/ddpm"
    cmake -S . -B build >/dev/null
    cmake --build build -j "$(nproc)"
fi

count_pngs() { # number of .png files under $1 (0 if it does not exist)
    if [ -d "$1" ]; then find "$1" -type f -name '*.png' | wc -l; else echo 0; fi
}

tmp=""
labels_tmp=""
cleanup() {
    if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
    if [ -n "$labels_tmp" ]; then rm -f "$labels_tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$dest"
for split in train:train:60000 test:t10k:10000; do
    IFS=: read -r name prefix expected <<<"$split"
    out="$dest/$name"
    have=$(count_pngs "$out")
    if [ "$have" -eq "$expected" ]; then
        echo "fetch-fashion-mnist: $out already has $expected PNGs"
        continue
    fi
    tmp="$dest/.$name.tmp.$$"
    rm -rf "$tmp"
    echo "fetch-fashion-mnist: writing $out ($expected images)"
    label_args=()
    if [ "$labels" = 1 ]; then
        labels_tmp="$dest/.$name.labels.$$"
        gunzip -c "$src/$prefix-labels-idx1-ubyte.gz" >"$labels_tmp"
        label_args=(--labels "$labels_tmp")
    fi
    gunzip -c "$src/$prefix-images-idx3-ubyte.gz" | build/ddpm convert - "$tmp" --quiet "${label_args[@]}"
    if [ -n "$labels_tmp" ]; then rm -f "$labels_tmp"; labels_tmp=""; fi
    got=$(count_pngs "$tmp")
    if [ "$got" -ne "$expected" ]; then
        echo "fetch-fashion-mnist: $tmp: wrote $got PNGs, expected $expected" >&2
        exit 1
    fi
    if [ -e "$out" ]; then # incomplete from elsewhere: replace it only now that the new one is whole
        echo "fetch-fashion-mnist: replacing $out (had $have PNGs)"
        mv "$out" "$out.old.$$"
        mv "$tmp" "$out"
        rm -rf "$out.old.$$"
    else
        mv "$tmp" "$out"
    fi
    tmp=""
done
echo "fetch-fashion-mnist: $dest/train: $(count_pngs "$dest/train") PNGs, $dest/test: $(count_pngs "$dest/test") PNGs"
