#!/bin/sh
# The nginx role's way back (tasks/main.yml): `save FOLDER PATH...` keeps each PATH as it is (a file,
# a symbolic link, or nothing) in FOLDER, which only root reads; `restore FOLDER` puts every PATH
# back as it was kept, removing those that did not exist; `drop FOLDER` forgets them.
set -eu
action=$1
folder=$2
shift 2
case $action in
save)
    rm -rf "$folder"
    (umask 077 && mkdir "$folder")
    n=0
    for path in "$@"; do
        n=$((n + 1))
        printf '%s\n' "$path" >"$folder/$n.path"
        if [ -e "$path" ] || [ -L "$path" ]; then
            cp -P -p "$path" "$folder/$n"
        fi
    done
    ;;
restore)
    for kept in "$folder"/*.path; do
        [ -e "$kept" ] || continue
        path=$(cat "$kept")
        copy=${kept%.path}
        if [ -e "$copy" ] || [ -L "$copy" ]; then
            # A copy beside it, then a rename: nginx never reads a half-written file.
            cp -P -p "$copy" "$path.apiphant-restore"
            mv -f -T "$path.apiphant-restore" "$path"
        else
            rm -f "$path"
        fi
    done
    ;;
drop)
    rm -rf "$folder"
    ;;
*)
    echo "usage: $0 save|restore|drop FOLDER [PATH...]" >&2
    exit 2
    ;;
esac
