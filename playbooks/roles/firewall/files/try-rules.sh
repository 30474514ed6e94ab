#!/bin/sh
# try-rules.sh RULES TABLE SECONDS STATE: load RULES (a file replacing the nftables table TABLE)
# so that they undo themselves after SECONDS unless confirm-rules.sh STATE runs first, as
# iptables-apply does: the table as it was last confirmed comes back (or goes, if there was none).
# STATE is a folder of root's: previous.nft (the table to come back), pid (the pending undo), lock.
set -eu
rules=$1
table=$2
seconds=$3
state=$4
(umask 077 && mkdir -p "$state")
exec 9>"$state/lock"
flock 9
if [ -s "$state/pid" ]; then
    # An undo still pending from a run cut short: its previous.nft is the last confirmed table.
    kill -TERM -- "-$(cat "$state/pid")" 2>/dev/null || true
    rm -f "$state/pid"
else
    {
        echo "table inet $table"
        echo "delete table inet $table"
        nft list table inet "$table" 2>/dev/null || true
    } >"$state/previous.nft.tmp"
    mv -f "$state/previous.nft.tmp" "$state/previous.nft"
fi
# The undo, in a session of its own that outlives this SSH connection; it waits for the lock, so an
# undo and a confirmation never cross.
# shellcheck disable=SC2016  # the undo's own sh expands its $1 and $2
setsid sh -c '
    echo $$ >"$1/pid.tmp" && mv -f "$1/pid.tmp" "$1/pid"
    sleep "$2"
    exec 9>"$1/lock"
    flock 9
    [ -s "$1/pid" ] || exit 0
    nft --file "$1/previous.nft"
    rm -f "$1/pid"
' undo "$state" "$seconds" </dev/null >/dev/null 2>&1 9>&- &
tries=0
until [ -s "$state/pid" ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then
        echo "the undo of the firewall rules did not start" >&2
        exit 1
    fi
    sleep 0.1
done
if ! nft --file "$rules"; then
    kill -TERM -- "-$(cat "$state/pid")"
    rm -f "$state/pid"
    exit 1
fi
