"""PrismFS against MooseFS and GlusterFS on the same machine in the same run (issue 7).

    .venv/bin/python benchmarks/bench_peers.py [--size-mib 1024] [--runs 2]
        [--only moosefs,glusterfs,prismfs,local] [--md-files 20000]

(``make bench-peers`` does this after installing everything.) Root only: the
peers need network namespaces, mounts and ``apt-get``.

Theory of operation
-------------------

1. **Packages.** Debian's ``moosefs-master moosefs-chunkserver moosefs-client
   glusterfs-server glusterfs-client fio`` (and ``iproute2``, ``util-linux``
   for ``ip`` and ``nsenter``) are installed with ``apt-get`` when
   ``dpkg-query`` says they are missing. If the machine has no
   ``/usr/sbin/policy-rc.d``, a temporary one that denies every service start
   is in place during the install, so the packages do not start system
   daemons that this script would then neither own nor stop.

2. **Visits, interleaved.** For each run and each system in ``--only`` order
   (the default gives MooseFS, GlusterFS, PrismFS, local, MooseFS, ...) a
   *visit* starts that system from nothing, runs ``fsbench.sh`` and then
   ``mdtest.py`` on its mount, and tears it down. Only one system's daemons
   exist at any time, so none idles in the background of another's figures.

3. **MooseFS** (:func:`moosefs`). A chunkserver refuses 127.0.0.1 as its
   master's address ("localhost (127.0.0.1) can't be used for connecting with
   master"), so all MooseFS processes run in a network namespace made for the
   visit, entered with ``nsenter --net`` (``ip netns exec`` would also make a
   new mount namespace, which would hide the mount). The namespace has only
   ``lo`` with 127.0.0.1 and 198.18.0.1 (RFC 2544's benchmark range), so no
   packet can leave the machine. Master, three chunkservers (ports 9422 to
   9424, separate data and hdd directories) and ``mfsmount`` run in the
   foreground as our children; the mount, a kernel object, is visible
   outside because the mount namespace is shared. Goal 2 is set on the root
   with ``mfssetgoal -r 2``. The MooseFS tools talk to the master, so they
   run in the namespace too. Daemons and mfsmount run at nice 0, not their
   default -19, so MooseFS gets no CPU priority over the others.

4. **GlusterFS** (:func:`glusterfs`). The gluster CLI refuses ``localhost``
   and 127.0.0.1 as brick hosts, and glusterd listens on every interface, so
   it gets a namespace of its own with 198.18.0.2. glusterd runs in the
   foreground (``-N``) from a volfile of ours whose working and run
   directories and CLI socket are under the visit's temp directory
   (``/var/lib/glusterd`` holds no volume state of ours, and its hooks do
   not run). The volume is ``disperse 3 redundancy 1`` (PrismFS's 2-of-3
   geometry) over three brick directories, ``force`` because they share one
   host and the root partition; ``mount -t glusterfs`` mounts it. glusterd
   daemonizes the brick processes and the self-heal daemon, and the mount
   helper the FUSE client, so they are found by their command lines, which
   all name the visit's temp directory. GlusterFS still writes logs and
   sockets under ``/var/log/glusterfs``, ``/run/gluster`` and
   ``/var/lib/glusterd``: the paths there are listed before start, and what
   is new afterwards is removed at teardown.

5. **PrismFS** (``bench_fs.prismfs``): ``prismfs dev up --nodes 3`` on
   127.0.0.1, default layout (2-of-3, 4 MiB chunks), default mount options.
   **local**: a directory on the same disk.

   Before measuring, every mount takes a 1 MiB write, fsync and read-back
   from outside any namespace; MooseFS must then report 2 copies of its
   chunk (``mfscheckfile``) and GlusterFS a fragment on each brick, or the
   visit fails.

6. **Teardown** runs in reverse order of start-up through an ``ExitStack``,
   so a visit that fails half-way stops exactly what it had started: unmount
   (lazy if still busy), stop the daemons by the pids we hold (SIGTERM,
   SIGKILL after a grace period; a pid counts as ours only while its start
   time is unchanged), kill whatever is still inside our namespace (only our
   processes can be there), delete the namespace, remove the temp
   directory. Daemons and measuring commands each run in a session of their
   own: a Ctrl-C reaches only this script, and a measuring command that is
   abandoned is killed with its whole process group (no fio left writing
   into a mount being torn down). SIGTERM and SIGHUP are turned into
   KeyboardInterrupt, so a killed run cleans up too.

7. **Report** (``peers_report.py``). Each row is a workload; each system's
   cell is the median and, in brackets, every run. Ratios use the medians
   and read "> 1: PrismFS is ahead": PrismFS / peer for rates, peer /
   PrismFS for times. The markdown (date, commit, versions, machine and the
   exact settings) is printed and written into ``docs/benchmarks.md``
   between ``<!-- bench-peers:begin -->`` and ``<!-- bench-peers:end -->``
   (added with a section heading at the end of the file when missing); the
   ratios are drawn to ``docs/img/bench-peers.png``. A visit that fails
   leaves its cells "failed", is named under the table, and makes the exit
   status 1; the other visits still count.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).parent))
import peers_report
from bench_fs import prismfs  # scripts beside this one
from bench_repair import measure as measure_recovery
from peers_report import TITLES, VERSIONED_DEBS, Config, Results, RunInfo, report

HERE = Path(__file__).parent
REPO = HERE.parent
SYSTEMS = ("moosefs", "glusterfs", "prismfs", "local", "prismfs-1node", "prismfs-base")
DEFAULT_SYSTEMS = ("moosefs", "glusterfs", "prismfs", "local")
DEBS = (*VERSIONED_DEBS, "iproute2", "util-linux")
MFS_ADDR = "198.18.0.1"
GLUSTER_ADDR = "198.18.0.2"
MFS_CS_PORTS = (9422, 9423, 9424)
# what the report says besides the figures (the gluster volume is filled in on start)
INFO = RunInfo(argv=[], started=0.0)
GLUSTER_SYSTEM_DIRS = (Path("/var/lib/glusterd"), Path("/var/log/glusterfs"), Path("/run/gluster"))
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# MooseFS settings that differ from the defaults, besides paths and addresses:
# the daemons and mfsmount renice themselves to -19 by default, which would
# put MooseFS ahead of fio and of every other system's processes for the CPU.
MFS_NICE = 0


def say(message: str) -> None:
    print(f"[bench-peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str], *, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; on failure raise with its output in the message.

    The command gets a process group of its own, and the whole group is
    killed if we stop waiting (timeout, interrupt): fio under fsbench.sh must
    not go on writing into a mount that is being torn down.
    """
    with subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            kill_group(proc.pid)
            proc.wait()
            raise
    result = subprocess.CompletedProcess(list(cmd), proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise RuntimeError(f"`{' '.join(cmd)}` exited {result.returncode}: {output}")
    return result


def kill_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGKILL a process group and wait until none of it is left (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # raises once the last member has gone
            time.sleep(0.05)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- processes and mounts --------------------------------------------------


@dataclass(frozen=True)
class Pid:
    """A process we started: its pid and its start time (tells a reused pid apart)."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Pid | None:
        start = _start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None for a gone (or zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def descendants(pid: int) -> list[Pid]:
    out: list[Pid] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                p = Pid.of(int(child))
                if p is not None:
                    out += [p, *descendants(p.pid)]
    return out


def processes_naming(text: str) -> list[Pid]:
    """Processes whose command line contains ``text`` (a path unique to this run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            p = Pid.of(int(entry.name))
            if p is not None:
                found.append(p)
    return found


def stop_pids(pids: Sequence[Pid], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL what is still running after ``timeout`` seconds."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        living = [p for p in pids if p.alive()]
        for p in living:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
        deadline = time.monotonic() + grace
        while any(p.alive() for p in living) and time.monotonic() < deadline:
            time.sleep(0.05)


def stop_popen(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Stop a daemon we started in the foreground, and any child it forked."""
    children = descendants(proc.pid)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    stop_pids(children, timeout=5.0)


def is_mounted(point: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(point) for line in f)


def unmount(point: Path) -> None:
    if is_mounted(point):
        run(["umount", str(point)], timeout=120, check=False)
    if is_mounted(point):
        say(f"{point} is busy; unmounting lazily")
        run(["umount", "-l", str(point)], timeout=60, check=False)


def wait_for(
    what: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Daemons:
    """The foreground daemons of one visit.

    Each runs in a session of its own (a Ctrl-C on the terminal reaches only
    this script, which then stops them in order) and is stopped by the
    visit's ExitStack in reverse order of start. ``check`` raises, with the
    log's tail, as soon as one of them has exited.
    """

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started.append((name, proc, log))
        self._stack.callback(stop_popen, proc)
        return proc

    def check(self) -> None:
        for name, proc, log in self._started:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")


@contextlib.contextmanager
def netns(name: str, address: str) -> Iterator[list[str]]:
    """A network namespace with only ``lo`` (127.0.0.1 and ``address``).

    Yields the ``nsenter`` prefix that runs a command in it. On exit, every
    process still inside is killed (only ours can be there) and the
    namespace is deleted.
    """
    run(["ip", "netns", "add", name])
    try:
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        run(["ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo"])
        yield ["nsenter", f"--net=/run/netns/{name}"]
    finally:
        inside = run(["ip", "netns", "pids", name], check=False).stdout.split()
        stop_pids([p for p in map(Pid.of, map(int, inside)) if p is not None], timeout=5.0)
        run(["ip", "netns", "delete", name], check=False)


def probe(point: Path) -> str:
    """Write 1 MiB through the mount from outside any namespace and read it back."""
    data = os.urandom(1 << 20)
    name = f".bench-peers-probe-{os.getpid()}"
    path = point / name
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    back = path.read_bytes()
    if back != data:
        raise RuntimeError(f"{point}: the probe file read back different bytes")
    return name


# --- MooseFS -----------------------------------------------------------------


def _cfg(path: Path, settings: Config) -> None:
    path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))


def mfs_settings(d: Path) -> tuple[Config, list[Config], list[str]]:
    """The master's settings, each chunkserver's, and mfsmount's options."""
    master: Config = {
        "WORKING_USER": "root",
        "WORKING_GROUP": "root",
        "NICE_LEVEL": MFS_NICE,
        "DATA_PATH": d / "master",
        "EXPORTS_FILENAME": d / "master/mfsexports.cfg",
        "TOPOLOGY_FILENAME": d / "master/mfstopology.cfg",
        "MATOML_LISTEN_HOST": MFS_ADDR,
        "MATOCS_LISTEN_HOST": MFS_ADDR,
        "MATOCL_LISTEN_HOST": MFS_ADDR,
    }
    chunkservers: list[Config] = [
        {
            "WORKING_USER": "root",
            "WORKING_GROUP": "root",
            "NICE_LEVEL": MFS_NICE,
            "DATA_PATH": d / f"cs{i}/data",
            "HDD_CONF_FILENAME": d / f"cs{i}/mfshdd.cfg",
            "BIND_HOST": MFS_ADDR,
            "MASTER_HOST": MFS_ADDR,
            "CSSERV_LISTEN_HOST": MFS_ADDR,
            "CSSERV_LISTEN_PORT": port,
        }
        for i, port in enumerate(MFS_CS_PORTS, 1)
    ]
    mount = ["-H", MFS_ADDR, "-o", f"mfscfgfile={d / 'mfsmount.cfg'},mfsnice={MFS_NICE}"]
    return master, chunkservers, mount


@contextlib.contextmanager
def moosefs(base: Path) -> Iterator[Path]:
    """A MooseFS master, 3 chunkservers and mfsmount (goal 2); yields the mount point."""
    d = base / "moosefs"
    point = d / "mnt"
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, d, ignore_errors=True)
        d.mkdir()
        point.mkdir()
        master_cfg, cs_cfgs, mount_opts = mfs_settings(d)
        (d / "master").mkdir()
        (d / "master/mfsexports.cfg").write_text("*\t/\trw,alldirs,admin,maproot=0:0\n")
        (d / "master/mfstopology.cfg").write_text("")
        (d / "mfsmount.cfg").write_text("")  # not /etc/mfs/mfsmount.cfg
        shutil.copy("/var/lib/mfs/metadata.mfs.empty", d / "master/metadata.mfs")
        _cfg(d / "master/mfsmaster.cfg", master_cfg)
        for i, cfg in enumerate(cs_cfgs, 1):
            (d / f"cs{i}/data").mkdir(parents=True)
            (d / f"cs{i}/hdd").mkdir()
            (d / f"cs{i}/mfshdd.cfg").write_text(f"{d / f'cs{i}/hdd'}\n")
            _cfg(d / f"cs{i}/mfschunkserver.cfg", cfg)

        ns = stack.enter_context(netns(f"bench-mfs-{os.getpid()}", MFS_ADDR))
        daemons = Daemons(stack)
        master_log = d / "master.log"
        daemons.start(
            "mfsmaster", [*ns, "mfsmaster", "-f", "-c", str(d / "master/mfsmaster.cfg")], master_log
        )

        def master_says(text: str, count: int = 1) -> Callable[[], bool]:
            def ready() -> bool:
                daemons.check()
                return tail(master_log, 10_000).count(text) >= count

            return ready

        wait_for("mfsmaster", master_says("mfsmaster daemon initialized properly"))
        for i in range(1, len(cs_cfgs) + 1):
            cfg_file = d / f"cs{i}/mfschunkserver.cfg"
            cmd = [*ns, "mfschunkserver", "-f", "-c", str(cfg_file)]
            daemons.start(f"mfschunkserver {i}", cmd, d / f"cs{i}.log")
        wait_for(
            f"{len(cs_cfgs)} chunkservers to register",
            master_says("chunkserver register end", len(cs_cfgs)),
        )
        daemons.start("mfsmount", [*ns, "mfsmount", "-f", *mount_opts, str(point)], d / "mount.log")
        stack.callback(unmount, point)  # runs before mfsmount is stopped

        def mounted() -> bool:
            daemons.check()
            return is_mounted(point)

        wait_for("mfsmount", mounted)
        run([*ns, "mfssetgoal", "-r", "2", str(point)])
        name = probe(point)
        # The probe's chunk must reach its 2 copies, or the chunkservers are not
        # serving. The master may place the second copy a moment later (it
        # replicates an undergoal chunk in the background): wait for it.
        check = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            check = run([*ns, "mfscheckfile", str(point / name)]).stdout
            if "chunks with 2 copies:" in check:
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"MooseFS probe file is not stored twice after 60 s:\n{check}")
        (point / name).unlink()
        yield point


# --- GlusterFS ---------------------------------------------------------------


def snapshot(roots: Sequence[Path]) -> set[Path]:
    """Every path under ``roots`` (and the roots themselves) that exists now."""
    seen: set[Path] = set()
    for root in roots:
        if root.exists():
            seen.add(root)
            for dirpath, dirnames, filenames in os.walk(root):
                seen.update(Path(dirpath) / n for n in [*dirnames, *filenames])
    return seen


def remove_new(roots: Sequence[Path], before: set[Path]) -> list[Path]:
    """Remove what appeared under ``roots`` since ``before``; returns what was removed."""
    removed = []
    for path in sorted(snapshot(roots) - before, key=lambda p: len(p.parts)):
        if path.parent in before or path in roots:  # the top of a new subtree
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def glusterfs(base: Path) -> Iterator[Path]:
    """glusterd and a dispersed 2+1 volume of 3 local bricks, FUSE-mounted; yields the mount."""
    d = base / "glusterfs"
    point = d / "mnt"
    volume = "benchpeers"  # known only to our own glusterd
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, d, ignore_errors=True)
        before = snapshot(GLUSTER_SYSTEM_DIRS)

        def clean_system_dirs() -> None:
            removed = remove_new(GLUSTER_SYSTEM_DIRS, before)
            if removed:
                say(f"removed {len(removed)} paths GlusterFS made under /var and /run")

        stack.callback(clean_system_dirs)
        for sub in ("work", "run", "log", "mnt", "b1", "b2", "b3"):
            (d / sub).mkdir(parents=True)
        (d / "glusterd.vol").write_text(
            "volume management\n"
            "    type mgmt/glusterd\n"
            f"    option working-directory {d / 'work'}\n"
            f"    option run-directory {d / 'run'}\n"
            f"    option glusterd-sockfile {d / 'run/glusterd.socket'}\n"
            "    option transport-type socket\n"
            "    option transport.socket.listen-port 24007\n"
            "    option ping-timeout 0\n"
            "    option event-threads 1\n"
            "    option max-port 60999\n"
            "end-volume\n"
        )
        ns = stack.enter_context(netns(f"bench-gluster-{os.getpid()}", GLUSTER_ADDR))
        # bricks, self-heal daemon and FUSE client daemonize: they are found by
        # their command lines, which all name a path under d
        stack.callback(lambda: stop_pids(processes_naming(str(d))))
        daemons = Daemons(stack)
        log = d / "log/glusterd.log"
        daemons.start(
            "glusterd", [*ns, "glusterd", "-N", "-f", str(d / "glusterd.vol"), "-l", str(log)], log
        )
        cli = [
            *ns,
            "gluster",
            "--mode=script",
            f"--glusterd-sock={d / 'run/glusterd.socket'}",
            f"--log-file={d / 'log/cli.log'}",
        ]

        def answers() -> bool:
            daemons.check()
            return run([*cli, "volume", "list"], timeout=30, check=False).returncode == 0

        wait_for("glusterd", answers, interval=0.5)
        bricks = [f"{GLUSTER_ADDR}:{d / b}" for b in ("b1", "b2", "b3")]
        create = ["volume", "create", volume, "disperse", "3", "redundancy", "1", *bricks, "force"]
        run([*cli, *create])
        stack.callback(lambda: run([*cli, "volume", "delete", volume], check=False))
        run([*cli, "volume", "start", volume])
        stack.callback(
            lambda: run([*cli, "volume", "stop", volume, "force"], timeout=120, check=False)
        )

        def bricks_online() -> bool:
            status = run([*cli, "volume", "status", volume, "--xml"], check=False).stdout
            with contextlib.suppress(ET.ParseError):
                nodes = ET.fromstring(status).iter("node")
                online = [n for n in nodes if n.findtext("path", "").startswith(str(d))]
                return sum(n.findtext("status") == "1" for n in online) == 3
            return False

        wait_for("3 bricks online", bricks_online, interval=0.5)
        mount_log = d / "log/mount.log"
        stack.callback(unmount, point)
        run([*ns, "mount", "-t", "glusterfs", "-o", f"log-file={mount_log}",
             f"{GLUSTER_ADDR}:/{volume}", str(point)])  # fmt: skip
        if not is_mounted(point):
            raise RuntimeError(f"mount -t glusterfs did not mount:\n{tail(mount_log)}")
        name = probe(point)
        # all three bricks must hold a fragment, or the volume runs degraded
        missing = [b for b in ("b1", "b2", "b3") if not (d / b / name).exists()]
        if missing:
            raise RuntimeError(f"GlusterFS probe file has no fragment on {missing}")
        (point / name).unlink()
        INFO.gluster_create = "gluster " + " ".join(create).replace(str(d), "$DIR")
        INFO.gluster_info = run([*cli, "volume", "info", volume]).stdout.replace(str(d), "$DIR")
        yield point


@contextlib.contextmanager
def local(base: Path) -> Iterator[Path]:
    d = base / "local"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


BASE_SRC: Path | None = None  # --base-src: the source tree of "prismfs-base"


@contextlib.contextmanager
def prismfs_visit(base: Path, *, nodes: int = 3, src: Path | None = None) -> Iterator[Path]:
    d = base / "prismfs"
    d.mkdir()
    try:
        with prismfs(d, src, nodes=nodes) as point:
            (point / probe(point)).unlink()
            yield point
    finally:
        shutil.rmtree(d, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prismfs_pids(point: Path) -> tuple[int, list[int]]:
    """The mount daemon's pid and the nodes' (from the dev cluster beside ``point``)."""
    cluster = point.parent / "cluster"
    state = json.loads((cluster / "dev.json").read_text())
    mount = int((cluster / "mount.pid").read_text())
    return mount, [int(n["pid"]) for n in state["nodes"]]


STARTERS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Path]]] = {
    "moosefs": moosefs,
    "glusterfs": glusterfs,
    "prismfs": prismfs_visit,
    "prismfs-1node": lambda base: prismfs_visit(base, nodes=1),
    "prismfs-base": lambda base: prismfs_visit(base, src=BASE_SRC),
    "local": local,
}


