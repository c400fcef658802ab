#!/usr/bin/env bash
# fsbench.sh MOUNTPOINT LABEL [SIZE_MIB] [data]
#
# The same workloads on any mounted file system, one result per line:
#   LABEL <workload> <value> <unit>
# seq-write / seq-read: fio, bs=1M, one job, SIZE_MIB (default 1024), fsync at
# the end of the write; page cache dropped before the read. rand-read-4k: fio
# 4 KiB random reads of that file for 10 s (IOPS). create-4k: 5,000 files of
# 4 KiB written by one process (files/s); stat: stat of all of them
# (files/s); copy-stdlib: the Python standard library without site-packages,
# tests and caches, copied with a tar pipe (keeps modes and times, like
# cp -a) (seconds); rm: rm -rf of all of it (seconds). Everything is made under
# MOUNTPOINT/fsbench-LABEL-PID and removed at the end. With ``data`` as the
# fourth argument, only the three fio workloads run.
set -euo pipefail
mnt=${1:?usage: fsbench.sh MOUNTPOINT LABEL [SIZE_MIB]}
label=${2:?usage: fsbench.sh MOUNTPOINT LABEL [SIZE_MIB]}
size=${3:-1024}
only=${4:-all}
work="$mnt/fsbench-$label-$$"
mkdir -p "$work"
trap 'rm -rf "$work" 2>/dev/null || true' EXIT

now() { date +%s.%N; }
dropcaches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
fio_bw() { python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(f\"{j[sys.argv[1]]['bw_bytes']/1e6:.1f}\")" "$1"; }
fio_iops() { python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(f\"{j['read']['iops']:.0f}\")"; }

common=(--name=fsbench --filename="$work/big" --size="${size}M" --bs=1M --ioengine=psync --output-format=json)
bw=$(fio "${common[@]}" --rw=write --end_fsync=1 | fio_bw write)
echo "$label seq-write $bw MB/s"
dropcaches
bw=$(fio "${common[@]}" --rw=read | fio_bw read)
echo "$label seq-read $bw MB/s"
dropcaches
iops=$(fio --name=rr --filename="$work/big" --size="${size}M" --bs=4k --rw=randread \
  --ioengine=psync --time_based --runtime=10 --output-format=json | fio_iops)
echo "$label rand-read-4k $iops IOPS"
rm -f "$work/big"
[ "$only" = data ] && exit 0

mkdir "$work/small"
python3 - "$work/small" "$label" <<'PY'
import os, sys, time
d, label = sys.argv[1], sys.argv[2]
block = os.urandom(4096)
t0 = time.perf_counter()
for i in range(5000):
    with open(f"{d}/f{i}", "wb") as f:
        f.write(block)
t1 = time.perf_counter()
print(f"{label} create-4k {5000 / (t1 - t0):.1f} files/s")
t0 = time.perf_counter()
for i in range(5000):
    os.stat(f"{d}/f{i}")
t1 = time.perf_counter()
print(f"{label} stat {5000 / (t1 - t0):.1f} files/s")
PY

stdlib=$(python3 -c 'import os; print(os.path.dirname(os.__file__))')
t0=$(now)
mkdir "$work/py"
(cd "$stdlib" && tar cf - --exclude=site-packages --exclude=test --exclude=__pycache__ .) \
  | (cd "$work/py" && tar xf -)
t1=$(now)
echo "$label copy-stdlib $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
t0=$(now)
rm -rf "$work/small" "$work/py"
t1=$(now)
echo "$label rm $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
