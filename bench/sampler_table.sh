#!/usr/bin/env bash
# Samples with every combination of samplers, spacings and step counts from one
# checkpoint, times each, measures the samples with bench/fmnist_fid.py, and
# prints one markdown table row per setting (docs/fmnist-fid.md).
#
# Usage: bench/sampler_table.sh RUN_DIR|CHECKPOINT [options]
#   --samplers LIST   comma-separated NAME[@FLAG=VALUE...]: NAME goes to --sampler,
#                     each @FLAG=VALUE adds --FLAG VALUE (default ddim@eta=1,ddim@eta=0),
#                     e.g. ddim@eta=0,dpm++2m,euler-a
#   --spacings LIST   comma-separated values of --spacing (default -: no --spacing flag)
#   --steps LIST      comma-separated --steps values (default 10,20,50,100; -: no --steps,
#                     as --sampler ddpm needs)
#   --n N             images per setting (default 1000)
#   --seed N          noise seed of every setting (default 0): image i starts from the
#                     same x_T in every setting
#   --rms             also the RMS distance of each setting's images from a reference
#                     made with the same seed by --rms-ref (the ODE's answer), in [-1, 1]
#                     units computed from the 8-bit PNGs (so it cannot resolve less than
#                     about 0.002, one gray level's 1/127.5 over sqrt(12))
#   --rms-ref SPEC    the reference sampler, NAME[@FLAG=VALUE...]
#                     (default ddim@eta=0@steps=1000)
#   --rms-n N         images in the RMS reference (default: --n); the RMS compares the
#                     first N images of each setting (with --per-class: all of them)
#   --per-class N     class-conditional models: N images of each class k = 0..9
#                     (--class k, seed + k) into DIR/k/, and the conditional accuracy
#   --extra "FLAGS"   more flags for every `ddpm sample` (e.g. "--guidance 3")
#   --ddpm PATH       the ddpm binary (default $DDPM, else build/ddpm of this repository)
#   --python PATH     Python with torch (default /usr/bin/python3)
#   --classifier PATH fmnist_fid.py's cached classifier (default: its own default)
#   --threads N       `ddpm sample --threads` (default: ddpm's default)
#   --keep DIR        keep the samples in DIR/<setting>/ (default: a temporary folder,
#                     removed at exit); a setting already sampled there with the same
#                     checkpoint, n, seed, --per-class and --extra is not sampled again
#                     (its time is the first run's), so an interrupted table resumes
#   --sample-only     sample (into --keep) and time, but do not measure
# Columns: the setting, network evaluations per image (ddpm's own count), ms per
# image (ddpm sample's own time, checkpoint loading excluded), domain FID, class
# entropy in bits, and RMS and accuracy when asked for. Exit status 1 if any setting
# failed (its row says so).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() { sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "sampler_table: $*" >&2; exit 2; }

samplers="ddim@eta=1,ddim@eta=0"
spacings="-"
steps_list="10,20,50,100"
n=1000
seed=0
rms=0
rms_ref="ddim@eta=0@steps=1000"
rms_n=""
per_class=0
extra=""
ddpm="${DDPM:-$here/../build/ddpm}"
python=/usr/bin/python3
classifier=""
threads=""
keep=""
sample_only=0
run=""
while [ $# -gt 0 ]; do
    case "$1" in
        --samplers) samplers="${2:?--samplers needs a list}"; shift ;;
        --spacings) spacings="${2:?--spacings needs a list}"; shift ;;
        --steps) steps_list="${2:?--steps needs a list}"; shift ;;
        --n) n="${2:?--n needs a number}"; shift ;;
        --seed) seed="${2:?--seed needs a number}"; shift ;;
        --rms) rms=1 ;;
        --rms-ref) rms_ref="${2:?--rms-ref needs a sampler}"; rms=1; shift ;;
        --rms-n) rms_n="${2:?--rms-n needs a number}"; rms=1; shift ;;
        --per-class) per_class="${2:?--per-class needs a number}"; shift ;;
        --extra) extra="${2?--extra needs flags}"; shift ;;
        --ddpm) ddpm="${2:?--ddpm needs a path}"; shift ;;
        --python) python="${2:?--python needs a path}"; shift ;;
        --classifier) classifier="${2:?--classifier needs a path}"; shift ;;
        --threads) threads="${2:?--threads needs a number}"; shift ;;
        --keep) keep="${2:?--keep needs a folder}"; shift ;;
        --sample-only) sample_only=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [ -z "$run" ] || die "one RUN_DIR|CHECKPOINT, got '$run' and '$1'"; run="$1" ;;
    esac
    shift
