#!/usr/bin/env bash
# toolsbench.sh MOUNTPOINT LABEL
#
# What a new user tries first, timed, one result per line:
#   LABEL <workload> <seconds> s
# cp-a-doc: cp -a /usr/share/doc; tar-x-stdlib: tar x of a tarball of the
# Python standard library (everything but site-packages: about 8,000
# entries, 257 MB here; the tarball is made on local disk first);
# rsync-a-stdlib: rsync -a of the same tree; rm-rf: rm -rf of all three.
# Each step has a limit of LIMIT_S seconds (default 900); a step that hits
# it prints the limit and "s (timed out)". Everything is made under
# MOUNTPOINT/toolsbench-LABEL-PID and removed at the end.
set -euo pipefail
mnt=${1:?usage: toolsbench.sh MOUNTPOINT LABEL}
label=${2:?usage: toolsbench.sh MOUNTPOINT LABEL}
limit=${LIMIT_S:-900}
work="$mnt/toolsbench-$label-$$"
tmp=$(mktemp -d)
mkdir -p "$work"
trap 'rm -rf "$tmp"; timeout "$limit" rm -rf "$work" 2>/dev/null || true' EXIT

stdlib=$(python3 -c 'import os; print(os.path.dirname(os.__file__))')
tar cf "$tmp/stdlib.tar" --exclude=site-packages -C "$stdlib" .

step() {  # step NAME COMMAND...
  local name=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  if timeout "$limit" "$@"; then
    t1=$(date +%s.%N)
    echo "$label $name $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
  else
    echo "$label $name $limit s (timed out or failed)"
  fi
}

mkdir "$work/tar" "$work/rsync"
step cp-a-doc cp -a /usr/share/doc "$work/doc"
step tar-x-stdlib tar xf "$tmp/stdlib.tar" -C "$work/tar"
step rsync-a-stdlib rsync -a --exclude=site-packages "$stdlib/" "$work/rsync/"
step rm-rf rm -rf "$work/doc" "$work/tar" "$work/rsync"
