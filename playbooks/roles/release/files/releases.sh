#!/bin/sh
# The releases under HOME/releases, newest first, one a line: PATH, then `complete`, or why it is not
# (no .complete: a deploy failed or was killed while making it; its virtualenv missing or incomplete).
# Run on the host by rollback.yml, which goes back only to a complete release.
#   releases.sh HOME
set -eu
cd "$1/releases"
ls -t | while IFS= read -r release; do
    path="$PWD/$release"
    [ -d "$path" ] && [ ! -L "$path" ] || continue
    if [ ! -e "$path/.complete" ]; then
        why='incomplete (no .complete: a deploy failed or was killed while making it)'
    elif [ ! -e "$path/venv/.complete" ] || [ ! -x "$path/venv/bin/python" ]; then
        why='its virtualenv is missing or incomplete'
    else
        why=complete
    fi
    printf '%s %s\n' "$path" "$why"
done
