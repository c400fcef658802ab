#!/usr/bin/env bash
# tools_cpu.sh [WORKDIR]
#
# `tar x` and `rsync -a` of the Python standard library (everything but
# site-packages, about 8,000 entries) onto a fresh 3-node dev cluster with a
# mount, run from this checkout: wall time of each, CPU seconds each PrismFS
# process spent during `tar x`, and then a check that both trees came out
# right (`tar d` against the tarball: contents, sizes, modes, owners, mtimes;
# `diff -rq` and `rsync -ani` against the source). With SPY=1 every PrismFS
# process is sampled by py-spy (raw stacks in WORKDIR/spy-PID.txt).
# Everything is stopped and unmounted at the end.
set -u
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
export PRISMFS_STATE_DIR=$work/state PRISMFS_CONFIG=
py=.venv/bin/python
cleanup() {
  fusermount3 -u "$work/mnt" 2>/dev/null
  $py -m prismfs dev down --dir "$work/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
$py -m prismfs dev up --nodes 3 --dir "$work/cluster" --mount "$work/mnt" >/dev/null || exit 1
stdlib=$(python3 -c 'import os; print(os.path.dirname(os.__file__))')
tar cf "$work/stdlib.tar" --exclude=site-packages -C "$stdlib" .
pids=$(pgrep -f "prismfs (node start|.*mount_helper_main)|mount_helper_main" | tr '\n' ' ')
cpu() { for p in $pids; do echo "$p $(awk '{print $14+$15}' "/proc/$p/stat")"; done; }
elapsed() { python3 -c "print(f'{$2 - $1:.1f}')"; }

spies=""
if [ "${SPY:-0}" = 1 ]; then
  for p in $pids; do
    .venv/bin/py-spy record -r 40 --format raw -o "$work/spy-$p.txt" -p "$p" -d 900 \
      --nonblocking >/dev/null 2>&1 &
    spies="$spies $!"
  done
fi
cpu >"$work/cpu0"
mkdir "$work/mnt/t" "$work/mnt/r"
t0=$(date +%s.%N)
timeout 600 tar xf "$work/stdlib.tar" -C "$work/mnt/t" || echo "tar x failed: exit $?"
t1=$(date +%s.%N)
cpu >"$work/cpu1"
$py -m prismfs mount stats --json --reset "$work/mnt" >"$work/stats-tar.json" 2>&1
timeout 600 rsync -a --exclude=site-packages "$stdlib/" "$work/mnt/r/" || echo "rsync -a failed: exit $?"
t2=$(date +%s.%N)
$py -m prismfs mount stats --json "$work/mnt" >"$work/stats-rsync.json" 2>&1
echo "tar x: $(elapsed "$t0" "$t1") s"
echo "rsync -a: $(elapsed "$t1" "$t2") s"
for step in tar rsync; do
  $py - "$work/stats-$step.json" "$step" <<'PY'
import json, sys
stats = json.load(open(sys.argv[1]))
counts = dict(stats.get("counts", {}))
counts.update({k: h["count"] for k, h in stats.get("latency", {}).items()})
keys = ("rpc.Propose", "rpc.Query", "rpc.PutShard", "fuse.writeback.settled_for_change")
print(f"{sys.argv[2]}: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in keys))
PY
done
echo "CPU seconds during tar x:"
join <(sort "$work/cpu0") <(sort "$work/cpu1") | while read -r p a b; do
  echo "  pid $p: $(python3 -c "print(f'{($b - $a) / 100:.1f}')") s  $(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-70)"
done
[ -n "$spies" ] && kill -INT $spies && sleep 5
if (cd "$work/mnt/t" && tar df "$work/stdlib.tar" >"$work/tar.diff" 2>&1); then
  echo "tar x tree: identical"
else
  echo "tar x tree: DIFFERS"; head -20 "$work/tar.diff"
fi
rsync -ani --exclude=site-packages "$stdlib/" "$work/mnt/r/" >"$work/rsync.ani" 2>&1
if diff -rq --exclude=site-packages "$stdlib/" "$work/mnt/r/" >"$work/rsync.diff" 2>&1 &&
  [ ! -s "$work/rsync.ani" ]; then
  echo "rsync tree: identical"
else
  echo "rsync tree: DIFFERS ($(grep -c '^\.d..t' "$work/rsync.ani") directories' times," \
    "$(grep -vc '^\.d..t' "$work/rsync.ani") other entries)"
  head -20 "$work/rsync.diff" "$work/rsync.ani"
fi