done
[ -n "$run" ] || die "missing RUN_DIR|CHECKPOINT (see --help)"
[ -e "$run" ] || { echo "sampler_table: $run: no such file or folder" >&2; exit 1; }
ckpt_file="$run"
[ -d "$run" ] && ckpt_file="$run/checkpoint.safetensors"
[ -f "$ckpt_file" ] || { echo "sampler_table: $ckpt_file: no such checkpoint" >&2; exit 1; }
[ -x "$ddpm" ] || { echo "sampler_table: $ddpm: not an executable ddpm (pass --ddpm or set DDPM)" >&2; exit 1; }
for v in "$n" "$seed" "$per_class" ${rms_n:+"$rms_n"} ${threads:+"$threads"}; do
    [[ "$v" =~ ^[0-9]+$ ]] || die "'$v' is not a whole number"
done
[ -n "$rms_n" ] || rms_n="$n"
[ "$rms_n" -le "$n" ] || die "--rms-n $rms_n is more than --n $n"
[ "$sample_only" = 0 ] || [ -n "$keep" ] || die "--sample-only needs --keep DIR (else the samples are thrown away)"

if [ -n "$keep" ]; then
    mkdir -p "$keep"
    work="$keep"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/sampler-table-XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi
read -r -a extra_args <<<"$extra"
common=(--seed "$seed" --no-grid --quiet --json)
[ -n "$threads" ] && common+=(--threads "$threads")
fid_args=(--json)
[ -n "$classifier" ] && fid_args+=(--classifier "$classifier")

# NAME@a=1@b=2 -> --sampler NAME --a 1 --b 2, one word per line
spec_flags() {
    local spec="$1" name rest kv
    name="${spec%%@*}"
    printf '%s\n' --sampler "$name"
    [ "$name" = "$spec" ] && return 0
    rest="${spec#*@}"
    IFS='@' read -r -a kvs <<<"$rest"
    for kv in "${kvs[@]}"; do
        [[ "$kv" == *=* ]] || die "'$kv' in '$spec' is not FLAG=VALUE"
        printf '%s\n' "--${kv%%=*}" "${kv#*=}"
    done
}

# sample SETTING_DIR N FLAGS...: the images of one setting (per class with --per-class),
# printing "seconds evaluations" from ddpm's --json; returns ddpm's status. With --keep,
# DIR.stamp records what was sampled and its time, and a matching stamp is reused.
sample() {
    local dir="$1" count="$2" out secs=0 evals="" k stamp
    shift 2
    stamp="checkpoint=$(cksum <"$ckpt_file") n=$count seed=$seed per_class=$per_class extra=$extra flags=$*"
    if [ -n "$keep" ] && [ -f "$dir.stamp" ] && [ "$(head -n 1 "$dir.stamp")" = "$stamp" ]; then
        echo "sampler_table: reusing $dir" >&2
        tail -n 1 "$dir.stamp"
        return 0
    fi
    rm -rf "$dir" "$dir.stamp"
    if [ "$per_class" -gt 0 ]; then
        mkdir -p "$dir"
        for ((k = 0; k < 10; k++)); do
            out=$("$ddpm" sample "$run" "${common[@]}" "$@" --class "$k" --seed $((seed + k)) --n "$per_class" \
                --out-dir "$dir/$k" "${extra_args[@]}") || return 1
            read -r s evals < <(json_fields "$out" seconds steps) || return 1
            secs=$("$python" -c "print($secs + $s)")
        done
    else
        out=$("$ddpm" sample "$run" "${common[@]}" "$@" --n "$count" --out-dir "$dir" "${extra_args[@]}") || return 1
        read -r secs evals < <(json_fields "$out" seconds steps) || return 1
    fi
    [ -z "$keep" ] || printf '%s\n%s\n' "$stamp" "$secs $evals" >"$dir.stamp"
    echo "$secs $evals"
}

# json_fields JSON KEY...: the values of the keys, space-separated ('-' when absent)
json_fields() {
    local text="$1"
    shift
    "$python" -c 'import json, sys
o = json.loads(sys.argv[1])
print(" ".join("-" if o.get(k) is None else str(o[k]) for k in sys.argv[2:]))' "$text" "$@"
}

