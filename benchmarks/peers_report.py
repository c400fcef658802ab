"""The report of ``bench_peers.py``: the markdown table with its context, the
block it fills in ``docs/benchmarks.md``, and the bar chart of the ratios.

Ratios are of the medians and always read "above 1: PrismFS is ahead":
PrismFS / peer for rates (MB/s, IOPS, files/s, ops/s) and peer / PrismFS for
times (unit ``s``). The chart has one group per workload with a bar per peer,
a line at 1.0, and a log scale once the ratios span more than a factor of 20
(otherwise the small bars vanish next to the large ones).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BEGIN, END = "<!-- bench-peers:begin -->", "<!-- bench-peers:end -->"
HEADING = "## Peers: MooseFS and GlusterFS (issue 7)"
TITLES = {
    "moosefs": "MooseFS",
    "glusterfs": "GlusterFS",
    "prismfs": "PrismFS",
    "prismfs-1node": "PrismFS 1 node",
    "prismfs-base": "PrismFS base",
    "local": "local",
}
PEERS = ("moosefs", "glusterfs")
COLUMN_ORDER = ("prismfs", "prismfs-base", "prismfs-1node", "moosefs", "glusterfs", "local")
RECOVERY_ROW = "recovery-1GiB"
VERSIONED_DEBS = (
    "moosefs-master",
    "moosefs-chunkserver",
    "moosefs-client",
    "glusterfs-server",
    "glusterfs-client",
    "fio",
)
# Self-healing is a later issue: until it exists there is nothing to time.
PRISMFS_RECOVERY = "not yet"  # bench_peers.py sets it from bench_repair.py
RECOVERY_DETAIL = ""
LOG_SCALE_SPAN = 20.0


Config = dict[str, object]


@dataclass
class Results:
    """Figures per system, workload and run (None: that visit failed)."""

    systems: list[str]
    runs: int
    values: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # (visit, wall s, mount CPU s, each node's CPU s) of the PrismFS visits
    cpu: list[tuple[str, float, float, list[float]]] = field(default_factory=list)

    def add(self, system: str, run_index: int, workload: str, value: float, unit: str) -> None:
        self.units.setdefault(workload, unit)
        row = self.values.setdefault(system, {}).setdefault(workload, [None] * self.runs)
        row[run_index] = value


@dataclass
class RunInfo:
    """What the report says besides the figures; paths in settings read ``$DIR``."""

    argv: list[str]
    started: float
    finished: float = 0.0
    tmp: str = "/tmp"
    mfs_master: Config = field(default_factory=dict)
    mfs_chunkservers: list[Config] = field(default_factory=list)
    mfs_mount: list[str] = field(default_factory=list)
    gluster_create: str = ""
    gluster_info: str = ""


def _out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def fmt(value: float) -> str:
    """Whole numbers from 100 up, one decimal from 1 (fsbench's times have one), else 2 digits."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(prism: float | None, peer: float | None, unit: str) -> float | None:
    """Above 1: PrismFS ahead. Times (``s``) are inverted."""
    if prism is None or peer is None or prism <= 0 or peer <= 0:
        return None
    return peer / prism if unit == "s" else prism / peer


def ratio_columns(results: Results) -> list[str]:
    if "prismfs" not in results.systems:
        return []
    return [p for p in PEERS if p in results.systems]


def table(results: Results) -> list[str]:
    systems = [s for s in COLUMN_ORDER if s in results.systems]
    peers = ratio_columns(results)
    head = ["workload", "unit", *(TITLES[s] for s in systems)]
    head += [f"PrismFS / {TITLES[p]}" for p in peers]
    base = "prismfs" in results.systems and "prismfs-base" in results.systems
    if base:
        head.append("PrismFS / base")
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for workload, unit in results.units.items():
        cells = [workload, unit]
        medians: dict[str, float | None] = {}
        for s in systems:
            runs = results.values.get(s, {}).get(workload, [None] * results.runs)
            medians[s] = median(runs)
            shown = ", ".join("failed" if v is None else fmt(v) for v in runs)
            if medians[s] is None:
                cells.append("failed")
            elif results.runs == 1:
                cells.append(shown)
            else:
                cells.append(f"**{fmt(medians[s] or 0)}** ({shown})")
        for p in peers:
            r = ratio(medians.get("prismfs"), medians.get(p), unit)
            cells.append("-" if r is None else f"{r:.2f}")
        if base:
            r = ratio(medians.get("prismfs"), medians.get("prismfs-base"), unit)
            cells.append("-" if r is None else f"{r:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    recovery = [RECOVERY_ROW, "s"]
    recovery += [PRISMFS_RECOVERY if s == "prismfs" else "-" for s in systems]
    recovery += ["-" for _ in peers] + (["-"] if base else [])
    lines.append("| " + " | ".join(recovery) + " |")
    return lines


def chart(results: Results, args: argparse.Namespace, path: Path) -> bool:
    """Draw the ratios to ``path``; False when there is no ratio to draw.

    Bars start at 1.0, so a bar going up is a workload where PrismFS is
    ahead and one going down is one where it is behind, on either scale.
    """
    peers = ratio_columns(results)
    workloads = list(results.units)
    series: dict[str, list[float]] = {}
    for p in peers:
        values = []
        for w in workloads:
            prism = median(results.values.get("prismfs", {}).get(w, []))
            peer = median(results.values.get(p, {}).get(w, []))
            r = ratio(prism, peer, results.units[w])
            values.append(math.nan if r is None else r)
        series[p] = values
    finite = [v for vs in series.values() for v in vs if not math.isnan(v)]
    if not finite:
        return False
    import matplotlib  # only needed here; make bench-peers installs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=120)
    width = 0.8 / len(series)
    colors = {"moosefs": "#4c72b0", "glusterfs": "#dd8452"}
    for i, (p, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(workloads))]
        heights = [v - 1.0 for v in values]
        bars = ax.bar(
            xs, heights, width, bottom=1.0, label=f"PrismFS / {TITLES[p]}", color=colors[p]
        )
        labels = ["" if math.isnan(v) else f"{v:.2f}" for v in values]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.axhline(1.0, color="black", linewidth=1)
    low, high = min(*finite, 1.0), max(*finite, 1.0)
    if high / low > LOG_SCALE_SPAN:
        ax.set_yscale("log")
        ax.set_ylim(low / 1.6, high * 1.6)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(min(0.0, low), high * 1.12)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=30, ha="right")
    ax.set_ylabel("ratio (above 1: PrismFS ahead)")
    runs = f"median of {args.runs} runs" if args.runs > 1 else "1 run"
    ax.set_title(
        f"PrismFS relative to {' and '.join(TITLES[p] for p in peers)}, same machine, same run\n"
        f"fsbench {args.size_mib} MiB, mdtest {args.md_files} files x {args.md_procs} procs, "
        f"{runs}; times inverted",
        fontsize=10,
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def versions() -> list[str]:
    debs = []
    for p in VERSIONED_DEBS:
        v = _out(["dpkg-query", "-W", "-f=${Version}", p])
        debs.append(f"{p} {v or '(not installed)'}")
    try:
        prism = importlib.metadata.version("prismfs")
    except importlib.metadata.PackageNotFoundError:
        prism = "(not installed)"
    return [
        f"PrismFS {prism} (pip, editable install of this tree)",
        "Debian packages: " + ", ".join(debs),
        f"Python {platform.python_version()}, Linux {platform.release()}",
    ]


def commit() -> str:
    repo = Path(__file__).resolve().parent.parent
    head = _out(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = _out(["git", "-C", str(repo), "status", "--porcelain", "--", "src", "benchmarks"])
    return f"`{head}`" + (" with uncommitted changes in src/ or benchmarks/" if dirty else "")


def machine(base_hint: Path) -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    fs = " on ".join(
        _out(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", str(base_hint)]).split()
    )
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_kib / 2**20:.0f} GiB RAM; every system's data "
        f"on the same disk ({fs} under {base_hint}); other jobs may have shared the machine"
    )


def _chunkserver_lines(chunkservers: list[Config]) -> list[str]:
    """One config for all chunkservers: ``cs<i>`` in paths, the differing values listed."""
    lines = []
    for key in chunkservers[0]:
        values = [str(cs[key]) for cs in chunkservers]
        generic = {v.replace(f"cs{i}", "cs<i>") for i, v in enumerate(values, 1)}
        value = generic.pop() if len(generic) == 1 else " / ".join(values)
        lines.append(f"{key} = {value}")
    return lines


def settings(args: argparse.Namespace, info: RunInfo) -> list[str]:
    n = len(info.mfs_chunkservers)
    mfs_lines = ["# mfsmaster.cfg", *(f"{k} = {v}" for k, v in info.mfs_master.items())]
    mfs_lines += ["# mfsexports.cfg", "*\t/\trw,alldirs,admin,maproot=0:0"]
    mfs_lines += [f"# cs<i>/mfschunkserver.cfg, i = 1..{n}"]
    mfs_lines += _chunkserver_lines(info.mfs_chunkservers)
    mfs_lines += ["# cs<i>/mfshdd.cfg", "$DIR/cs<i>/hdd"]
    mfs_lines += [
        "# the mount and the goal, in the namespace",
        "mfsmount -f " + " ".join(info.mfs_mount) + " $DIR/mnt",
        "mfssetgoal -r 2 $DIR/mnt",
    ]
    gluster_info = [
        line
        for line in info.gluster_info.strip().splitlines()
        if not line.startswith(("Volume ID", "Snapshot Count", "Status"))
    ]
    nice = info.mfs_master.get("NICE_LEVEL", "?")
    runs = f"{args.runs} run" + ("s" if args.runs > 1 else "")
    return [
        f"* **Visits.** {runs}; each run visits every system in the order "
        f"{', '.join(TITLES[s] for s in args.only)}. A visit starts the system from nothing, "
        "runs fsbench.sh and then mdtest.py on it, and tears it down, so only one system's "
        "processes exist at a time.",
        f"* **fsbench.sh** `MOUNT LABEL {args.size_mib}`: fio sequential write and read of "
        f"{args.size_mib} MiB (1 MiB blocks, fsync at the end of the write, caches dropped "
        "before reads), 4 KiB random reads for 10 s, 5,000 4 KiB files written then stat'ed by "
        "one process, the Python standard library copied with a tar pipe and removed.",
        f"* **mdtest.py** `--files {args.md_files} --procs {args.md_procs}`: "
        f"{args.md_procs} processes, each in its own directory, create (0-byte open/close), "
        "stat, rename (in the directory) and unlink "
        f"{args.md_files // args.md_procs} files each, in lock step; caches dropped before each "
        "phase; ops/s of all processes together.",
        f"* **{RECOVERY_ROW}**: time until {args.size_mib} MiB of 2-of-3 data is fully "
        "redundant again after `kill -9` of one PrismFS node (`benchmarks/bench_repair.py`: a "
        "4-node cluster so the lost shards have somewhere to go, repair_after_s = 0, the "
        "victim not the leader): "
        + (RECOVERY_DETAIL or "not measured in this run")
        + ". The peers' recovery is not measured.",
        "* **PrismFS**: `prismfs dev up --nodes 3 --mount DIR` (3 node processes on 127.0.0.1, "
        "default layout k=2, m=3, 4 MiB chunks: 1.5x the data stored), default mount options.",
        f"* **MooseFS**: master, {n} chunkservers and mfsmount in a network namespace with only "
        "`lo` (127.0.0.1 and 198.18.0.1), entered with `nsenter --net`: a chunkserver refuses "
        "127.0.0.1 as its master's address (`localhost (127.0.0.1) can't be used for connecting "
        "with master`). Goal 2: two full copies, 2x the data stored. mfsmount's defaults, among "
        "them an fsync before the last close of every written file (`mfsfsyncmintime=0`). "
        f"Changed from the defaults: NICE_LEVEL and mfsnice {nice} instead of -19, so that "
        "MooseFS gets no higher CPU priority than the other systems and the benchmark tools; "
        "the daemons run as root. `$DIR` is the visit's temp directory:",
        "",
        "  ```",
        *(f"  {line}" for line in mfs_lines),
        "  ```",
        "",
        "* **GlusterFS**: glusterd (`-N`, working and run directories of its own) in a network "
        "namespace with only `lo` (127.0.0.1 and 198.18.0.2): the CLI refuses `localhost` and "
        "127.0.0.1 as brick hosts, and the namespace keeps glusterd's and the bricks' ports off "
        "the machine's interfaces. 3 bricks on the same disk; mounted with "
        "`mount -t glusterfs 198.18.0.2:/VOLUME DIR` (default options). The volume:",
        "",
        "  ```",
        f"  {info.gluster_create or '(GlusterFS was not started)'}",
        *(f"  {line}" for line in gluster_info),
        "  ```",
        "",
        "* **local**: a directory on the same disk, no FUSE.",
    ]


def markdown(results: Results, args: argparse.Namespace, info: RunInfo, chart: str | None) -> str:
    minutes = (info.finished - info.started) / 60
    when = datetime.datetime.fromtimestamp(info.started, datetime.UTC)
    command = " ".join(["benchmarks/bench_peers.py", *info.argv])
    lines = [
        f"_Generated by `{command}` (which `make bench-peers` runs) on "
        f"{when:%Y-%m-%d %H:%M} UTC at commit {commit()}; the run took {minutes:.0f} min._",
        "",
        *table(results),
        "",
        "Each cell: the median of the runs in bold, then every run in visit order. Ratios are of "
        "the medians, and **above 1 means PrismFS is ahead**: PrismFS / peer for rates (MB/s, "
        "IOPS, files/s, ops/s), peer / PrismFS for times (s).",
        "",
    ]
    if results.cpu:
        lines += [
            "**CPU of the PrismFS processes** while fsbench.sh and mdtest.py ran (seconds of "
            "user + system time, from /proc; the machine has 2 cores, so a visit can use at "
            "most twice its wall time):",
            "",
            "| visit | wall s | mount | nodes | CPU / wall |",
            "|---|---:|---:|---:|---:|",
        ]
        for visit, wall, mount, nodes in results.cpu:
            node_cells = " + ".join(f"{n:.0f}" for n in nodes)
            total = mount + sum(nodes)
            lines.append(
                f"| {visit} | {wall:.0f} | {mount:.0f} | {node_cells} | {total / wall:.2f} |"
            )
        lines.append("")
    if results.failures:
        lines += ["**Failed visits** (their cells say `failed`):", ""]
        lines += [f"* {f}" for f in results.failures] + [""]
    if chart is not None:
        lines += [f"![PrismFS / MooseFS and PrismFS / GlusterFS per workload]({chart})", ""]
    lines += ["**Versions.**", "", *(f"* {v}" for v in versions()), ""]
    lines += [f"**Machine.** {machine(Path(info.tmp))}.", ""]
    lines += ["**Settings.**", "", *settings(args, info)]
    return "\n".join(lines) + "\n"


def write_block(doc: Path, block: str) -> None:
    """Replace what is between the markers in ``doc``; add heading and markers if missing."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{BEGIN}\n{block}{END}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{HEADING}\n\n{BEGIN}\n{block}{END}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def report(results: Results, args: argparse.Namespace, info: RunInfo) -> None:
    """Print the markdown; unless ``--no-docs``, write it and the chart."""
    chart_rel: str | None = None
    if not args.no_docs and chart(results, args, args.chart):
        chart_rel = os.path.relpath(args.chart, args.doc.parent)
    block = markdown(results, args, info, chart_rel)
    print()
    print(block)
    if not args.no_docs:
        write_block(args.doc, block)
        print(f"wrote {args.doc}" + (f" and {args.chart}" if chart_rel else ""), file=sys.stderr)
