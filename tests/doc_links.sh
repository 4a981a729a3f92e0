#!/usr/bin/env bash
# Checks that README.md and docs/*.md point only at things that exist:
#  - every Markdown link or image [text](target) resolves to a file or folder of
#    the repository (web links are skipped), and a #anchor to a heading of the
#    target file (GitHub's heading ids: lower case, punctuation dropped, spaces
#    as hyphens);
#  - every repository path named in the text (tests/..., scripts/..., src/...,
#    include/..., docs/..., bench/..., cmake/...; globs allowed) exists;
#  - every test function named in backquotes (`test_...`) is defined in tests/.
# Prints one line per broken reference and exits 1 if there is any.
# Usage: doc_links.sh [REPO_DIR] [FILE.md ...]   (default: README.md docs/*.md)
set -uo pipefail
repo=$(cd "${1:-$(dirname "$0")/..}" && pwd)
shift || true
cd "$repo" || exit 1
if [ $# -gt 0 ]; then files=("$@"); else files=(README.md docs/*.md); fi

bad=0
report() { echo "$1: $2" >&2; bad=1; }

# GitHub's id of every heading of a Markdown file, one a line.
anchors() {
    awk '/^```/ { fence = !fence; next } !fence && /^#+ / { sub(/^#+ +/, ""); print }' "$1" |
        tr '[:upper:]' '[:lower:]' | sed -e 's/[^a-z0-9 _-]//g' -e 's/ /-/g'
}

# The file's text outside fenced code blocks, with line numbers.
prose() { awk '/^```/ { fence = !fence; next } !fence { print FNR ": " $0 }' "$1"; }

for f in "${files[@]}"; do
    [ -f "$f" ] || { report "$f" "no such file"; continue; }
    dir=$(dirname "$f")
    # 1. Markdown links and images.
    while IFS= read -r hit; do
        line=${hit%%:*}
        target=${hit#*](}
        target=${target%)}
        target=${target%% *} # [text](path "title")
        case $target in http://* | https://* | mailto:*) continue ;; esac
        path=${target%%#*}
        anchor=
        [[ $target == *"#"* ]] && anchor=${target#*#}
        if [ -z "$path" ]; then
            file=$f
        else
            file=$dir/$path
            [ -e "$file" ] || { report "$f:$line" "link to missing $path"; continue; }
        fi
        if [ -n "$anchor" ]; then
            [[ $file == *.md ]] || { report "$f:$line" "anchor #$anchor into non-Markdown $path"; continue; }
            anchors "$file" | grep -qxF -- "$anchor" ||
                report "$f:$line" "no heading #$anchor in $file"
        fi
    done < <(prose "$f" | grep -oE '^[0-9]+|\]\([^)]*\)' | awk '/^[0-9]+$/ { n = $0; next } { print n ":" $0 }')

    # 2. Repository paths named in the text (in code blocks too: commands).
    while IFS= read -r hit; do
        line=${hit%%:*}
        path=${hit#*:}
        [[ $path == *"<"* ]] && continue # a pattern such as src/ops/<name>.c
        path=${path%%[.,:;]}
        path=${path%%[.,:;]}
        # shellcheck disable=SC2086 # a glob such as tests/test_ops_*.c is expanded on purpose
        compgen -G "$path" >/dev/null || report "$f:$line" "names missing $path"
    done < <(grep -noE '(^|[^A-Za-z0-9_./-])(tests|scripts|src|include|docs|bench|cmake)/[A-Za-z0-9_.*/<-]*' "$f" |
        sed -E 's/^([0-9]+):[^a-z]?/\1:/')

    # 3. Test functions named in backquotes.
    while IFS= read -r hit; do
        line=${hit%%:*}
        name=${hit#*:\`}
        name=${name%\`}
        grep -rqwF -- "$name" tests/ || report "$f:$line" "names test $name, not in tests/"
    done < <(grep -noE '`test_[A-Za-z0-9_]+`' "$f")
done
if [ $bad -eq 0 ]; then echo "ok: links, paths and test names of ${#files[@]} files resolve"; fi
exit $bad