IFS=',' read -r -a sampler_specs <<<"$samplers"
for spec in "${sampler_specs[@]}" "$rms_ref"; do # a malformed spec stops here, before any sampling
    spec_flags "$spec" >/dev/null
done

classifier_note=""
if [ "$sample_only" = 0 ]; then # the classifier before any sampling (trained here if not cached)
    prep=$("$python" "$here/fmnist_fid.py" --prepare "${fid_args[@]}") || exit 1
    read -r acc_test cls_path < <(json_fields "$prep" test_accuracy classifier)
    classifier_note=", classifier $cls_path (test accuracy $("$python" -c "print(f'{100 * $acc_test:.2f}%')"))"
fi

ref_dir=""
if [ "$rms" = 1 ]; then
    ref_dir="$work/rms-reference"
    mapfile -t ref_flags < <(spec_flags "$rms_ref")
    ref_count="$rms_n"
    [ "$per_class" -gt 0 ] && ref_count="$per_class per class"
    echo "sampler_table: RMS reference: ${ref_flags[*]}, $ref_count images, seed $seed" >&2
    if ! ref_out=$(sample "$ref_dir" "$rms_n" "${ref_flags[@]}"); then
        echo "sampler_table: the RMS reference (${ref_flags[*]}) failed" >&2
        exit 1
    fi
    echo "sampler_table: RMS reference took $(echo "$ref_out" | cut -d' ' -f1) s" >&2
fi

header="| sampler | spacing | steps | evaluations | ms / image | domain FID | class entropy (bits) |"
rule="|---|---|---:|---:|---:|---:|---:|"
[ "$rms" = 1 ] && header+=" RMS from reference |" && rule+="---:|"
[ "$per_class" -gt 0 ] && header+=" accuracy |" && rule+="---:|"
images=$n
[ "$per_class" -gt 0 ] && images=$((per_class * 10))
echo "<!-- bench/sampler_table.sh $run: n $images, seed $seed, extra '${extra}'$classifier_note, $(date -u +%Y-%m-%d) -->"
echo "$header"
echo "$rule"
failed=0
IFS=',' read -r -a spacing_list <<<"$spacings"
IFS=',' read -r -a step_counts <<<"$steps_list"
for spec in "${sampler_specs[@]}"; do
    mapfile -t flags < <(spec_flags "$spec")
    for spacing in "${spacing_list[@]}"; do
        for steps in "${step_counts[@]}"; do
            setting=("${flags[@]}")
            [ "$spacing" != "-" ] && setting+=(--spacing "$spacing")
            [ "$steps" != "-" ] && setting+=(--steps "$steps")
            name=$(printf '%s' "${setting[*]:1}" | sed 's/--//g' | tr -c 'A-Za-z0-9+.=-' '_')
            dir="$work/$name"
            echo "sampler_table: ${setting[*]}" >&2
            row="| \`${flags[*]:1}\` | $spacing | $steps |"
            if ! timing=$(sample "$dir" "$n" "${setting[@]}"); then
                echo "$row failed: see stderr |"
                failed=1
                continue
            fi
            read -r secs evals <<<"$timing"
            if [ "$sample_only" = 1 ]; then
                echo "$row $evals | $("$python" -c "print(f'{1000 * $secs / $images:.1f}')") | - | - |"
                continue
            fi
            measure=("${fid_args[@]}")
            [ "$rms" = 1 ] && measure+=(--rms-ref "$ref_dir")
            if ! res=$("$python" "$here/fmnist_fid.py" "$dir" "${measure[@]}"); then
                echo "$row $evals | failed: fmnist_fid.py, see stderr |"
                failed=1
                continue
            fi
            read -r fid entropy rmsv acc < <(json_fields "$res" fid class_entropy_bits rms accuracy)
            line=$("$python" -c 'import sys
secs, images, fid, ent = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f" {1000 * secs / images:.1f} | {fid:.2f} | {ent:.3f} |", end="")' "$secs" "$images" "$fid" "$entropy")
            [ "$rms" = 1 ] && line+=$("$python" -c 'import sys; print(f" {float(sys.argv[1]):.4f} |", end="")' "$rmsv")
            [ "$per_class" -gt 0 ] && line+=$("$python" -c 'import sys; print(f" {100 * float(sys.argv[1]):.1f}% |", end="")' "$acc")
            echo "$row $evals |$line"
            [ -n "$keep" ] || rm -rf "$dir"
        done
    done
done
exit "$failed"
