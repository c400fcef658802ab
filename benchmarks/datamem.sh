#!/usr/bin/env bash
# datamem.sh MOUNTPOINT SIZE_MIB MOUNT_PID [NODE_PID...]
#
# Memory and CPU of the data path: fio writes a SIZE_MIB file in 1 MiB blocks
# (fsync at the end), then reads it back after drop_caches. For each phase:
# MB/s, the mount daemon's peak VmRSS (sampled every 0.2 s) and the CPU
# seconds (user + system, from /proc) per GiB of the mount and of each node.
# On a dev cluster: MOUNT_PID from DIR/mount.pid, the nodes' from
# `prismfs dev status --dir DIR` (or pgrep -f "prismfs node start").
set -euo pipefail
mnt=${1:?usage: datamem.sh MOUNTPOINT SIZE_MIB MOUNT_PID [NODE_PID...]}
size=${2:?usage}
mount_pid=${3:?usage}
shift 3
pids=("$mount_pid" "$@")
work="$mnt/datamem-$$"
mkdir -p "$work"
trap 'rm -rf "$work" 2>/dev/null || true' EXIT

cpu() { for p in "${pids[@]}"; do awk '{print $14 + $15}' "/proc/$p/stat"; done; }
peak_rss() {  # the mount's highest VmRSS (KiB) while process $1 runs
  local max=0 r
  while kill -0 "$1" 2>/dev/null; do
    r=$(awk '/VmRSS/ {print $2}' "/proc/$mount_pid/status")
    ((r > max)) && max=$r
    sleep 0.2
  done
  echo "$max"
}
ticks=$(getconf CLK_TCK)
for phase in write read; do
  mapfile -t before < <(cpu)
  if [ "$phase" = write ]; then
    fio --name=w --filename="$work/big" --size="${size}M" --bs=1M --ioengine=psync \
      --rw=write --end_fsync=1 --output-format=terse >"$work/fio.out" &
  else
    sync
    echo 3 >/proc/sys/vm/drop_caches
    fio --name=r --filename="$work/big" --size="${size}M" --bs=1M --ioengine=psync \
      --rw=read --output-format=terse >"$work/fio.out" &
  fi
  job=$!
  rss=$(peak_rss "$job")
  wait "$job"
  mapfile -t after < <(cpu)
  field=$([ "$phase" = write ] && echo 48 || echo 7)
  kbs=$(cut -d';' -f"$field" "$work/fio.out")
  line="$phase ${size} MiB: $((kbs / 1000)) MB/s, mount RSS peak $((rss / 1024)) MiB, CPU s/GiB:"
  for i in "${!pids[@]}"; do
    line+=" $(python3 -c "print(round((${after[$i]} - ${before[$i]}) / $ticks / ($size / 1024), 2))")"
  done
  echo "$line (mount, then nodes)"
done
