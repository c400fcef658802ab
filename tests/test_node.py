"""The node daemon as a real process: start, authenticated ping, SIGTERM,
data-dir lock, configuration file and flags, structured logs."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest
import trio

from conftest import NodeProcess, run_cli, start_node
from prismfs.errors import AuthenticationFailed
from prismfs.wire.auth import ClusterCredentials, read_secret_file, write_secret_file
from prismfs.wire.client import dial, open_rpc_pool
from prismfs.wire.messages import Echo, Ping, Pong


def _init(data_dir: Path) -> ClusterCredentials:
    result = run_cli("cluster", "init", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return read_secret_file(data_dir / "cluster.secret")


def test_cluster_init_creates_private_secret_and_refuses_twice(tmp_path: Path) -> None:
    creds = _init(tmp_path / "n1")
    secret = tmp_path / "n1" / "cluster.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(creds.secret) == 32
    again = run_cli("cluster", "init", "--data-dir", str(tmp_path / "n1"))
    assert again.returncode == 1
    assert (
        again.stderr.strip()
        == f"prismfs: {tmp_path / 'n1'} already belongs to cluster {creds.cluster_id}"
    )
    assert read_secret_file(secret) == creds  # unchanged


async def test_node_answers_ping_and_stops_on_sigterm(
    tmp_path: Path, node_procs: list[NodeProcess]
) -> None:
    data_dir = tmp_path / "n1"
    creds = _init(data_dir)
    node = start_node(node_procs, data_dir, "--log-format", "json")
    address = node.wait_listening()
    async with open_rpc_pool(creds) as pool:
        pong = (await pool.call(address, Ping())).message
        assert isinstance(pong, Pong)
        assert pong.cluster_id == creds.cluster_id
        assert pong.pid == node.proc.pid
        assert pong.node_id == (data_dir / "node.id").read_text().strip()
        reply = await pool.call(address, Echo(mode="source", size=1 << 20))
        assert reply.payload == bytes(1 << 20)
    # A client with the wrong secret is refused.
    with pytest.raises(AuthenticationFailed):
        await dial(address, ClusterCredentials(creds.cluster_id, os.urandom(32)))
    start = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=5) == 0
    assert time.monotonic() - start < 5
    assert not (data_dir / "node.json").exists()
    assert node.proc.stderr is not None
    lines = [json.loads(line) for line in node.proc.stderr.read().splitlines()]
    assert all(entry["node"] == pong.node_id for entry in lines)
    messages = [entry["msg"] for entry in lines]
    assert any("serving RPC" in m for m in messages)
    # (over TLS, the default: the client refuses the node's certificate, which
    # is not from the CA its wrong secret derives; the node sees the TLS end)
    assert any("handshake failed" in m for m in messages)
    assert messages[-2:] == ["received SIGTERM, shutting down", f"node {pong.node_id} stopped"]


async def test_sigterm_lets_running_calls_finish(
    tmp_path: Path, node_procs: list[NodeProcess]
) -> None:
    data_dir = tmp_path / "n1"
    creds = _init(data_dir)
    node = start_node(node_procs, data_dir)
    address = node.wait_listening()
    payload = os.urandom(48 << 20)
    async with open_rpc_pool(creds) as pool:
        await pool.call(address, Ping())
        got: list[bytes] = []

        async def big_call() -> None:
            got.append(bytes((await pool.call(address, Echo(), payload, timeout=30)).payload))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(big_call)
            await trio.sleep(0.02)
            node.proc.send_signal(signal.SIGTERM)
    assert got == [payload]
    assert node.proc.wait(timeout=5) == 0


def test_second_node_on_same_data_dir_is_refused(
    tmp_path: Path, node_procs: list[NodeProcess]
) -> None:
    data_dir = tmp_path / "n1"
    _init(data_dir)
    first = start_node(node_procs, data_dir)
    first.wait_listening()
    second = run_cli(
        "node", "start", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", timeout=20
    )
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"prismfs: data directory {data_dir} is in use by another node (pid {first.proc.pid})"
    )
    assert first.proc.poll() is None  # the first node is untouched


def test_node_without_secret_explains_what_to_do(tmp_path: Path) -> None:
    result = run_cli(
        "node", "start", "--data-dir", str(tmp_path / "fresh"), "--listen", "127.0.0.1:0"
    )
    assert result.returncode == 1
    assert "holds no cluster secret: run 'prismfs cluster init" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "fresh").exists()  # nothing was created


async def test_config_file_with_flag_overrides_and_secret_import(
    tmp_path: Path, node_procs: list[NodeProcess]
) -> None:
    creds = _init(tmp_path / "first")
    log_file = tmp_path / "logs" / "n2.log"
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "n2"}"\nlisten = "127.0.0.1:1"\nshutdown_grace = 1.0\n'
        f'[log]\nlevel = "debug"\nfile = "{log_file}"\n'
    )
    # --listen overrides the file's (unusable) port 1; --secret-file joins the cluster.
    node = start_node(
        node_procs,
        tmp_path / "n2",
        "--config",
        str(config),
        "--secret-file",
        str(tmp_path / "first" / "cluster.secret"),
    )
    address = node.wait_listening()
    assert read_secret_file(tmp_path / "n2" / "cluster.secret") == creds
    async with open_rpc_pool(creds) as pool:
        assert isinstance((await pool.call(address, Ping())).message, Pong)
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=5) == 0
    text = log_file.read_text()
    assert "serving RPC" in text and "DEBUG" in text


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[node]\nlisten = "127.0.0.1:7070"\nlsiten = "x"\n',
            "invalid configuration in .*unknown field `lsiten`",
        ),
        ('[rpc]\nmax_inflight = "many"\n', "Expected `int`, got `str` - at `\\$.rpc.max_inflight`"),
        ("[node\n", "is not valid TOML"),
        ('[tls]\ncert = "/x.pem"\n', "TLS needs both tls.cert and tls.key"),
        ('[node]\nlisten = "no-port"\n', "needs a port"),
        ("[rpc]\nhandshake_timeout = -1\n", "handshake_timeout must be more than 0"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, toml: str, expected: str) -> None:
    import re

    _init(tmp_path / "n1")
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = run_cli("node", "start", "--data-dir", str(tmp_path / "n1"), "--config", str(config))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(expected, result.stderr), result.stderr


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    _init(tmp_path / "n1")
    secret = tmp_path / "n1" / "cluster.secret"
    secret.chmod(0o644)
    result = run_cli("node", "start", "--data-dir", str(tmp_path / "n1"), "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert f"run: chmod 600 {secret}" in result.stderr


def test_listen_on_busy_port_is_clear(tmp_path: Path, node_procs: list[NodeProcess]) -> None:
    _init(tmp_path / "a")
    first = start_node(node_procs, tmp_path / "a")
    address = first.wait_listening()
    (tmp_path / "b").mkdir()
    result = run_cli(
        "node",
        "start",
        "--data-dir",
        str(tmp_path / "b"),
        "--listen",
        address,
        "--secret-file",
        str(tmp_path / "a" / "cluster.secret"),
        timeout=20,
    )
    assert result.returncode == 1
    assert f"cannot listen on {address}: Address already in use" in result.stderr


def test_node_serves_tls_with_cluster_ca(tmp_path: Path, node_procs: list[NodeProcess]) -> None:
    import trustme

    _init(tmp_path / "n1")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "node.pem", tmp_path / "node.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    node = start_node(
        node_procs, tmp_path / "n1", "--tls-cert", str(cert_file), "--tls-key", str(key_file)
    )
    address = node.wait_listening()
    secret = str(tmp_path / "n1" / "cluster.secret")
    common = ("--cluster", address, "--secret-file", secret)
    ok = run_cli("cluster", "status", "--json", *common, "--tls-ca", str(ca_file))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["nodes"][0]["reachable"] is True
    # Without the CA, or with another CA, the client does not get through.
    plain = run_cli("cluster", "status", "--json", *common)
    assert plain.returncode == 1
    other_ca = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    wrong = run_cli("cluster", "status", "--json", *common, "--tls-ca", str(other_ca))
    assert wrong.returncode == 1
    assert "TLS with" in json.loads(wrong.stdout)["nodes"][0]["error"]


def test_a_default_node_talks_tls_and_insecure_is_explicit(
    tmp_path: Path, node_procs: list[NodeProcess]
) -> None:
    import socket
    import ssl

    from cryptography import x509

    creds = _init(tmp_path / "n1")
    node = start_node(node_procs, tmp_path / "n1")
    address = node.wait_listening()
    host, port = address.rsplit(":", 1)
    # On the socket: TLS, with a certificate the cluster's CA issued.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None and tls.version() in ("TLSv1.2", "TLSv1.3")
    issuer = x509.load_der_x509_certificate(der).issuer.rfc4514_string()
    assert issuer == f"CN=PrismFS cluster {creds.cluster_id}"
    # The client credential from `cluster init` carries the CA: it just works.
    client_secret = tmp_path / "n1" / "client.secret"
    common = ("--cluster", address, "--secret-file", str(client_secret))
    ok = run_cli("ls", "/", *common)
    assert ok.returncode == 0, ok.stderr
    # A credential whose CA is another cluster's: one line, naming the problem.
    other = ClusterCredentials.generate()
    forged = ClusterCredentials(
        creds.cluster_id,
        read_secret_file(client_secret).secret,
        "client",
        "default-client",
        other.tls_ca(),
    )
    forged_file = tmp_path / "forged.secret"
    write_secret_file(forged_file, forged)
    bad = run_cli("ls", "/", "--cluster", address, "--secret-file", str(forged_file))
    assert bad.returncode != 0
    assert "not from this cluster's CA" in bad.stderr and len(bad.stderr.splitlines()) == 1
    # --insecure on the client alone does not get through, with a hint.
    plain = run_cli("cluster", "status", "--json", *common, "--insecure")
    assert plain.returncode != 0
    assert "drop --insecure" in json.loads(plain.stdout)["nodes"][0]["error"], plain.stdout

    # A node started --insecure says so; clients need --insecure too.
    _init(tmp_path / "n2")
    insecure = start_node(node_procs, tmp_path / "n2", "--insecure")
    address2 = insecure.wait_listening()
    common2 = ("--cluster", address2, "--secret-file", str(tmp_path / "n2" / "client.secret"))
    refused = run_cli("ls", "/", *common2)
    assert refused.returncode != 0 and "does not speak TLS" in refused.stderr, refused.stderr
    works = run_cli("ls", "/", *common2, "--insecure")
    assert works.returncode == 0, works.stderr
    assert "without TLS (--insecure)" in works.stderr
    insecure.proc.send_signal(signal.SIGTERM)
    insecure.proc.wait(timeout=10)
    assert insecure.proc.stderr is not None
    assert "running without TLS (--insecure)" in insecure.proc.stderr.read()


def test_the_http_api_serves_https_and_warns_without_it_off_loopback(
    tmp_path: Path, node_procs: list[NodeProcess]
) -> None:
    import httpx
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "h.pem", tmp_path / "h.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    config = tmp_path / "node.toml"
    config.write_text(f'[http]\ntls_cert = "{cert_file}"\ntls_key = "{key_file}"\n')
    _init(tmp_path / "n1")
    node = start_node(node_procs, tmp_path / "n1", "--config", str(config), "--http", "127.0.0.1:0")
    node.wait_listening()
    state = json.loads((tmp_path / "n1" / "node.json").read_text())
    url = f"https://{state['http_address']}/v1/health"
    import ssl

    trusted = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + 20
    while True:
        try:
            answer = httpx.get(url, verify=trusted, timeout=5)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert answer.status_code in (200, 503) and "status" in answer.json()
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https", "http"), timeout=5)  # no plain HTTP on it
    # Half a pair is refused; a listener off loopback without TLS is a warning.
    config.write_text(f'[http]\ntls_cert = "{cert_file}"\n')
    bad = run_cli("node", "start", "--data-dir", str(tmp_path / "n2"), "--config", str(config))
    assert bad.returncode == 1 and "needs both http.tls_cert and http.tls_key" in bad.stderr
    _init(tmp_path / "n3")
    plain = start_node(node_procs, tmp_path / "n3", "--http", "0.0.0.0:0")
    plain.wait_listening()
    plain.proc.send_signal(signal.SIGTERM)
    plain.proc.wait(timeout=10)
    assert plain.proc.stderr is not None
    assert "served WITHOUT TLS" in plain.proc.stderr.read()


def test_tls_key_without_cert_is_refused(tmp_path: Path) -> None:
    _init(tmp_path / "n1")
    result = run_cli(
        "node", "start", "--data-dir", str(tmp_path / "n1"), "--tls-key", "/nonexistent"
    )
    assert result.returncode == 1 and "TLS needs both tls.cert and tls.key" in result.stderr


@pytest.mark.parametrize("where", ["dir", "under_file"])
def test_unusable_log_file_is_one_clear_line(tmp_path: Path, where: str) -> None:
    _init(tmp_path / "n1")
    (tmp_path / "afile").write_text("x")
    target = tmp_path if where == "dir" else tmp_path / "afile" / "node.log"
    result = run_cli(
        "node",
        "start",
        "--data-dir",
        str(tmp_path / "n1"),
        "--listen",
        "127.0.0.1:0",
        "--log-file",
        str(target),
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"prismfs: cannot open log file {target}")
    assert len(result.stderr.strip().splitlines()) == 1