# --- packages ----------------------------------------------------------------


def deb_installed(package: str) -> bool:
    status = run(["dpkg-query", "-W", "-f=${Status}", package], check=False).stdout
    return status == "install ok installed"


def install_packages(packages: Sequence[str]) -> None:
    """apt-get install whichever of ``packages`` dpkg does not know as installed."""
    missing = [p for p in packages if not deb_installed(p)]
    if not missing:
        return
    say(f"installing Debian packages: {' '.join(missing)}")
    guard = Path("/usr/sbin/policy-rc.d")
    made_guard = not guard.exists()
    if made_guard:  # no system glusterd or mfsmaster started behind our back
        guard.write_text(
            "#!/bin/sh\n# bench_peers.py: no service starts during its install\nexit 101\n"
        )
        guard.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env, stdout=sys.stderr)
        subprocess.run(
            ["apt-get", "install", "-y", *missing], check=True, env=env, stdout=sys.stderr
        )
    finally:
        if made_guard:
            guard.unlink()


# --- the interleaved runs ------------------------------------------------------


def parse_results(output: str) -> list[tuple[str, float, str]]:
    """``LABEL workload value unit`` lines (fsbench.sh and mdtest.py) as tuples."""
    rows = []
    for line in output.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4:
            with contextlib.suppress(ValueError):
                rows.append((parts[1], float(parts[2]), parts[3]))
    return rows


