#!/bin/sh
# What a release ships of the product folder (run on the controller by the release role):
#   product_archive.sh id SOURCE          print a hash of what would ship, part of the release id
#   product_archive.sh pack SOURCE FILE   write it to FILE, a .tar.gz
# In a git work tree, what the repository tracks at HEAD (git archive; uncommitted changes and
# untracked files such as .env stay behind); else every file but __pycache__. Either way owner root
# and modes normalised (0644, 0755 for folders and executables): no code is group- or world-writable.
set -eu
action=$1
cd "$2"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    tree="HEAD:$(git rev-parse --show-prefix)"
    if [ "$(git cat-file -t "$tree" 2>/dev/null)" != tree ]; then
        echo "$2 is in a git work tree, but HEAD has none of it: commit the product (a release ships what git tracks)" >&2
        exit 1
    fi
    case $action in
        id) git rev-parse "$tree" ;;
        # From the top of the work tree: git archive run in a subfolder limits itself to that folder.
        pack) git -C "$(git rev-parse --show-toplevel)" -c tar.umask=0022 archive --format=tar.gz "$tree" > "$3.part"
              mv "$3.part" "$3" ;;
    esac
else
    case $action in
        id) find . -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1 ;;
        pack) tar --exclude=__pycache__ --owner=0 --group=0 --numeric-owner --mode=u+rw,go-w,go+rX \
                  -czf "$3.part" . && mv "$3.part" "$3" ;;
    esac
fi
