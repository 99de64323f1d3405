#!/usr/bin/env bash
# Every relative link in README.md, CHANGELOG.md and docs/*.md must name a
# file or directory that exists (anchors within the README are checked
# against its headings). Web links are not fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for doc in README.md CHANGELOG.md docs/*.md; do
    dir=$(dirname "$doc")
    # [text](target): the target up to the closing parenthesis.
    while IFS= read -r target; do
        case "$target" in
            http://* | https://* | mailto:*) continue ;;
        esac
        path=${target%%#*}
        anchor=${target#"$path"}
        if [ -z "$path" ]; then
            path=$(basename "$doc")
        fi
        if [ ! -e "$dir/$path" ]; then
            echo "$doc: broken link ($target): $dir/$path does not exist"
            status=1
            continue
        fi
        if [ -n "$anchor" ] && [ -f "$dir/$path" ]; then
            # GitHub's anchors: the heading in lower case, spaces as '-',
            # punctuation dropped.
            want=${anchor#\#}
            if ! grep -E '^#+ ' "$dir/$path" | sed -E 's/^#+ //' |
                tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9 _-]//g; s/ /-/g' |
                grep -qx -- "$want"; then
                echo "$doc: broken anchor ($target): no heading makes #$want in $dir/$path"
                status=1
            fi
        fi
    done < <(grep -oE '\]\([^)]+\)' "$doc" | sed -E 's/^\]\((.*)\)$/\1/')
done
[ "$status" = 0 ] && echo "doc links: all resolve"
exit "$status"