def measure(point: Path, system: str, args: argparse.Namespace) -> Iterator[str]:
    """fsbench.sh, then mdtest.py, on one mount; yields the output of each."""
    fsbench = [str(HERE / "fsbench.sh"), str(point), system, str(args.size_mib)]
    yield run(["bash", *fsbench], timeout=3 * 3600).stdout
    mdtest = [str(HERE / "mdtest.py"), str(point), system]
    mdtest += ["--files", str(args.md_files), "--procs", str(args.md_procs)]
    yield run([sys.executable, *mdtest], timeout=3 * 3600).stdout


def settle(limit_mib: int = 32, patience_s: float = 120.0) -> None:
    """Start a visit on a quiet machine: the dirty pages the last visit left
    written back and the page cache dropped (in one run, the visit right
    after GlusterFS's measured a third slower than the same code visited
    next)."""
    os.sync()
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        meminfo = dict(
            (line.split(":")[0], int(line.split()[1]))
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.split(":")[0] in ("Dirty", "Writeback")
        )
        if sum(meminfo.values()) < limit_mib * 1024:
            break
        time.sleep(0.5)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    time.sleep(2)


def run_all(base: Path, args: argparse.Namespace) -> Results:
    results = Results(list(args.only), args.runs)
    for r in range(args.runs):
        for system in args.only:
            visit = base / f"{system}-{r + 1}"
            visit.mkdir()
            settle()
            say(f"run {r + 1}/{args.runs}: {TITLES[system]}: starting")
            t0 = time.monotonic()
            try:
                with STARTERS[system](visit) as point:
                    say(f"{TITLES[system]} is up at {point}; measuring")
                    pids = prismfs_pids(point) if system.startswith("prismfs") else None
                    cpu0 = [cpu_seconds(p) for p in (pids[0], *pids[1])] if pids else []
                    wall0 = time.monotonic()
                    for output in measure(point, system, args):
                        print(output, end="", flush=True)
                        for workload, value, unit in parse_results(output):
                            results.add(system, r, workload, value, unit)
                    if pids:
                        used = [
                            cpu_seconds(p) - c
                            for p, c in zip((pids[0], *pids[1]), cpu0, strict=True)
                        ]
                        wall = time.monotonic() - wall0
                        results.cpu.append(
                            (f"{TITLES[system]}, run {r + 1}", wall, used[0], used[1:])
                        )
                        say(f"{TITLES[system]} CPU: mount {used[0]:.0f} s, nodes {used[1:]}")
            except Exception as exc:
                traceback.print_exc()
                results.failures.append(f"run {r + 1}, {TITLES[system]}: {exc}")
            finally:
                shutil.rmtree(visit, ignore_errors=True)
            seconds = time.monotonic() - t0
            say(f"run {r + 1}/{args.runs}: {TITLES[system]}: done in {seconds:.0f}s")
    return results


