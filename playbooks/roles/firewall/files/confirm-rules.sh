#!/bin/sh
# confirm-rules.sh STATE: keep the rules try-rules.sh loaded, cancelling their undo; run over a new SSH
# connection, which proves they let SSH in. Fails if the undo ran already.
set -eu
state=$1
exec 9>"$state/lock"
flock 9
if [ ! -s "$state/pid" ]; then
    echo "the rules were undone already: confirmed too late" >&2
    exit 1
fi
kill -TERM -- "-$(cat "$state/pid")" 2>/dev/null || true
rm -f "$state/pid" "$state/previous.nft"
