#!/bin/sh
# The releases under HOME/releases, newest first, one a line: PATH, then `complete`, or why it is not
# (no .complete: a deploy failed or was killed while making it; its virtualenv missing or incomplete).
# Run on the host by rollback.yml, which goes back only to a complete release.
#   releases.sh HOME
set -eu
cd "$1/releases"
# shellcheck disable=SC2012  # release folders are named by hex ids; ls -t orders them by time
ls -t | while IFS= read -r release; do
    path="$PWD/$release"
    if [ ! -d "$path" ] || [ -L "$path" ]; then continue; fi
    if [ ! -e "$path/.complete" ]; then
        why='incomplete (no .complete: a deploy failed or was killed while making it)'
    elif [ ! -e "$path/venv/.complete" ] || [ ! -x "$path/venv/bin/python" ]; then
        why='its virtualenv is missing or incomplete'
    else
        why=complete
    fi
    printf '%s %s\n' "$path" "$why"
done