def leftovers(base: Path) -> list[str]:
    """What of this run is still there after teardown (should be nothing)."""
    found = [f"process {p.pid}" for p in processes_naming(str(base))]
    with open("/proc/mounts") as f:
        found += [f"mount {line.split()[1]}" for line in f if str(base) in line.split()[1]]
    namespaces = run(["ip", "netns", "list"], check=False).stdout
    found += [f"netns {n}" for n in re.findall(rf"\S+-{os.getpid()}\b", namespaces)]
    return found


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # once: a second signal must not cut the teardown short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="fsbench file size")
    parser.add_argument("--runs", type=int, default=2, help="visits per system (interleaved)")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated systems, in visit order, out of {','.join(SYSTEMS)} "
        f"(default {','.join(DEFAULT_SYSTEMS)})",
    )
    parser.add_argument(
        "--base-src",
        type=Path,
        help="source tree (its src/) of another PrismFS commit, visited as prismfs-base",
    )
    parser.add_argument("--md-files", type=int, default=20000, help="mdtest files in all")
    parser.add_argument("--md-procs", type=int, default=4, help="mdtest worker processes")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--chart", type=Path, default=REPO / "docs/img/bench-peers.png")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument("--no-install", action="store_true", help="skip the apt-get step")
    parser.add_argument(
        "--no-recovery", action="store_true", help="skip PrismFS's recovery measurement"
    )
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SYSTEMS))
    if unknown or not args.only or len(set(args.only)) != len(args.only):
        parser.error(f"--only takes distinct names out of {','.join(SYSTEMS)}")
    if "prismfs-base" in args.only and args.base_src is None:
        parser.error("prismfs-base needs --base-src (a worktree's src/ directory)")
    if args.base_src is not None:
        if (args.base_src / "src" / "prismfs").is_dir():
            args.base_src = args.base_src / "src"  # the worktree itself was given
        if not (args.base_src / "prismfs").is_dir():
            # (otherwise the visit would quietly run the installed PrismFS)
            parser.error(f"--base-src {args.base_src} holds no prismfs package")
    if args.runs < 1 or args.size_mib < 1 or args.md_files < args.md_procs:
        parser.error("need --runs >= 1, --size-mib >= 1 and --md-files >= --md-procs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global BASE_SRC
    BASE_SRC = args.base_src
    if os.geteuid() != 0:
        print("bench_peers.py: needs root (network namespaces, mounts, apt-get)", file=sys.stderr)
        return 2
    if not args.no_docs and importlib.util.find_spec("matplotlib") is None:
        print("bench_peers.py: the chart needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    if not args.no_install:
        install_packages(DEBS)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    INFO.started = time.time()
    base = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    try:
        results = run_all(base, args)
        if "prismfs" in results.systems and not args.no_recovery:
            say("PrismFS recovery: 4 nodes, kill -9 one, time to full redundancy")
            recovery = measure_recovery(args.size_mib)
            say(f"PrismFS recovery: {recovery}")
            peers_report.PRISMFS_RECOVERY = f"{recovery['redundant_after_s']:g}"
            peers_report.RECOVERY_DETAIL = (
                f"{recovery['chunks']} chunks; node marked down after "
                f"{recovery['down_after_s']:g} s (node_down_after_s = 10), "
                f"{recovery['rebuilt_mb']:g} MB of shards rebuilt within "
                f"{recovery['repair_window_s']:g} s of the last status that showed it up "
                f"(at least {recovery['repair_mb_per_s_at_least']:g} MB/s)"
            )
    except KeyboardInterrupt as exc:
        say(f"interrupted ({exc or 'Ctrl-C'}); what was started is torn down, no report")
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)
        left = leftovers(base)
        if left:
            say(f"LEFT BEHIND (please check): {', '.join(left)}")
    INFO.finished = time.time()
    INFO.argv = sys.argv[1:] if argv is None else argv
    INFO.tmp = tempfile.gettempdir()
    INFO.mfs_master, INFO.mfs_chunkservers, INFO.mfs_mount = mfs_settings(Path("$DIR"))
    report(results, args, INFO)
    for failure in results.failures:
        say(f"FAILED: {failure}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
