"""The operator's first day, from a wheel: built from this checkout, installed
into a fresh virtual environment with only its runtime dependencies, three
nodes started from /etc/prismfs-style files (a temporary PRISMFS_ETC), the
CLI finding the cluster by its default path alone, and a mount made by a
user who is not root writing at the top of the file system and reading back."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
pytestmark = pytest.mark.timeout(900)  # the suite runs as root: it mounts as another user


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*args: str | Path, timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result


def _as_nobody(*args: str | Path) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            *map(str, args)]  # fmt: skip


PROCS: list[subprocess.Popen[bytes]] = []


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory every user can read (pytest's tmp_path is root's only);
    afterwards the mount, the node processes and the directory are gone."""
    path = Path(tempfile.mkdtemp(prefix="prismfs-install-", dir="/tmp"))
    path.chmod(0o755)
    # Debian's udev makes /dev/fuse mode 0666, so users mount through the
    # setuid fusermount3; a container may create it 0600 (root only).
    fuse_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    try:
        yield path
    finally:
        _clean(path)
        os.chmod("/dev/fuse", fuse_mode)


def _clean(path: Path) -> None:
    mnt = path / "mnt"
    if mnt.exists() and os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], timeout=30, check=False)
    for pid_file in path.glob("n*/node.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(int(json.loads(pid_file.read_text())["pid"]), signal.SIGKILL)
    for proc in PROCS:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    PROCS.clear()
    shutil.rmtree(path, ignore_errors=True)


def test_a_wheel_in_a_fresh_venv_runs_a_cluster_from_etc_and_a_user_mounts_it(
    root: Path,
) -> None:
    # The wheel, and a virtual environment holding it and its runtime dependencies only.
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "dist", REPO,
         timeout=600)  # fmt: skip
    wheel = next((root / "dist").glob("prismfs-*.whl"))
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel, timeout=900)
    installed = _run(venv / "bin" / "pip", "list", "--format=json").stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert "prismfs" in names and not names & {"boto3", "pytest", "moto", "hypothesis", "mypy"}
    assert (venv / "share" / "man" / "man1" / "prismfs.1").exists()  # man pages come along
    bin_dir = venv / "bin"

    # /etc/prismfs, in a temporary root: node.toml for the first node (read by
    # default), one file per other node (as prismfs-node@NAME does).
    etc = root / "etc" / "prismfs"
    etc.mkdir(parents=True)
    ports = [_free_port() for _ in range(3)]
    for i, port in enumerate(ports, 1):
        name = "node.toml" if i == 1 else f"node{i}.toml"
        (etc / name).write_text(
            f'[node]\ndata_dir = "{root / f"n{i}"}"\nlisten = "127.0.0.1:{port}"\n'
            f'[log]\nfile = "{root / f"n{i}.log"}"\n'
        )
    env = {
        **os.environ,
        "PRISMFS_ETC": str(etc),
        "XDG_CONFIG_HOME": str(root / "xdg"),  # no ~/.config/prismfs of this machine's user
        "PRISMFS_STATE_DIR": str(root / "state"),  # nor its dev clusters
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    env.pop("PRISMFS_CONFIG", None)
    env.pop("PYTHONPATH", None)  # the venv's own copy, not this checkout's

    def prismfs(*args: str | Path, timeout: float = 120) -> str:
        return _run(bin_dir / "prismfs", *args, env=env, timeout=timeout).stdout

    init = json.loads(prismfs("cluster", "init", "--data-dir", root / "n1", "--root-owner",
                              f"{NOBODY}:{NOBODY}", "--json"))  # fmt: skip
    secret = Path(init["secret_file"])
    procs = PROCS
    procs.append(
        subprocess.Popen([bin_dir / "prismfs", "node", "start"], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    )  # fmt: skip
    first = f"127.0.0.1:{ports[0]}"
    deadline = time.monotonic() + 60
    while not (root / "n1" / "node.json").exists():
        assert time.monotonic() < deadline and procs[0].poll() is None, "the first node started"
        time.sleep(0.2)
    for i in (2, 3):
        procs.append(
            subprocess.Popen(
                [bin_dir / "prismfs", "node", "start", "--config", etc / f"node{i}.toml",
                 "--secret-file", secret, "--join", first],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
    addresses = [f"127.0.0.1:{p}" for p in ports]
    (etc / "client.toml").write_text(f"cluster = {json.dumps(addresses)}\nsecret_file = "
                                     f'"{secret}"\n')  # fmt: skip

    # The CLI finds the cluster by its default path alone, and says so with -v.
    deadline = time.monotonic() + 180
    while True:
        result = subprocess.run(
            [bin_dir / "prismfs", "cluster", "status", "--json", "-v"], env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        health = json.loads(result.stdout).get("health") if result.stdout.strip() else None
        if health and len(health["voters"]) == 3 and result.returncode == 0:
            break
        assert time.monotonic() < deadline, f"three voters: {result.stdout}{result.stderr}"
        time.sleep(1)
    assert str(etc / "client.toml") in result.stderr

    # A user who is not root mounts with a client credential and writes at the top.
    user = root / "user"
    user.mkdir()
    shutil.copy(root / "n1" / "client.secret", user / "client.secret")
    (user / "client.toml").write_text(f"cluster = {json.dumps(addresses)}\nsecret_file = "
                                      '"client.secret"\n')  # fmt: skip
    mnt = root / "mnt"
    mnt.mkdir()
    for path in (user, user / "client.secret", user / "client.toml", mnt):
        os.chown(path, NOBODY, NOBODY)
    user_env = {**env, "HOME": str(user)}
    _run(*_as_nobody(bin_dir / "mount.prismfs", user / "client.toml", mnt, "-o",
                     f"log={user / 'mount.log'}"), env=user_env, timeout=120)  # fmt: skip
    body = os.urandom(3 << 20)  # a 2-of-3 file over the three nodes
    (user / "body").write_bytes(body)
    os.chown(user / "body", NOBODY, NOBODY)
    script = (
        "import json, os, shutil, sys\n"
        "src, top = sys.argv[1], sys.argv[2]\n"
        "shutil.copyfile(src, top + '/f')\n"
        "os.mkdir(top + '/d')\n"
        "with open(top + '/f', 'rb') as f: back = f.read()\n"
        "st = os.stat(top + '/f')\n"
        "print(json.dumps({'same': back == open(src, 'rb').read(), 'uid': st.st_uid,"
        " 'root_uid': os.stat(top).st_uid}))\n"
    )
    out = _run(*_as_nobody(bin_dir / "python", "-c", script, user / "body", mnt),
               env=user_env, timeout=180).stdout  # fmt: skip
    seen = json.loads(out)
    assert seen == {"same": True, "uid": NOBODY, "root_uid": NOBODY}
    _run(*_as_nobody("fusermount3", "-u", mnt), env=user_env, timeout=60)
    assert not os.path.ismount(mnt)

    # What the user wrote is on the cluster, as the admin CLI sees it.
    prismfs("get", "/f", root / "f.out")
    assert (root / "f.out").read_bytes() == body
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(timeout=60) == 0
